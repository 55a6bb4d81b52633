"""What a training run did to its LM, for the stage-1 freeze tests (tests/test_trainer_train.py
in one process, tests/sharded_runs.py under torchrun with fsdp)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def recording_training() -> Iterator[dict[str, Any]]:
    """While inside, the trainer's ``build_model`` and ``torch.optim.AdamW`` record what they
    make: the yielded dict gets ``model``, its state as built (``built``) and ``optimizer``."""
    import masktok.trainer.train as trainer

    seen: dict[str, Any] = {}
    build_model, adamw = trainer.build_model, torch.optim.AdamW

    def recording_build(*args, **kwargs):
        seen["model"] = model = build_model(*args, **kwargs)
        seen["built"] = {name: t.detach().clone() for name, t in model.state_dict().items()}
        return model

    class RecordingAdamW(adamw):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            seen["optimizer"] = self

    trainer.build_model, torch.optim.AdamW = recording_build, RecordingAdamW
    try:
        yield seen
    finally:
        trainer.build_model, torch.optim.AdamW = build_model, adamw


def freeze_report(seen: dict[str, Any]) -> dict[str, Any]:
    """After the run: whether the LM's weights equal those it was built with, bit for bit,
    whether the projector's changed, and how many LM parameters the optimizer held. A
    sharded weight (DTensor) is gathered first: a collective, every rank calls this."""
    model, built = seen["model"], seen["built"]
    after = {name: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()
             for name, t in sorted(model.state_dict().items())}
    lm = [name for name in after if name.startswith("llm.")]
    in_optimizer = {id(p) for group in seen["optimizer"].param_groups for p in group["params"]}
    return {"lm_tensors": len(lm), "lm_equal": all(torch.equal(built[n], after[n]) for n in lm),
            "projector_changed": any(not torch.equal(built[n], after[n]) for n in after if n not in lm),
            "optimizer_params": len(in_optimizer),
            "lm_in_optimizer": len(in_optimizer & {id(p) for p in model.llm.parameters()})}
