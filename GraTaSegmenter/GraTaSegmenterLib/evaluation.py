"""Evaluation of adaptation methods on labelled fundus images.

Two protocols:

* ``continual`` (the paper's): one model per target, loaded afresh from the
  source model file; the target's images streamed once in order; ``steps``
  adaptation steps per image; the model and optimiser carried from one image
  to the next; each image predicted right after its steps.
* ``episodic`` (a clinician's single click): the method is reset to the
  source model for every image; after 1, 3, 10, 30 ... steps the image is
  predicted and scored, so one pass yields the whole Dice-against-steps curve.

Metrics per image and class (disc = channel 0, cup = channel 1) after
thresholding the sigmoid at 0.5: Dice (%) and the symmetric average surface
distance (pixels, at the evaluated resolution), both from MONAI, and the number
of connected components of each mask. When the model card has post-processing
rules, the same metrics are also computed on the post-processed masks (keys
prefixed ``pp_``), from the same prediction: every method gets the same rules.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .adaptation import make_method
from .models import load_model

CLASS_NAMES = ("disc", "cup")
METHOD_OPTIONS = {
    "none": ("none", {}),
    "bn": ("bn", {}),
    "tent": ("tent", {}),
    "grata": ("grata", {}),
    "grata-noalign": ("grata", {"align": False}),
    "grata-nodynlr": ("grata", {"dynamic_lr": False}),
    "grata-bf16": ("grata", {"precision": "bf16"}),
}


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Dice (%) and average surface distance per class of one binary
    prediction ``(K, H, W)`` against its label. A class predicted empty while
    present has Dice 0 and an undefined (NaN) distance."""
    from monai.metrics import compute_average_surface_distance, compute_dice

    p = pred[None].float()
    t = target[None].float()
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asd = compute_average_surface_distance(p, t, include_background=True, symmetric=True)[0]
    out = {}
    for k, name in enumerate(CLASS_NAMES[: p.shape[1]]):
        out[f"{name}_dice"] = float(dice[k]) * 100
        value = float(asd[k])
        out[f"{name}_asd"] = value if math.isfinite(value) else float("nan")
    return out


@dataclass
class ImageResult:
    index: int
    name: str
    steps: int
    metrics: dict[str, float]


@dataclass
class RunResult:
    method: str
    target: str
    protocol: str
    images: list[ImageResult] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    def summary(self, steps: int | None = None) -> dict[str, dict[str, float]]:
        """Mean, std and count of defined values of each metric (at ``steps``)."""
        rows = [r.metrics for r in self.images if steps is None or r.steps == steps]
        out = {}
        for key in rows[0] if rows else ():
            values = np.array([r[key] for r in rows], dtype=float)
            finite = values[np.isfinite(values)]
            out[key] = {"mean": float(finite.mean()) if finite.size else float("nan"),
                        "std": float(finite.std()) if finite.size else float("nan"),
                        "n": int(finite.size), "n_total": int(values.size)}
        for prefix in ("", "pp_"):
            if f"{prefix}disc_dice" in out and f"{prefix}cup_dice" in out:
                mean = [(r[f"{prefix}disc_dice"] + r[f"{prefix}cup_dice"]) / 2 for r in rows]
                out[f"{prefix}mean_dice"] = {"mean": float(np.mean(mean)), "std": float(np.std(mean)),
                                             "n": len(mean), "n_total": len(mean)}
        return out


def _predict_binary(method, x: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(method.predict(x)) > 0.5)[0].cpu()


def image_metrics(pred: torch.Tensor, target: torch.Tensor, card=None) -> dict[str, float]:
    """Dice, distance and components of a prediction; with the card's post-processing
    rules, the same of the post-processed prediction under ``pp_`` keys."""
    from .postprocess import apply, components

    out = segmentation_metrics(pred, target)
    for k, name in enumerate(CLASS_NAMES[: pred.shape[0]]):
        out[f"{name}_components"] = float(components(pred[k].numpy()))
    if card is not None and card.postprocess:
        post, _report = apply(pred.numpy(), card.classes, card.postprocess, (1.0,) * (pred.ndim - 1))
        post = torch.from_numpy(post).bool()
        for key, value in image_metrics(post, target).items():
            out["pp_" + key] = value
    return out


def evaluate_stream(model_path, method_key: str, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    names: Sequence[str], *, target: str = "", protocol: str = "continual",
                    steps: Iterable[int] = (1,), seed: int = 0, device: str = "cpu",
                    on_image: Callable[[ImageResult], None] | None = None, **options) -> RunResult:
    """Run one method over one target's images under a protocol (see module doc)."""
    if method_key not in METHOD_OPTIONS:
        raise ValueError(f"unknown method {method_key!r}; choose from {list(METHOD_OPTIONS)}")
    name, extra = METHOD_OPTIONS[method_key]
    method = make_method(name, load_model(model_path, device=device), seed=seed, **{**extra, **options})
    checkpoints = sorted(set(steps))
    if name in ("none", "bn"):
        checkpoints = [checkpoints[0]] if protocol == "continual" else [0]
    result = RunResult(method=method_key, target=target, protocol=protocol)
    for i, (image, mask, case) in enumerate(zip(images, masks, names)):
        x = torch.from_numpy(np.ascontiguousarray(image))[None]
        y = torch.from_numpy(np.ascontiguousarray(mask)).bool()
        if protocol == "episodic":
            method.reset()
        done = 0
        for checkpoint in checkpoints if protocol == "episodic" else [checkpoints[-1]]:
            while done < checkpoint:
                record = method.step(x).to_dict()
                record.update(image=i, name=case)
                result.records.append(record)
                done += 1
            image_result = ImageResult(i, case, checkpoint,
                                       image_metrics(_predict_binary(method, x), y, getattr(method.model, "card", None)))
            result.images.append(image_result)
            if on_image:
                on_image(image_result)
    return result
