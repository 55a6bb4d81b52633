"""Aten ops per MaskInversion step at ViT-L/14-336 attention shapes (16 heads, 577 tokens),
one image, K masks: a CPU proxy of GPU kernel launches. Runs in the project's venv.
The tower is narrow (2 layers, head width 8) so the count is quick; the chunking of the
relevance loop depends on B, heads and tokens only. Prints one JSON line.

The temporaries' budgets are chosen per device (``legrad.BUDGETS``): by default this counts
the GPU path (the "cuda" budgets applied to the CPU tensors); ``--budgets cpu`` counts the
CPU's own path (smaller chunks: more, cheaper ops).

Usage: .venv/bin/python tools/count_invert_ops.py [K] [--budgets cuda|cpu]   (cited by docs/scale.md)
"""
import argparse
import json

import torch
from open_clip.model import CLIP
from torch.profiler import ProfilerActivity, profile

from masktok.stages import legrad
from masktok.stages.maskinversion import invert_masks

parser = argparse.ArgumentParser(description="Aten ops per MaskInversion step (ViT-L/14-336 attention shapes)")
parser.add_argument("K", type=int, nargs="?", default=101)
parser.add_argument("--budgets", choices=sorted(legrad.BUDGETS), default="cuda")
args = parser.parse_args()
K = args.K
legrad.BUDGETS["cpu"] = legrad.BUDGETS[args.budgets]  # the CPU tensors below use these budgets
torch.manual_seed(0)
torch.set_num_threads(2)
vision = dict(layers=2, width=128, patch_size=14, image_size=336, head_width=8)
text = dict(context_length=16, vocab_size=100, width=64, heads=2, layers=1)
model = CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()
image = torch.randn(3, 336, 336)
masks = (torch.rand(K, 336, 336) > 0.7).float()


# ops that only make views, reinterpret metadata or allocate: no kernel of their own on a GPU
NO_KERNEL = {"aten::view", "aten::as_strided", "aten::slice", "aten::reshape", "aten::_reshape_alias",
             "aten::expand", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::flatten",
             "aten::resolve_conj", "aten::resolve_neg", "aten::detach", "aten::t", "aten::transpose",
             "aten::select", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::to",
             "aten::alias", "aten::unflatten", "aten::split", "aten::chunk", "aten::narrow", "aten::lift_fresh",
             "aten::_unsafe_view", "aten::unbind", "aten::contiguous", "aten::result_type", "aten::is_nonzero",
             "aten::item", "aten::_local_scalar_dense", "aten::size", "aten::stride", "aten::numel"}


def ops(iterations: int) -> tuple[int, int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        invert_masks(model, image, masks, iterations=iterations)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    return sum(e.count for e in events), sum(e.count for e in events if e.key not in NO_KERNEL)


(a, ca), (b, cb) = ops(1), ops(3)
print(json.dumps({"K": K, "budgets": args.budgets, "aten_ops_per_step": (b - a) / 2, "kernel_ops_per_step": (cb - ca) / 2}))
