"""What the trainer reads: the cache's records, LLaVA's conversations joined to them, the
order they come in, and the text turned into ids (docs/trainer.md: "Readers", "Data order",
"Model, templates and the two stages").

    readers     ZarrImages (map-style) and WdsImages (streaming): one record dict per image
    stats       cache-wide norm statistics (dataset-global and c7 scaling)
    records     LLaVA JSON joined to the cache by image_id, with JoinCounts
    order       LLaVA-1.5's modality-grouped, length-grouped example order, per epoch
    templates   plain (stage 1) and v1 (stage 2) prompts as ids + labels (-100 masked)
    llama_text  LLaVA-1.5's slow Llama text encoding, whatever transformers is installed
    datasets    training datasets (Zarr map-style, WebDataset streaming) and collate
"""
