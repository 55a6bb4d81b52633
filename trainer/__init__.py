"""The slim Mask-LLaVA trainer: learns from a finished job's cached tokens, never running
the vision encoder (docs/trainer.md; paper 3.1-3.5, 4.2, C.6-C.7). It reads a job
directory through schemas/ only (jobdir, commits, record), never through pipeline/.

Read train.py top to bottom: the loop. What it calls is grouped by role:

    train       the loop (both stages, grad accumulation, bf16 on CUDA, DDP/FSDP)
    runtime     TrainConfig; loading the LM/tokenizer; building the model; optimiser schedule; loaders
    launch      `python -m masktok.trainer.launch` (for torchrun)
    data/       what is read: cache readers, cache statistics, LLaVA records, example order,
                prompt templates and LLaVA's text ids, the datasets and collate
    visual/     one image's visual tokens: token spec, compose (+ box-centre embedding),
                norm scaling, re-filtering at another IoU
    model/      Projector + MaskLlava, checkpoints that resume, the consolidated folder
    parallel/   torchrun environment and ResumableSampler, ddp/fsdp sharding, memory accounting

Each subpackage's __init__ lists its modules. Inside the trainer, imports flow down:
launch -> train -> runtime, model/, parallel/ -> data/ -> visual/ (pyproject.toml's contracts).

Generation from a checkpoint lives in inference/, the `masktok train` command in cli/train.py,
a tiny Llama and a small synthetic cache for tests and demos in tiny/.
"""
