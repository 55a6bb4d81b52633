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

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.templates import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..visual.compose import VisualTokens


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
    """Projector + causal LM. ``forward`` takes a collated batch (trainer/data/datasets.py)."""

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
        return self.generate_batch([ids], [visual], max_new_tokens, eos_token_id).tokens[0]

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], visual: list[VisualTokens | None], max_new_tokens: int = 64,
                       eos_token_id: int | None = None, pad_token_id: int = 0,
                       temperature: float = 0.0) -> "Generated":
        """Decode several prompts (ids with the sentinel) at once with transformers'
        ``generate`` (KV cache): inputs_embeds left-padded, positions counted from each
        prompt's first real token, so a greedy answer does not depend on its batch-mates.
        ``temperature`` 0: greedy; above 0: sampling (seed torch for repeatable draws).
        Returns the new ids of each prompt (up to, without, the first eos) and, per prompt,
        the smallest gap between its two best logits over its steps (how near to a tie
        greedy decoding came; sampling: nan). The gap is kept as a running minimum while
        decoding (:class:`MarginTracker`), not from every step's logits (``output_scores``
        keeps B x steps x vocabulary floats: 4 GB at 32 x 1,024 x 32K). transformers ends
        the batch when its last sequence has met eos (``steps``: the decoding steps run)."""
        from transformers import GenerationConfig, LogitsProcessorList

        lengths = torch.tensor([len(p) for p in prompts])
        padded = torch.zeros(len(prompts), int(lengths.max()), dtype=torch.long)
        for b, p in enumerate(prompts):
            padded[b, : len(p)] = torch.tensor(p)
        embeds, mask, _ = self.embed(padded, lengths, visual)
        embeds, mask = left_padded(embeds, mask)
        sample = temperature > 0
        # every decoding choice explicit, as LLaVA's eval scripts pass them: transformers fills the
        # settings left None from the LM folder's generation_config.json (beams, penalties)
        config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, num_beams=1,
                                  repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
                                  temperature=temperature if sample else None, top_p=None, top_k=None,
                                  eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                  return_dict_in_generate=True)
        tracker = MarginTracker(len(prompts), eos_token_id)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config,
                                logits_processor=LogitsProcessorList([] if sample else [tracker]))
        tokens = []
        for seq in out.sequences.tolist():
            n = seq.index(eos_token_id) if eos_token_id is not None and eos_token_id in seq else len(seq)
            tokens.append(seq[:n])
        margins = [float("nan")] * len(prompts) if sample else tracker.margins()
        return Generated(tokens, margins, int(out.sequences.shape[1]))


class MarginTracker:
    """A logits processor that changes nothing and keeps, per sequence, the smallest gap
    between its two best logits over the steps up to and including the one that chose its
    eos: memory flat in the number of steps (one float per sequence)."""

    def __init__(self, batch: int, eos_token_id: int | None) -> None:
        self.eos = eos_token_id
        self.gap = torch.full((batch,), float("inf"))
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:  # with inputs_embeds, input_ids hold the new tokens only; count from here
            self.start = input_ids.shape[1]
        top2 = scores.float().topk(2, dim=-1).values
        gap = (top2[:, 0] - top2[:, 1]).cpu()
        new = input_ids[:, self.start:]
        live = torch.ones_like(gap, dtype=torch.bool) if self.eos is None else ~(new == self.eos).any(1).cpu()
        self.gap = torch.where(live, torch.minimum(self.gap, gap), self.gap)
        return scores

    def margins(self) -> list[float]:
        return [float(g) for g in self.gap]


@dataclass
class Generated:
    """What :meth:`MaskLlava.generate_batch` returns."""

    tokens: list[list[int]]
    margins: list[float]
    steps: int = 0  # decoding steps the batch ran (its longest answer, eos included, or the limit)


def left_padded(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T, H] embeddings and their mask, moved to the right end of each row
    (generation appends after the last position, so every prompt must end there)."""
    out, out_mask = torch.zeros_like(embeds), torch.zeros_like(mask)
    t = mask.shape[1]
    for b, n in enumerate(mask.sum(1).tolist()):
        out[b, t - n:] = embeds[b, :n]
        out_mask[b, t - n:] = 1
    return out, out_mask
