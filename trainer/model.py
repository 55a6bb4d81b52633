"""Mask-LLaVA's model: two mlp2x_gelu projectors in front of any Hugging Face causal LM.

Patch tokens are penultimate-layer ViT features (width C, the vision width), while the
global token and the object tokens live in CLIP's embedding space (width D, after the
visual projection). One projector cannot take both, so there are two, each LLaVA's
``mlp2x_gelu`` (Linear(in, H) - GELU - Linear(H, H), H = the LM's hidden size):
``patch_proj`` (C -> H) for patch tokens and ``token_proj`` (D -> H) for global and object
tokens, which share a space. Their outputs are concatenated in the order global, patch,
objects, and replace the ``<image>`` sentinel (-200) of the text in ``inputs_embeds``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .compose import VisualTokens
from .templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX


def mlp2x_gelu(d_in: int, hidden: int) -> nn.Sequential:
    """LLaVA-1.5's projector."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class Projector(nn.Module):
    """The two projectors (see the module docstring); ``dims`` = {"C": ..., "D": ...}."""

    def __init__(self, patch_dim: int, token_dim: int, hidden: int) -> None:
        super().__init__()
        self.patch_dim, self.token_dim, self.hidden = patch_dim, token_dim, hidden
        self.patch_proj = mlp2x_gelu(patch_dim, hidden)
        self.token_proj = mlp2x_gelu(token_dim, hidden)

    def forward(self, visual: list[VisualTokens]) -> list[torch.Tensor]:
        """Project a batch of images at once; returns one [n_i, H] tensor per image."""
        p = next(self.parameters())
        patch = self.patch_proj(torch.cat([v.patch for v in visual]).to(p.device, p.dtype))
        tokens = self.token_proj(torch.cat([torch.cat([v.glob, v.objects]) for v in visual]).to(p.device, p.dtype))
        out, pi, ti = [], 0, 0
        for v in visual:
            g, np_, no = len(v.glob), len(v.patch), len(v.objects)
            out.append(torch.cat([tokens[ti:ti + g], patch[pi:pi + np_], tokens[ti + g:ti + g + no]]))
            pi, ti = pi + np_, ti + g + no
        return out

    def idle(self) -> torch.Tensor:
        """A zero that depends on every weight: added to each batch's embeddings so a batch
        without images (text-only, or its sentinel cut away) still gives all ranks the same
        gradients to reduce (ddp and fsdp expect every parameter in every step)."""
        p = next(self.parameters())
        return self.patch_proj(p.new_zeros(0, self.patch_dim)).sum() + self.token_proj(p.new_zeros(0, self.token_dim)).sum()


class MaskLlava(nn.Module):
    """Projector + causal LM. ``forward`` takes a collated batch (trainer/data.py)."""

    def __init__(self, llm: nn.Module, projector: Projector) -> None:
        super().__init__()
        self.llm, self.projector = llm, projector

    def embed(self, input_ids: torch.Tensor, lengths: torch.Tensor, visual: list[VisualTokens | None],
              labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Splice projected visual tokens into the text embeddings at each sentinel.

        Returns right-padded inputs_embeds [B, T, H], attention_mask [B, T] and labels
        (-100 on visual tokens and padding) or None.
        """
        table = self.llm.get_input_embeddings()
        device = table.weight.device
        input_ids = input_ids.to(device)
        text = table(input_ids.clamp_min(0))
        images = [v for v in visual if v is not None]
        projected = iter(self.projector(images)) if images else iter(())
        seqs, labs = [], []
        for b in range(len(input_ids)):
            n = int(lengths[b])
            ids = input_ids[b, :n]
            pos = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            emb = text[b, :n]
            lab = labels[b, :n].to(device) if labels is not None else None
            if visual[b] is not None and pos:
                v = next(projected).to(emb.dtype)
                p = pos[0]
                emb = torch.cat([emb[:p], v, emb[p + 1:]])
                if lab is not None:
                    lab = torch.cat([lab[:p], lab.new_full((len(v),), IGNORE_INDEX), lab[p + 1:]])
            elif visual[b] is not None:
                next(projected)  # the sentinel was truncated away: the image is dropped
            seqs.append(emb)
            labs.append(lab)
        t = max(len(s) for s in seqs)
        embeds = text.new_zeros(len(seqs), t, text.shape[-1])
        mask = torch.zeros(len(seqs), t, dtype=torch.long, device=device)
        out_labels = torch.full((len(seqs), t), IGNORE_INDEX, dtype=torch.long, device=device) if labels is not None else None
        for b, s in enumerate(seqs):
            embeds[b, : len(s)] = s
            mask[b, : len(s)] = 1
            if out_labels is not None:
                out_labels[b, : len(s)] = labs[b]
        return embeds + self.projector.idle().to(embeds.dtype), mask, out_labels

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The mean next-token loss over the learnt (non -100) positions of the batch."""
        embeds, mask, labels = self.embed(batch["input_ids"], batch["lengths"], batch["visual"], batch["labels"])
        return self.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss

    @torch.no_grad()
    def generate(self, ids: list[int], visual: VisualTokens | None, max_new_tokens: int = 64,
                 eos_token_id: int | None = None) -> list[int]:
        """Greedy decoding from one prompt (ids with the sentinel); returns the new ids."""
        embeds, mask, _ = self.embed(torch.tensor([ids]), torch.tensor([len(ids)]), [visual])
        out: list[int] = []
        past = None
        # transformers 5.x names the KV cache ``cache`` (``past_key_values`` before, deprecated)
        key = "cache" if "cache" in inspect.signature(self.llm.forward).parameters else "past_key_values"
        for _ in range(max_new_tokens):
            res = self.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, **{key: past})
            past = getattr(res, key)
            nxt = int(res.logits[0, -1].argmax())
            if eos_token_id is not None and nxt == eos_token_id:
                break
            out.append(nxt)
            embeds = self.llm.get_input_embeddings()(torch.tensor([[nxt]], device=mask.device))
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        return out
