"""The strong style augmentation of the consistency loss, in torch.

Same distribution as the reference (which uses batchgenerators on the host):
per sample and channel, in this order

1. brightness: multiply by U(0.5, 1.5), p = 0.75 per sample;
2. contrast around the channel mean, factor U(0.5, 1) or U(1, 1.5) with equal
   odds, clipped to the channel's original range, p = 0.75;
3. gamma on the inverted image: gamma U(0.5, 1) or U(1, 2) with equal odds,
   applied to the min-max scaled, negated channel, p = 0.75;
4. additive Gaussian noise with std U(0, 0.05) (one std per sample), p = 0.5;
5. Gaussian blur, sigma U(0.5, 1.5) per channel with p = 0.5, p = 0.5 per
   sample (scipy's kernel: radius round(4 sigma), symmetric borders);
6. min-max to [0, 1] per image.

All random numbers come from a CPU generator (so a seed gives the same views
on every device); the arithmetic runs on the image's device, without a
host-device synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

P_BRIGHTNESS = P_CONTRAST = P_GAMMA = 0.75
P_NOISE = P_BLUR_SAMPLE = P_BLUR_CHANNEL = 0.5
BRIGHTNESS = (0.5, 1.5)
CONTRAST = (0.5, 1.5)
GAMMA = (0.5, 2.0)
NOISE_STD = (0.0, 0.05)
BLUR_SIGMA = (0.5, 1.5)
GAMMA_EPS = 1e-7


@dataclass
class StyleParameters:
    """The random draws of one augmentation, shape (B, C) unless noted.

    A factor of exactly 1 (sigma 0, std 0) means "not applied"."""

    brightness: torch.Tensor
    contrast: torch.Tensor
    gamma: torch.Tensor
    noise_std: torch.Tensor  # (B,)
    blur_sigma: torch.Tensor


def _split_uniform(shape, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    """U(low, 1) or U(1, high) with equal odds (batchgenerators' convention for
    factors around 1), so that shrinking and stretching are equally likely."""
    below = torch.rand(shape, generator=g) < 0.5
    u = torch.rand(shape, generator=g)
    return torch.where(below, low + u * (1.0 - low), 1.0 + u * (high - 1.0))


def draw_style_parameters(batch: int, channels: int, g: torch.Generator) -> StyleParameters:
    shape = (batch, channels)

    def per_sample(p: float) -> torch.Tensor:
        return (torch.rand(batch, generator=g) < p)[:, None]

    bright = BRIGHTNESS[0] + torch.rand(shape, generator=g) * (BRIGHTNESS[1] - BRIGHTNESS[0])
    brightness = torch.where(per_sample(P_BRIGHTNESS), bright, torch.ones(shape))
    contrast = torch.where(per_sample(P_CONTRAST), _split_uniform(shape, *CONTRAST, g), torch.ones(shape))
    gamma = torch.where(per_sample(P_GAMMA), _split_uniform(shape, *GAMMA, g), torch.ones(shape))
    std = NOISE_STD[0] + torch.rand(batch, generator=g) * (NOISE_STD[1] - NOISE_STD[0])
    noise_std = torch.where(per_sample(P_NOISE)[:, 0], std, torch.zeros(batch))
    sigma = BLUR_SIGMA[0] + torch.rand(shape, generator=g) * (BLUR_SIGMA[1] - BLUR_SIGMA[0])
    blur_on = per_sample(P_BLUR_SAMPLE) & (torch.rand(shape, generator=g) < P_BLUR_CHANNEL)
    blur_sigma = torch.where(blur_on, sigma, torch.zeros(shape))
    return StyleParameters(brightness, contrast, gamma, noise_std, blur_sigma)


def gaussian_kernels(sigmas: torch.Tensor, truncate: float = 4.0) -> torch.Tensor:
    """1D kernels (N, 2R+1), scipy.ndimage's shape, zero-padded to a common
    radius R; sigma 0 gives the identity kernel."""
    sigmas = sigmas.flatten().double()
    radii = [int(truncate * float(s) + 0.5) for s in sigmas]
    radius = max(radii + [0])
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernels = torch.zeros(len(radii), 2 * radius + 1, dtype=torch.float64)
    for i, (s, r) in enumerate(zip(sigmas.tolist(), radii)):
        if s <= 0:
            kernels[i, radius] = 1.0
        else:
            k = torch.exp(-0.5 * (x / s) ** 2) * (x.abs() <= r)
            kernels[i] = k / k.sum()
    return kernels.float()


def _symmetric_pad(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Pad by mirroring including the edge sample (scipy 'reflect')."""
    n = x.shape[dim]
    if radius > n:
        reps = -(-radius // n) * 2 + 1
        tiles = [x if i % 2 == 0 else x.flip(dim) for i in range(reps)]
        big = torch.cat(tiles, dim)
        start = (reps // 2) * n - radius
        return big.narrow(dim, start, n + 2 * radius)
    left = x.narrow(dim, 0, radius).flip(dim)
    right = x.narrow(dim, n - radius, radius).flip(dim)
    return torch.cat([left, x, right], dim)


def blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each (sample, channel) with its own sigma."""
    kernels = gaussian_kernels(sigmas).to(x.device, x.dtype)
    radius = (kernels.shape[1] - 1) // 2
    if radius == 0:
        return x
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    y = x.reshape(1, b * c, *spatial)
    for axis in range(len(spatial)):
        dim = 2 + axis
        y = _symmetric_pad(y, radius, dim)
        moved = y.movedim(dim, -1)
        # Convolve along the last axis; the other spatial axes are folded into one.
        weight = kernels.reshape(b * c, 1, 1, -1)
        folded = moved.reshape(1, b * c, -1, moved.shape[-1])
        out = F.conv2d(folded, weight, groups=b * c)
        y = out.reshape(*moved.shape[:-1], out.shape[-1]).movedim(-1, dim)
    return y.reshape(x.shape)


def minmax_per_image(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    lo = flat.min(1).values.view(-1, *([1] * (x.ndim - 1)))
    hi = flat.max(1).values.view(-1, *([1] * (x.ndim - 1)))
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def apply_style(x: torch.Tensor, params: StyleParameters, noise: torch.Tensor | None) -> torch.Tensor:
    """Apply drawn parameters to a batch in [0, 1]; ``noise`` is N(0, 1) of x's shape."""
    view = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
    dev = x.device

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(dev, x.dtype, non_blocking=True).view(view)

    dims = tuple(range(2, x.ndim))
    x = x * put(params.brightness)

    contrast = put(params.contrast)
    mean = x.mean(dims, keepdim=True)
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    stretched = torch.minimum(torch.maximum((x - mean) * contrast + mean, lo), hi)
    x = torch.where(contrast != 1.0, stretched, x)

    gamma = put(params.gamma)
    neg = -x
    lo = neg.amin(dims, keepdim=True)
    span = neg.amax(dims, keepdim=True) - lo + GAMMA_EPS
    curved = -(((neg - lo) / span).pow(gamma) * span + lo)
    x = torch.where(gamma != 1.0, curved, x)

    if noise is not None:
        x = x + noise.to(dev, x.dtype, non_blocking=True) * params.noise_std.to(dev, x.dtype).view(
            (-1,) + (1,) * (x.ndim - 1))

    if bool((params.blur_sigma > 0).any()):
        x = blur(x, params.blur_sigma)
    return minmax_per_image(x)


def strong_style(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Draw parameters from ``g`` and augment ``x`` (B, C, *spatial) in [0, 1]."""
    params = draw_style_parameters(x.shape[0], x.shape[1], g)
    noise = torch.randn(x.shape, generator=g) if bool((params.noise_std > 0).any()) else None
    return apply_style(x, params, noise)
