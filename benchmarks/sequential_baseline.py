"""A straightforward sequential GraTa step that mirrors the structure of the
authors' reference implementation (written for this benchmark, not copied):
contiguous fp32 tensors, the strong style augmentation in NumPy/SciPy on the
host, each consistency view predicted one after the other and moved to the
host, the pseudo-label averaged there and moved back. It is the yardstick
that `step_speed.py` measures our engine against.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from GraTaSegmenterLib.adaptation.norm import configure_for_adaptation
from GraTaSegmenterLib.adaptation.views import VIEWS_2D


def _split_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high)


def strong_style_numpy(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-sample, per-channel loops on the host, as batchgenerators does."""
    out = batch.copy()
    for b in range(out.shape[0]):
        img = out[b]
        if rng.random() < 0.75:
            for c in range(img.shape[0]):
                img[c] *= rng.uniform(0.5, 1.5)
        if rng.random() < 0.75:
            for c in range(img.shape[0]):
                f = _split_uniform(rng, 0.5, 1.5)
                mn, lo, hi = img[c].mean(), img[c].min(), img[c].max()
                img[c] = np.clip((img[c] - mn) * f + mn, lo, hi)
        if rng.random() < 0.75:
            img *= -1
            for c in range(img.shape[0]):
                g = _split_uniform(rng, 0.5, 2.0)
                lo = img[c].min()
                span = img[c].max() - lo + 1e-7
                img[c] = np.power((img[c] - lo) / span, g) * span + lo
            img *= -1
        if rng.random() < 0.5:
            img += rng.normal(0.0, rng.uniform(0, 0.05), img.shape).astype(img.dtype)
        if rng.random() < 0.5:
            for c in range(img.shape[0]):
                if rng.random() < 0.5:
                    img[c] = gaussian_filter(img[c], rng.uniform(0.5, 1.5), order=0)
        lo, hi = img.min(), img.max()
        out[b] = (img - lo) / (hi - lo)
    return out


class SequentialGraTa:
    """GraTa (aux ent, pseudo consis, Adam) in the reference's sequential form."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-4, seed: int = 0):
        self.model = model
        self.params = [p for _, p in configure_for_adaptation(model)]
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999))
        self.base_lr = lr
        self.rng = np.random.default_rng(seed)

    def _entropy(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.model(x))
        return -(p * torch.log(p + 1e-6)).sum(1).mean()

    def _consistency(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch)
        predictions = []
        with torch.no_grad():
            for view in VIEWS_2D:
                predictions.append(view.inverse(self.model(view.forward(x))).detach().cpu())
        target = torch.stack(predictions).sigmoid().mean(0)
        augmented = torch.from_numpy(strong_style_numpy(batch, self.rng))
        return F.binary_cross_entropy_with_logits(self.model(augmented), target)

    def step(self, batch: np.ndarray) -> float:
        x = torch.from_numpy(batch)
        self.optimizer.zero_grad()
        self._entropy(x).backward()
        with torch.no_grad():
            old = [p.detach().clone() for p in self.params]
            g_aux = [p.grad.detach().clone() for p in self.params]
            for p, g in zip(self.params, g_aux):
                p.sub_(g)
        self.optimizer.zero_grad()
        self._consistency(batch).backward()
        with torch.no_grad():
            inner = sum((a * p.grad).sum() for a, p in zip(g_aux, self.params))
            n_pse = torch.norm(torch.stack([p.grad.norm() for p in self.params]))
            n_aux = torch.norm(torch.stack([g.norm() for g in g_aux]))
            cosine = float(inner / (n_pse * n_aux + 1e-12))
            for p, o in zip(self.params, old):
                p.copy_(o)
        self.optimizer.param_groups[0]["lr"] = self.base_lr * (cosine + 1) ** 2 / 4
        self.optimizer.step()
        return cosine

    @torch.no_grad()
    def predict(self, batch: np.ndarray) -> torch.Tensor:
        return self.model(torch.from_numpy(batch))
