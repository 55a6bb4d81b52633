"""Stand-ins for tests, benchmarks and the demo, kept out of the production folders:

    corpus  generated scenes with the file quirks of real corpora (the demo corpus)
    cache   a small synthetic token cache, written with the pipeline's own shard writer
    llm     a tiny Llama and byte-level BPE tokenizer, built offline
    demo    ``masktok demo``: the whole of masktok end to end on the above

They import the production packages (pipeline, trainer, inference); nothing there imports them.
"""
