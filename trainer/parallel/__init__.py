"""Training on several GPUs (docs/trainer.md, "Several GPUs").

    distributed  torchrun environment, process group, ResumableSampler
    sharding     the strategies (ddp, fsdp, ...), bf16 autocast, gradient sync
    memory       the bytes each strategy takes per GPU (accounting, benchmarks/bench_memory.py)
"""
