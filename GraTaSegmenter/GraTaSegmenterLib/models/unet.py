"""A compact U-Net for 2D images and 3D patches with a choice of normalisation.

It is the project's own network family: small enough to train on a CPU and to
ship inside the repository (the bundled fundus model), and available in 3D with
BatchNorm, InstanceNorm or GroupNorm so that every normalisation layer the
adaptation methods support has a real network to run on.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

NORMS = ("batch", "instance", "group")


def _norm(kind: str, channels: int, dims: int, groups: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return nn.GroupNorm(min(groups, channels), channels)


class ConvBlock(nn.Sequential):
    """Two 3x3(x3) convolutions, each followed by normalisation and ReLU."""

    def __init__(self, c_in: int, c_out: int, dims: int, norm: str, groups: int):
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        super().__init__(
            conv(c_in, c_out, 3, padding=1, bias=False), _norm(norm, c_out, dims, groups), nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1, bias=False), _norm(norm, c_out, dims, groups), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net: ``len(channels) - 1`` poolings, transposed-convolution upsampling.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: logit channels.
        channels: widths from the top level down, e.g. ``(16, 32, 64, 128)``.
        norm: ``"batch"``, ``"instance"`` (affine) or ``"group"``.
        groups: groups of GroupNorm.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 2,
                 channels: Sequence[int] = (16, 32, 64, 128), norm: str = "batch", groups: int = 8):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, not {spatial_dims}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
        if len(channels) < 2:
            raise ValueError("channels needs at least two levels")
        self.spatial_dims = spatial_dims
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        self.down = nn.ModuleList()
        c_prev = in_channels
        for c in channels:
            self.down.append(ConvBlock(c_prev, c, spatial_dims, norm, groups))
            c_prev = c
        self.pool = pool(2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for c_deep, c_skip in zip(reversed(channels[1:]), reversed(channels[:-1])):
            self.up.append(up(c_deep, c_skip, 2, stride=2))
            self.merge.append(ConvBlock(2 * c_skip, c_skip, spatial_dims, norm, groups))
        self.head = conv(channels[0], out_channels, 1)
        self.divisor = 2 ** (len(channels) - 1)
        self.size_multiple = self.divisor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"UNet input sizes must be multiples of {self.divisor}, got {tuple(x.shape[2:])}")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)
