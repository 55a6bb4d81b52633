"""The slim Mask-LLaVA trainer: learns from a finished job's cached tokens, never running
the vision encoder (docs/trainer.md; paper 3.1-3.5, 4.2, C.6-C.7). It reads a job
directory through schemas/ only (jobdir, commits, record), never through pipeline/.

Modules, one job each:

    token_spec  the token spec string (cls,patch:N[:pool|max|prune],obj:K) -> TokenSpec
    readers     ZarrImages (map-style) and WdsImages (streaming): one record dict per image
    stats       cache-wide norm statistics (dataset-global and c7 scaling)
    scaling     the norm-scaling modes none / per-image / dataset-global / c7
    position    the fixed sinusoidal box-centre embedding added to object tokens
    compose     record + spec -> VisualTokens (global, patch, objects)
    records     LLaVA JSON joined to the cache by image_id, with JoinCounts
    templates   plain (stage 1) and v1 (stage 2) prompts as ids + labels (-100 masked)
    data        training datasets (Zarr map-style, WebDataset streaming) and collate
    model       Projector (two mlp2x_gelu: patch C->H, global/object D->H) + MaskLlava
    runtime     TrainConfig; loading the LM/tokenizer; optimiser schedule; loaders
    distributed torchrun environment, process group, ResumableSampler
    checkpoint  checkpoint-*/ folders that resume
    train       the loop (both stages, grad accumulation, bf16 on CUDA, DDP)
    launch      `python -m masktok.trainer.launch` (for torchrun)

Generation from a checkpoint lives in inference/, the `masktok train` command in cli/train.py,
a tiny Llama and a small synthetic cache for tests and demos in tiny/.
"""
