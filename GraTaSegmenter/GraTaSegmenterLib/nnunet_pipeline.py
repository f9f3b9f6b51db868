"""Adapting and predicting with an nnU-Net model the way nnU-Net predicts.

Faithfulness first: the volume goes through nnU-Net's own preprocessor
(transpose, crop to non-zero, the plans' normalisation with the data set's
intensity properties, resampling to the plans' spacing), and the whole volume
is predicted by nnU-Net's own ``nnUNetPredictor`` (sliding windows with
Gaussian weighting, the checkpoint's mirroring axes, resampling back, crop
reverted, transpose back), handed the network and the weights to use. With
``--method none`` the result is therefore nnU-Net's own prediction
(``Testing/test_nnunet.py`` holds it against ``nnUNetPredictor`` loading the
folder by itself).

Adaptation runs between the two, on nnU-Net's sliding windows of the
preprocessed volume: the windows the source network finds the most foreground
in (one pass over the windows before the first step), one window per step,
visited in that order and cycled when there are more steps than windows. The
engine's methods take images in [0, 1], so each window is scaled by the
preprocessed volume's range per channel and :class:`UnitInterval` scales it
back before the network: the network sees nnU-Net's values, the style
augmentation works on [0, 1] as it does for every model. nnU-Net predicts with
the adapted weights afterwards (its predictor reloads the weights it is given
before each prediction, so they are given explicitly).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigurationError, InputError
from .models.nnunet import NnUNetModel

#: at most this many windows take part in the adaptation of one volume
MAX_ADAPT_WINDOWS = 8


def _nnunet():
    try:
        from nnunetv2.inference import predict_from_raw_data as predict
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
    except ImportError as exc:
        raise ConfigurationError(f"nnU-Net models need nnunetv2, which is not installed ({exc}); install "
                                 f"GraTaSegmenter's nnU-Net requirements (requirements/README.md)") from None
    return predict.nnUNetPredictor, PlansManager, convert_predicted_logits_to_segmentation_with_correct_shape, \
        pad_nd_image


class UnitInterval(nn.Module):
    """``network(x * scale + shift)``: the engine's [0, 1] windows back in nnU-Net's intensities
    (per channel), and only the full-resolution output of a deep-supervision network."""

    def __init__(self, network: nn.Module, channels: int, card, mirror_axes):
        super().__init__()
        self.network = network
        self.card = card
        self.consistency_axes = mirror_axes
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    def set_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        self.scale.copy_(torch.clamp(high - low, min=1e-6))
        self.shift.copy_(low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        out = self.network(x * self.scale.view(shape).to(x.dtype) + self.shift.view(shape).to(x.dtype))
        return out[0] if isinstance(out, (list, tuple)) else out


@dataclass
class PreparedCase:
    """One volume after nnU-Net's preprocessing, with its sliding windows."""

    data: torch.Tensor  # (C, *spatial) preprocessed, as nnU-Net predicts it
    padded: torch.Tensor  # padded to at least one patch, as nnU-Net's sliding window pads it
    properties: dict[str, Any]
    windows: list[tuple]  # nnU-Net's slicers into ``padded``
    low: torch.Tensor  # per channel
    high: torch.Tensor


class WindowedPipeline:
    """What the nnU-Net and MONAI pipelines share: a window of a prepared case in [0, 1], and the
    range the model's :class:`UnitInterval` scales it back with (``self.module``, ``self.device``)."""

    def window(self, case: PreparedCase, slicer: tuple) -> torch.Tensor:
        """One sliding window as a (1, C, *patch) batch in [0, 1]."""
        x = case.padded[slicer][None].float()
        shape = (1, -1) + (1,) * (x.ndim - 2)
        low, high = case.low.view(shape), case.high.view(shape)
        return ((x - low) / torch.clamp(high - low, min=1e-6)).clamp_(0.0, 1.0)

    def use_range(self, case: PreparedCase) -> None:
        self.module.set_range(case.low.to(self.device), case.high.to(self.device))

    def step_multiple(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """What each axis of a crop of a ``shape`` window must be a multiple of for the network (its
        total stride): here the largest power of two dividing the window, which the windows of a
        strided network are made to be; a crop the network cannot take is skipped all the same."""
        return tuple(size & -size for size in shape)


class NnUNetPipeline(WindowedPipeline):
    """nnU-Net's preprocessing and prediction around the engine's adaptation steps."""

    def __init__(self, model: NnUNetModel, device: torch.device, tile_step_size: float = 0.5,
                 mirroring: bool = True):
        predictor_class, plans_manager_class, self._to_segmentation, self._pad = _nnunet()
        self.model = model
        self.device = device
        self.plans_manager = plans_manager_class(model.plans)
        self.configuration_manager = self.plans_manager.get_configuration(model.configuration)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a remark about CPUs on stdout
            self.predictor = predictor_class(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=mirroring,
                                             perform_everything_on_device=device.type == "cuda", device=device,
                                             verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        self.predictor.manual_initialization(model.network, self.plans_manager, self.configuration_manager,
                                             list(model.fold_weights), model.dataset, model.trainer,
                                             model.mirror_axes)
        self.module = UnitInterval(model.network, model.card.input_channels, model.card, model.mirror_axes).to(device)
        self.patch = tuple(int(v) for v in self.configuration_manager.patch_size)

    def step_multiple(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The network's total stride per axis, from the plans (a crop of the windows must be a multiple)."""
        total = [1] * len(shape)
        for stride in self.configuration_manager.pool_op_kernel_sizes:
            stride = list(stride) if isinstance(stride, (list, tuple)) else [stride] * len(shape)
            total = [t * int(s) for t, s in zip(total, stride)]
        return tuple(total)

    def prepare(self, array: np.ndarray, image) -> PreparedCase:
        """nnU-Net's preprocessing of a (C, z, y, x) volume (SimpleITK's voxel order) with the spacing of
        SimpleITK ``image`` (nnU-Net's SimpleITK reader takes nothing else from the geometry)."""
        spacing_zyx = tuple(reversed(image.GetSpacing()))
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        with contextlib.redirect_stdout(io.StringIO()):
            data, _, properties = preprocessor.run_case_npy(
                np.ascontiguousarray(array, dtype=np.float32), None, {"spacing": [float(s) for s in spacing_zyx]},
                self.plans_manager, self.configuration_manager, self.model.dataset)
        data = torch.from_numpy(np.ascontiguousarray(data))
        if not bool(torch.isfinite(data).all()):
            raise InputError("nnU-Net's normalisation of this volume gave NaN or infinite values (a constant "
                             "channel?); check that the right volume was chosen")
        padded, _ = self._pad(data, self.patch, "constant", {"value": 0}, True, None)
        windows = self.predictor._internal_get_sliding_window_slicers(padded.shape[1:])
        flat = padded.reshape(padded.shape[0], -1)
        return PreparedCase(data=data, padded=padded, properties=properties, windows=windows,
                            low=flat.min(1).values.float(), high=flat.max(1).values.float())

    @torch.no_grad()
    def adaptation_windows(self, case: PreparedCase, count: int, forward) -> list[tuple]:
        """The ``count`` windows with the most foreground probability under ``forward`` (the method's
        prediction before any step), most first; ties keep nnU-Net's window order."""
        count = max(0, min(count, MAX_ADAPT_WINDOWS, len(case.windows)))
        if count == 0:
            return []
        if count == len(case.windows) == 1:
            return list(case.windows)
        scores = []
        for slicer in case.windows:
            logits = forward(self.window(case, slicer)).float()
            if self.model.card.output == "sigmoid":  # a region-based model: every output is foreground
                scores.append(float(torch.sigmoid(logits).sum()))
            else:
                scores.append(float(torch.softmax(logits, 1)[:, 1:].sum()))
        order = sorted(range(len(case.windows)), key=lambda k: (-scores[k], k))
        return [case.windows[k] for k in order[:count]]

    def prediction_passes(self, case: PreparedCase) -> int:
        """Forward passes of the whole-volume prediction: every window, mirror and fold."""
        mirrors = 2 ** len(self.predictor.allowed_mirroring_axes or ()) if self.predictor.use_mirroring else 1
        return len(case.windows) * mirrors * len(self.model.fold_weights)

    @torch.no_grad()
    def predict(self, case: PreparedCase, weights: list[dict[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
        """nnU-Net's whole-volume prediction with ``weights`` (one dict per fold); returns its
        segmentation and probabilities (background first) on the input's grid. For a region-based
        model: one mask per region taken from nnU-Net's labelmap (the labels the region holds, as
        nnU-Net evaluates regions) and the regions' sigmoid probabilities."""
        self.predictor.list_of_parameters = weights
        logits = self.predictor.predict_logits_from_preprocessed_data(case.data).cpu()
        segmentation, probabilities = self._to_segmentation(
            logits, self.plans_manager, self.configuration_manager, self.predictor.label_manager, case.properties,
            return_probabilities=True)
        segmentation = np.asarray(segmentation)
        if self.predictor.label_manager.has_regions:
            segmentation = np.stack([np.isin(segmentation, region)
                                     for region in self.predictor.label_manager.foreground_regions]).astype(np.uint8)
        return segmentation, np.asarray(probabilities, dtype=np.float32)

    def adapted_weights(self) -> list[dict[str, torch.Tensor]]:
        """The network's current (adapted) weights, as the predictor takes them."""
        return [{k: v.detach().clone() for k, v in self.model.network.state_dict().items()}]
