"""Which parameters test-time adaptation trains, and how normalisation runs.

As in TENT and the GraTa reference code, only the affine parameters (scale and
shift) of normalisation layers are trained, and BatchNorm layers forget their
running statistics: every forward pass, adaptation and prediction alike,
normalises with the statistics of the current batch. InstanceNorm (affine) and
GroupNorm already normalise per sample; their affine parameters are trained too,
so networks without BatchNorm (typical for 3D) can be adapted.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def use_batch_statistics(model: nn.Module) -> None:
    """Make every BatchNorm (and stat-tracking InstanceNorm) normalise with
    the statistics of the current batch, as the reference does: running
    buffers removed, ``track_running_stats=False``, train mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, (_BatchNorm, _InstanceNorm)) and module.track_running_stats:
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None


def norm_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The affine parameters of all normalisation layers, in module order."""
    found = []
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if isinstance(p, nn.Parameter):
                    found.append((f"{module_name}.{pname}" if module_name else pname, p))
    return found


def configure_for_adaptation(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything but the norm affine parameters; batch statistics on.

    Returns the trained parameters with their names. Raises ValueError when the
    network has no trainable normalisation parameter (nothing to adapt).
    """
    use_batch_statistics(model)
    model.requires_grad_(False)
    params = norm_parameters(model)
    if not params:
        raise ValueError("the network has no normalisation layer with affine parameters; "
                         "test-time adaptation needs BatchNorm, affine InstanceNorm or GroupNorm")
    for _, p in params:
        p.requires_grad_(True)
    return params


def _grouped_batch_norm(module: _BatchNorm, groups: int, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm in batch-statistics mode applied to ``groups`` equal chunks of
    the batch separately: the views are folded into the channel axis so that one
    ``F.batch_norm`` call computes per-chunk statistics."""
    n = x.shape[0] // groups
    rest = x.shape[2:]
    folded = x.reshape(groups, n, x.shape[1], *rest).transpose(0, 1).reshape(n, groups * x.shape[1], *rest)
    weight = module.weight.repeat(groups) if module.weight is not None else None
    bias = module.bias.repeat(groups) if module.bias is not None else None
    out = F.batch_norm(folded, None, None, weight, bias, True, 0.0, module.eps)
    return out.reshape(n, groups, x.shape[1], *rest).transpose(0, 1).reshape(x.shape)


@contextlib.contextmanager
def per_chunk_batch_statistics(model: nn.Module, groups: int) -> Iterator[None]:
    """Within the block, a batch made of ``groups`` stacked sub-batches is
    normalised as if each sub-batch had run alone (BatchNorm statistics per
    chunk). This is what lets the consistency views run in one forward pass
    with exactly the statistics of the sequential passes."""
    patched = []
    try:
        for module in model.modules():
            if isinstance(module, _BatchNorm) and not module.track_running_stats and groups > 1:
                module.forward = functools.partial(_grouped_batch_norm, module, groups)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def adaptation_summary(model: nn.Module) -> str:
    """What test-time adaptation would train in a network, for people: 'the affine parameters of
    16 InstanceNorm3d layers (2,464 values)'; or why nothing would be."""
    counts: dict[str, int] = {}
    values = 0
    without_affine: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            params = [p for p in (getattr(module, "weight", None), getattr(module, "bias", None))
                      if isinstance(p, nn.Parameter)]
            kind = type(module).__name__
            if params:
                counts[kind] = counts.get(kind, 0) + 1
                values += sum(p.numel() for p in params)
            else:
                without_affine[kind] = without_affine.get(kind, 0) + 1
    if not counts:
        why = (" (" + ", ".join(f"{n} {k} without affine parameters" for k, n in without_affine.items()) + ")"
               if without_affine else "")
        return "nothing: the network has no normalisation layer with affine parameters" + why + \
            "; only --method none can be used"
    layers = ", ".join(f"{n} {k}" for k, n in counts.items())
    total = sum(p.numel() for p in model.parameters())
    return f"the affine parameters of {layers} layers ({values:,} of {total:,} values)"
