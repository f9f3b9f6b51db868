"""Self-supervised losses of the reference code, for sigmoid and softmax models.

Each loss is a function ``loss(ctx, x) -> scalar tensor`` with its graph, where
``ctx`` (:class:`LossContext`) gives the model, its output kind, the random
generator and the forward pass to use (autocast, batched views). The names are
the reference's: ``ent``, ``consis``, ``recon``, ``denoise``, ``supres``,
``rotate``; the last four need the auxiliary heads of the reference ResUnet.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigurationError
from .augment import strong_style
from .norm import per_chunk_batch_statistics
from .views import ROTATION_TASK, consistency_views

ENTROPY_EPS = 1e-6
DENOISE_STD = 0.1
HEAD_LOSSES = ("recon", "denoise", "supres", "rotate")


@dataclass
class LossContext:
    model: nn.Module
    output: str  # "sigmoid" or "softmax"
    spatial_dims: int
    generator: torch.Generator
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    batch_views: int = 1  # consistency views per forward pass (1: one at a time)
    memory_format: torch.memory_format = torch.contiguous_format
    view_axes: tuple[int, ...] | None = None  # the spatial axes the consistency views may flip (None: all)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(x.contiguous(memory_format=self.memory_format)).float()

    def forward_head(self, x: torch.Tensor, head: str) -> torch.Tensor:
        if head not in getattr(self.model, "heads", ()):
            raise ConfigurationError(
                f"the {head!r} loss needs the {head} head of the reference ResUnet, which this model lacks; "
                f"use aux/pseudo losses 'ent' or 'consis'")
        with self.autocast():
            out, _ = self.model.forward_with_head(x.contiguous(memory_format=self.memory_format), head)
        return out.float()

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.output == "sigmoid" else torch.softmax(logits, 1)


def entropy(ctx: LossContext, x: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of -sum_c p_c log(p_c + 1e-6). For sigmoid outputs only
    the positive term (the reference's choice, kept on purpose)."""
    p = ctx.activate(ctx.forward(x))
    return -(p * torch.log(p + ENTROPY_EPS)).sum(1).mean()


@torch.no_grad()
def pseudo_label(ctx: LossContext, x: torch.Tensor) -> torch.Tensor:
    """Mean activation of the original image and its flipped/rotated views,
    each mapped back; no gradient."""
    views = consistency_views(ctx.spatial_dims, ctx.view_axes)
    transformed = [v.forward(x) for v in views]
    per_pass = max(1, int(ctx.batch_views)) if all(t.shape == x.shape for t in transformed) else 1
    logits = []
    for start in range(0, len(views), per_pass):
        chunk = transformed[start:start + per_pass]
        with per_chunk_batch_statistics(ctx.model, len(chunk)):
            logits.extend(ctx.forward(torch.cat(chunk, 0)).chunk(len(chunk), 0))
    probs = [ctx.activate(v.inverse(out)) for v, out in zip(views, logits)]
    return torch.stack(probs).mean(0)


def consistency(ctx: LossContext, x: torch.Tensor) -> torch.Tensor:
    """Prediction on a strongly style-augmented copy against the pseudo-label:
    BCE with logits (sigmoid) or soft cross-entropy (softmax)."""
    target = pseudo_label(ctx, x)
    logits = ctx.forward(strong_style(x, ctx.generator))
    if ctx.output == "sigmoid":
        return F.binary_cross_entropy_with_logits(logits, target)
    return -(target * torch.log_softmax(logits, 1)).sum(1).mean()


def reconstruction(ctx: LossContext, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(torch.sigmoid(ctx.forward_head(x, "recon")), x)


def denoising(ctx: LossContext, x: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=ctx.generator).to(x.device, x.dtype) * DENOISE_STD
    return F.mse_loss(torch.sigmoid(ctx.forward_head(x + noise, "denoise")), x)


def super_resolution(ctx: LossContext, x: torch.Tensor) -> torch.Tensor:
    if ctx.spatial_dims != 2:
        raise ConfigurationError("the 'supres' loss is defined for 2D images only")
    small = F.interpolate(x, size=[x.shape[-2] // 2, x.shape[-1] // 2], mode="bilinear", align_corners=True)
    return F.mse_loss(torch.sigmoid(ctx.forward_head(small, "supres")), x)


def rotation(ctx: LossContext, x: torch.Tensor) -> torch.Tensor:
    """Classify which of six flips/rotations was applied to each sample."""
    if ctx.spatial_dims != 2:
        raise ConfigurationError("the 'rotate' loss is defined for 2D images only")
    labels = torch.randint(0, len(ROTATION_TASK), (x.shape[0],), generator=ctx.generator)
    rotated = torch.stack([ROTATION_TASK[int(k)](x[i]) for i, k in enumerate(labels)])
    return F.cross_entropy(ctx.forward_head(rotated, "rotate"), labels.to(x.device))


LOSSES: dict[str, Callable[[LossContext, torch.Tensor], torch.Tensor]] = {
    "ent": entropy,
    "consis": consistency,
    "recon": reconstruction,
    "denoise": denoising,
    "supres": super_resolution,
    "rotate": rotation,
}


def get_loss(name: str, model: nn.Module) -> Callable[[LossContext, torch.Tensor], torch.Tensor]:
    """Look a loss up by name, checking up front that the model can compute it."""
    if name not in LOSSES:
        raise ConfigurationError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if name in HEAD_LOSSES and name not in getattr(model, "heads", ()):
        raise ConfigurationError(
            f"the {name!r} loss needs the {name} head of the reference ResUnet, which this model lacks; "
            f"use 'ent' or 'consis'")
    return LOSSES[name]
