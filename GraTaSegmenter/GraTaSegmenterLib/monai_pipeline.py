"""Adapting and predicting with a MONAI bundle the way the bundle predicts.

The same shape as :mod:`.nnunet_pipeline`: the volume goes through the
bundle's own preprocessing (MONAI's transforms, built from the literal
arguments :mod:`.models.monai_bundle` read), the steps run on the bundle's
sliding windows of the preprocessed volume (the ones with the most source
foreground, at most :data:`MAX_ADAPT_WINDOWS`), and the whole volume is then
predicted by the bundle's inferer, activated (softmax or sigmoid) and mapped
back into the input's geometry by MONAI's ``Invertd``, as the bundle's
postprocessing does, before argmax (softmax) or 0.5 threshold (sigmoid).

Geometry: the engine reads volumes with SimpleITK (z, y, x, LPS); MONAI's
transforms expect (x, y, z) arrays with a RAS affine, as its ITK reader makes
them. :func:`metatensor` converts; the result is converted back.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from .errors import InputError
from .models.monai_bundle import MonaiBundle
from .nnunet_pipeline import MAX_ADAPT_WINDOWS, PreparedCase, UnitInterval, WindowedPipeline

_LATERAL = ("left", "right")


def metatensor(array_czyx: np.ndarray, image) -> Any:
    """A (C, x, y, z) MetaTensor with the RAS affine of a SimpleITK image (MONAI's ITKReader convention)."""
    from monai.data import MetaTensor

    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing[None, :]
    affine[:3, 3] = image.GetOrigin()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    data = np.ascontiguousarray(np.transpose(array_czyx, (0, 3, 2, 1)), dtype=np.float32)
    return MetaTensor(torch.from_numpy(data), affine=torch.from_numpy(affine))


def consistency_axes(bundle: MonaiBundle) -> tuple[int, ...] | None:
    """Spatial axes the consistency views may flip: all, unless a label is lateral (left/right), when
    the left-right axis is kept (known once the bundle orients to RAS/LPS ...), or no axis at all."""
    lateral = any(word in c.name.lower() for c in bundle.card.classes for word in _LATERAL)
    if not lateral:
        return None
    for name, kwargs in bundle.preprocessing:
        codes = kwargs.get("axcodes") if name == "Orientationd" else None
        if isinstance(codes, str) and len(codes) == 3:
            lr = next(i for i, c in enumerate(codes.upper()) if c in "LR") if any(c in "LR" for c in codes.upper()) \
                else None
            return tuple(i for i in range(3) if i != lr) if lr is not None else ()
    return ()


class MonaiPipeline(WindowedPipeline):
    """The bundle's preprocessing, inferer and inversion around the engine's adaptation steps."""

    def __init__(self, bundle: MonaiBundle, device: torch.device):
        import monai.inferers as inferers
        import monai.transforms as transforms

        self.model = bundle
        self.device = device
        key = bundle.image_key
        steps = []
        for name, kwargs in bundle.preprocessing:
            kwargs = {**kwargs, "keys": key}
            if name == "CropForegroundd":
                kwargs["source_key"] = key
            try:
                steps.append(getattr(transforms, name)(**kwargs))
            except Exception as exc:  # noqa: BLE001 - the bundle's arguments
                from .errors import ModelFileError

                raise ModelFileError(f"the bundle's {name} does not build with its arguments "
                                     f"({' '.join(str(exc).split())[:160]}); the bundle may be for another "
                                     f"MONAI version") from None
        self.preprocess = transforms.Compose(steps)
        self.invert = transforms.Invertd(keys="pred", transform=self.preprocess, orig_keys=key, nearest_interp=False,
                                         to_tensor=True)
        name, kwargs = bundle.inferer
        kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "sw_device", "progress")}
        self.inferer = getattr(inferers, name)(**kwargs)
        self.roi = bundle.roi_size
        self.patch = self.roi or ()
        self.overlap = kwargs.get("overlap", 0.25)
        self.module = UnitInterval(bundle.network, bundle.card.input_channels, bundle.card,
                                   consistency_axes(bundle)).to(device)

    def prepare(self, array: np.ndarray, image) -> PreparedCase:
        """The bundle's preprocessing of a (C, z, y, x) volume with the geometry of SimpleITK ``image``."""
        data = self.preprocess({self.model.image_key: metatensor(array, image)})[self.model.image_key]
        if not bool(torch.isfinite(data.as_tensor()).all()):
            raise InputError("the bundle's preprocessing of this volume gave NaN or infinite values (a constant "
                             "channel?); check that the right volume was chosen")
        spatial = tuple(data.shape[1:])
        roi = self.roi or spatial
        plain = data.as_tensor().float()
        pads = [(0, max(0, r - s)) for r, s in zip(roi, spatial)]
        padded = torch.nn.functional.pad(plain, [v for p in reversed(pads) for v in p]) if any(p[1] for p in pads) \
            else plain
        windows = self._windows(tuple(padded.shape[1:]), roi)
        flat = plain.reshape(plain.shape[0], -1)
        return PreparedCase(data=data, padded=padded, properties={}, windows=windows,
                            low=flat.min(1).values.float(), high=flat.max(1).values.float())

    def _windows(self, shape: tuple[int, ...], roi: tuple[int, ...]) -> list[tuple]:
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval
        from monai.utils import ensure_tuple_rep

        # the inferer's own window placement (sliding_window_inference computes it so)
        interval = _get_scan_interval(shape, roi, len(roi), ensure_tuple_rep(self.overlap, len(roi)))
        return [(slice(None),) + tuple(s) for s in dense_patch_slices(shape, roi, interval)]

    def prediction_passes(self, case: PreparedCase) -> int:
        """Forward passes of the whole-volume prediction: a sliding-window inferer's windows, or one."""
        return len(case.windows) * len(self.model.fold_weights) if self.roi else len(self.model.fold_weights)

    @torch.no_grad()
    def adaptation_windows(self, case: PreparedCase, count: int, forward) -> list[tuple]:
        count = max(0, min(count, MAX_ADAPT_WINDOWS, len(case.windows)))
        if count == 0:
            return []
        if count == len(case.windows) == 1:
            return list(case.windows)
        scores = []
        for slicer in case.windows:
            out = forward(self.window(case, slicer)).float()
            probs = torch.sigmoid(out) if self.model.activation == "sigmoid" else torch.softmax(out, 1)[:, 1:]
            scores.append(float(probs.sum()))
        order = sorted(range(len(case.windows)), key=lambda k: (-scores[k], k))
        return [case.windows[k] for k in order[:count]]

    @torch.no_grad()
    def predict(self, case: PreparedCase, weights: list[dict[str, torch.Tensor]] | None,
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The bundle's prediction of the whole volume with ``weights`` (None: as the network is); ``forward`` (windows in the
        engine's [0, 1]) replaces the plain network (e.g. a method normalising with batch statistics).
        Returns the label map (z, y, x) and the probabilities (class channels first, softmax: with the
        background) in the input's geometry."""
        network = self.model.network
        if weights is not None:
            network.load_state_dict(weights[0])
        if forward is None:
            network.eval()

            def call(x):
                return network(x)
        else:
            low = case.low.to(self.device).view(1, -1, *([1] * (case.data.ndim - 1)))
            high = case.high.to(self.device).view(1, -1, *([1] * (case.data.ndim - 1)))

            def call(x):
                return forward(((x - low) / torch.clamp(high - low, min=1e-6)).clamp(0.0, 1.0))
        inputs = case.data[None].to(self.device)
        logits = self.inferer(inputs, call)
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        probs = torch.sigmoid(logits) if self.model.activation == "sigmoid" else torch.softmax(logits, 1)
        from monai.data import MetaTensor

        pred = MetaTensor(probs[0].float().cpu(), meta=dict(case.data.meta))  # the affine is in the meta
        restored = self.invert({"pred": pred, self.model.image_key: case.data})["pred"]
        probabilities = np.ascontiguousarray(np.transpose(np.asarray(restored.cpu()), (0, 3, 2, 1)), np.float32)
        if self.model.activation == "sigmoid":
            segmentation = (probabilities > 0.5).astype(np.uint8)  # one mask per channel
        else:
            segmentation = np.argmax(probabilities, 0).astype(np.uint8)
        return segmentation, probabilities

    def adapted_weights(self) -> list[dict[str, torch.Tensor]]:
        return [{k: v.detach().clone() for k, v in self.model.network.state_dict().items()}]
