"""Adapt and segment: the pipeline behind ``grata-segmenter adapt`` (Slicer-free).

For each input image: read it, bring it to what the model card asks for
(channels, size, intensity normalisation), run the adaptation steps of the
chosen method, predict, resample the probabilities back to the input grid,
threshold them there, and write the results with the input's geometry into
the input's result folder (atomically, see :mod:`.outputs`).

How an image is fed to the network:

* a 2D model on a 2D image: one batch of one image;
* a 2D model on a volume: slice by slice along the card's ``slice_axis`` (else
  the through-plane axis), slices batched. Adaptation batches are drawn from the
  non-constant slices only (air padding and blank slices carry no information
  and would bias the batch statistics); every slice is still predicted,
  constant ones in batches of their own;
* a 3D model on a volume: the whole volume, resized to the card's input size
  (or zero-padded to the network's size multiple when the card has none).

:class:`Segmenter` is the reusable part: build it once (model, method,
device), then call :meth:`Segmenter.segment` on a :class:`~.imageio.LoadedImage`
(from Python, e.g. a Slicer module) or :meth:`Segmenter.run` on files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import cancel, choices, imageio, memory, outputs
from .choices import DEVICES, GRADIENT_METHODS, METHODS as METHOD_NAMES, MODES
from .errors import ConfigurationError, InputError
from .events import VERSION, EventSink, no_events
from .preprocessing import check_finite

#: pixel budget of one batch: 16 slices of 512 x 512
BATCH_PIXELS = 16 * 512 * 512
MAX_BATCH = 64


@dataclass
class Options:
    """The options of ``adapt`` (defaults as on the command line)."""

    model: str | None = None
    method: str = choices.DEFAULT_METHOD
    steps: int = choices.DEFAULT_STEPS
    lr: float = choices.DEFAULT_LR
    aux_loss: str = choices.DEFAULT_AUX_LOSS
    pseudo_loss: str = choices.DEFAULT_PSEUDO_LOSS
    mode: str = choices.DEFAULT_MODE
    device: str = choices.DEFAULT_DEVICE
    seed: int = choices.DEFAULT_SEED
    precision: str = choices.DEFAULT_PRECISION
    save_state: str | None = None
    load_state: str | None = None
    overwrite: bool = False
    probabilities: bool = False
    uncertainty: bool = False
    batch_size: int | None = None
    postprocess: bool = True  # the model card's anatomical rules (--no-postprocess turns them off)
    skip_existing: bool = False  # inputs whose result folder is complete are skipped (--skip-existing)

    def check(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ConfigurationError(f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        if self.mode not in MODES:
            raise ConfigurationError(f"mode must be episodic or continual, not {self.mode!r}")
        if self.device not in DEVICES:
            raise ConfigurationError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ConfigurationError("--steps must be 0 or more")
        if self.skip_existing and self.overwrite:
            raise ConfigurationError("--skip-existing and --overwrite contradict each other; choose one")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigurationError("--batch-size must be at least 1")
        if (self.save_state or self.load_state) and self.method not in GRADIENT_METHODS:
            raise ConfigurationError(f"method {self.method!r} has no adapted state to save or load; "
                                     f"use --method grata or tent, or drop --save-state/--load-state")
        if self.load_state and not Path(self.load_state).is_file():
            raise ConfigurationError(f"the adaptation state {self.load_state} does not exist; check the path "
                                     f"or drop --load-state")

    @property
    def steps_per_input(self) -> int:
        """Methods without gradient steps (none, bn) take no adaptation steps."""
        return self.steps if self.method in GRADIENT_METHODS else 0


def resolve_device(choice: str = "auto") -> tuple[torch.device, str]:
    """The torch device for ``auto|cuda|mps|cpu`` and a description for people."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError("--device cuda was asked for but no CUDA GPU is usable; use --device auto or cpu")
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return torch.device("cuda", index), f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if choice == "mps":
        if not mps_ok:
            raise ConfigurationError("--device mps was asked for but Apple's MPS is not available; use --device "
                                     "auto or cpu")
        return torch.device("mps"), "mps"
    if choice != "cpu":
        raise ConfigurationError(f"device must be one of {', '.join(DEVICES)}, not {choice!r}")
    return torch.device("cpu"), "cpu"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def match_channels(loaded: imageio.LoadedImage, want: int, log: Callable[[str], None]) -> np.ndarray:
    """The image's channels as the model wants them (see docs/cli.md)."""
    array, have, name = loaded.array, loaded.channels, loaded.path.name
    if loaded.kind == "picture" and have in (2, 4):  # grey + alpha, RGBA
        array, have = array[:-1], have - 1
        log(f"{name}: alpha channel dropped")
    if have == want:
        return array
    if have == 1 and want == 3:
        log(f"{name}: grey image, repeated to 3 channels for the model")
        return np.repeat(array, 3, axis=0)
    raise InputError(f"the model expects {_plural(want, 'channel')}, the image has {have}; choose a "
                     f"{'colour (RGB)' if want == 3 else 'single-channel' if want == 1 else f'{want}-channel'} "
                     f"image or another model")


MIN_SIDE = 4  # pixels: below this an image holds nothing to segment
WARN_FRACTION = 8  # an image side below 1/8 of the model's input size is resized up a lot: say so


def check_size(loaded: imageio.LoadedImage, card, slice_axis: int | None, log: Callable[[str], None]) -> None:
    """Refuse a degenerate image (a 1 x 1 picture is not an eye) and warn about one far below
    the model's input size (it is resized up to it, and the result is mostly guesswork)."""
    spatial = loaded.array.shape[1:]
    if card.spatial_dims == 2:
        plane = [n for axis, n in enumerate(spatial) if axis != slice_axis] if len(spatial) == 3 else list(spatial)
    else:
        plane = sorted(spatial)[-2:]  # a thin volume may have few slices
    size = " x ".join(map(str, reversed(spatial)))
    want = " x ".join(map(str, card.input_size)) if card.input_size else None
    if min(plane) < MIN_SIDE:
        raise InputError(f"{loaded.path.name} is {size} pixels, too small to segment"
                         + (f" (the model expects about {want})" if want else "") + "; choose the full-size image")
    if card.input_size and min(plane) * WARN_FRACTION < min(card.input_size):
        log(f"{loaded.path.name} is {size} pixels, far below the model's {want}: it is resized up, and the "
            f"result is unreliable; prefer the full-size image")


class _Feeder:
    """Cuts an image into network batches and maps predictions back.

    ``items`` is ``(N, C, *spatial)``: the slices of a volume, or the image or
    volume itself (N = 1).
    """

    def __init__(self, array: np.ndarray, card, slice_axis: int | None, size_multiple: int):
        if slice_axis is not None:
            self.items = np.moveaxis(array, 1 + slice_axis, 0)
        else:
            self.items = array[None]
        self.spatial = tuple(int(s) for s in self.items.shape[2:])
        self.card = card
        flat = self.items.reshape(self.items.shape[0], -1)
        self.lo, self.hi = flat.min(axis=1), flat.max(axis=1)
        self.constant = self.hi <= self.lo
        if card.input_size is not None:
            self.net_size = tuple(int(s) for s in card.input_size)
            self.pad = None
        else:
            self.net_size = tuple(-(-s // size_multiple) * size_multiple for s in self.spatial)
            self.pad = self.net_size != self.spatial
        self.mode = "bilinear" if len(self.spatial) == 2 else "trilinear"

    def __len__(self) -> int:
        return self.items.shape[0]

    def batch(self, index: Sequence[int]) -> torch.Tensor:
        raw = np.asarray(self.items[np.asarray(index)], dtype=np.float32)
        if self.card.normalisation == "window":
            low, high = self.card.window
            x = np.clip((raw - low) / (high - low), 0.0, 1.0)
        else:
            shape = (-1,) + (1,) * (raw.ndim - 1)
            lo, hi = self.lo[index].reshape(shape), self.hi[index].reshape(shape)
            scale = np.where(hi > lo, 1.0 / np.where(hi > lo, hi - lo, 1.0), 0.0).astype(np.float32)
            x = (raw - lo) * scale
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.card.input_size is not None and self.net_size != self.spatial:
            down = any(n < s for n, s in zip(self.net_size, self.spatial))
            t = F.interpolate(t, size=self.net_size, mode=self.mode, align_corners=False,
                              antialias=down and self.mode == "bilinear").clamp_(0.0, 1.0)
        elif self.pad:
            pads = []
            for n, s in zip(reversed(self.net_size), reversed(self.spatial)):
                pads += [0, n - s]
            t = F.pad(t, pads)
        return t

    def restore(self, probs: torch.Tensor) -> torch.Tensor:
        """Network-resolution probabilities back to the item's grid."""
        if self.card.input_size is not None and self.net_size != self.spatial:
            return F.interpolate(probs, size=self.spatial, mode=self.mode, align_corners=False)
        if self.pad:
            return probs[(Ellipsis,) + tuple(slice(0, s) for s in self.spatial)]
        return probs


@dataclass
class Prediction:
    """The result of one image, on its own grid (numpy z, y, x order)."""

    masks: np.ndarray  # (K, *spatial) uint8, one binary mask per card class (overlaps allowed)
    labels: np.ndarray  # (*spatial) uint8
    probabilities: np.ndarray | None = None  # (K, *spatial) float32
    uncertainty: np.ndarray | None = None  # (*spatial) float32 in [0, 1]
    records: list[dict[str, Any]] = field(default_factory=list)
    postprocess: list[dict[str, Any]] | None = None  # what the card's rules did, None when not applied


def normalised_entropy(probs: torch.Tensor, output: str) -> torch.Tensor:
    """Per-pixel uncertainty in [0, 1]: sigmoid outputs the mean binary entropy (bits)
    of the channels, softmax outputs the entropy divided by log(channels)."""
    p = probs.clamp(1e-7, 1 - 1e-7)
    if output == "sigmoid":
        h = -(p * torch.log2(p) + (1 - p) * torch.log2(1 - p))
        return h.mean(1)
    return -(p * torch.log(p)).sum(1) / float(np.log(max(probs.shape[1], 2)))


class Segmenter:
    """A model, an adaptation method and a device, ready to segment images.

    ``emit`` receives the events of :mod:`.events` (``emit(name, **fields)``),
    ``log`` one-line remarks for people (stderr), ``progress`` switches the
    tqdm bars on stderr.
    """

    def __init__(self, options: Options, emit: EventSink = no_events, log: Callable[[str], None] | None = None,
                 progress: bool = False):
        from .adaptation import make_method
        from .models import default_model_path, load_model
        from .models.monai_bundle import is_monai_bundle, load_bundle
        from .models.nnunet import is_nnunet_folder, load_nnunet

        options.check()
        self.options = options
        self.emit = emit
        self.progress = progress
        self._log = log
        self.device, self.device_text = resolve_device(options.device)
        self.model_path = Path(options.model) if options.model else default_model_path()
        # nnU-Net's or the bundle's own preprocessing and prediction, for an nnU-Net folder or a MONAI bundle
        self.pipeline = None
        memory_format = "auto"
        if is_nnunet_folder(self.model_path):
            from .nnunet_pipeline import NnUNetPipeline

            folder = load_nnunet(self.model_path, self.device)
            if len(folder.folds) > 1 and options.method in GRADIENT_METHODS:
                raise ConfigurationError(
                    f"{self.model_path.name} is an ensemble of {len(folder.folds)} folds; adapting it would adapt "
                    f"each fold on its own. Choose one fold as the model (its fold_N folder, e.g. "
                    f"{self.model_path / ('fold_' + folder.folds[0])}), or --method none or bn for the ensemble")
            self.pipeline = NnUNetPipeline(folder, self.device)
            model = self.pipeline.module
            memory_format = "contiguous"  # nnU-Net's layout, so that --method none is its prediction bit for bit
        elif is_monai_bundle(self.model_path):
            from .monai_pipeline import MonaiPipeline

            self.pipeline = MonaiPipeline(load_bundle(self.model_path, self.device), self.device)
            model = self.pipeline.module
            memory_format = "contiguous"
        else:
            model = load_model(self.model_path, self.device)
        self.card = model.card
        self.model = model
        self.method = make_method(options.method, model, seed=options.seed, lr=options.lr,
                                  aux_loss=options.aux_loss, pseudo_loss=options.pseudo_loss,
                                  precision=options.precision, memory_format=memory_format)
        self.size_multiple = int(getattr(model, "size_multiple", 1))
        if options.load_state:
            self.method.load_state(options.load_state)
        self.global_step = 0
        self.total_steps = 0
        self._forward_warm = False  # whether a forward pass ran before the timed one (see _announce_cost)
        self.step_crop: tuple[int, ...] | None = None  # the steps' crop of the windows, where memory is short
        self.current_input: str | None = None  # the input being processed (for error reports)
        self.inputs: list[Path] = []  # of the current run, with what became of each (for the summary)
        self.kept: list[str] = []
        self.skipped: list[str] = []

    # -- small helpers -------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self._log is not None:
            self._log(message)
        else:
            from tqdm import tqdm

            tqdm.write(f"grata-segmenter: {message}", file=sys.stderr)

    def _batch_size(self, feeder: _Feeder) -> int:
        if len(feeder) == 1:
            return 1
        if self.options.batch_size:
            return min(self.options.batch_size, len(feeder))
        pixels = int(np.prod(feeder.net_size))
        return max(1, min(MAX_BATCH, len(feeder), BATCH_PIXELS // pixels))

    def _usable_channels(self, loaded: imageio.LoadedImage, what: str) -> np.ndarray:
        """Refuse a non-finite or constant input, bring its channels to the model's, and log what
        the reader warned about; shared by the built-in path and nnU-Net's."""
        check_finite(loaded.array, loaded.path.name)
        lo, hi = float(loaded.array.min()), float(loaded.array.max())
        if not hi > lo:
            raise InputError(f"{loaded.path.name} is constant (every value is {lo:g}); there is nothing to "
                             f"segment. Check that the right {what} was chosen")
        array = match_channels(loaded, self.card.input_channels, self.log)
        if loaded.notes:
            more = len(loaded.notes) - 3
            shown = "; ".join(loaded.notes[:3]) + (f" (and {more} more)" if more > 0 else "")
            self.log(f"{loaded.path.name}: the reader warned: {shown}")
        return array

    def _plan(self, loaded: imageio.LoadedImage) -> tuple[np.ndarray, int | None]:
        card = self.card
        if card.spatial_dims == 3 and loaded.dims == 2:
            raise InputError(f"{loaded.path.name} is a 2D image but the model is 3D; give a volume or a 2D model")
        array = self._usable_channels(loaded, "image")
        if loaded.kind == "picture":
            orientation = imageio.exif_orientation(loaded.path)
            if orientation:
                self.log(f"{loaded.path.name}: its EXIF orientation says '{orientation}'; it is segmented as "
                         f"stored (as ITK and Slicer read it), so the overlay may look turned against a photo viewer")
        slice_axis = None
        if card.spatial_dims == 2 and loaded.dims == 3:
            slice_axis = card.slice_axis if card.slice_axis is not None else imageio.through_plane_axis(loaded.image)
        check_size(loaded, card, slice_axis, self.log)
        return array, slice_axis

    def reset_for_input(self) -> None:
        """Episodic mode: back to the source model (or to the loaded state)."""
        if self.options.mode == "episodic":
            self.method.reset()
            if self.options.load_state:
                self.method.load_state(self.options.load_state)

    # -- one image -----------------------------------------------------------------------
    def segment(self, loaded: imageio.LoadedImage, input_index: int = 0) -> Prediction:
        """Adapt on one image (as the mode says) and predict it."""
        from tqdm import tqdm

        if self.pipeline is not None:
            return self._segment_with_pipeline(loaded, input_index)
        opts, card = self.options, self.card
        array, slice_axis = self._plan(loaded)
        feeder = _Feeder(array, card, slice_axis, self.size_multiple)
        batch = self._batch_size(feeder)
        valid = np.flatnonzero(~feeder.constant)
        constant = np.flatnonzero(feeder.constant)
        if not len(valid):
            raise InputError(f"every slice of {loaded.path.name} is constant; there is nothing to segment. "
                             f"Check that the right volume was chosen")
        steps = opts.steps_per_input
        order = [valid[i:i + batch] for i in range(0, len(valid), batch)]
        order += [constant[i:i + batch] for i in range(0, len(constant), batch)]
        if slice_axis is not None and len(constant):
            self.log(f"{loaded.path.name}: {len(constant)} of {len(feeder)} slices are constant; "
                     f"they are predicted but not used for adaptation")
        self.reset_for_input()
        bar = tqdm(total=steps + len(order), desc=imageio.stem_of(loaded.path)[:24], unit="batch",
                   file=sys.stderr, disable=not self.progress, leave=False, dynamic_ncols=True)
        records = []
        try:
            perm, cursor = None, 0
            for k in range(steps):
                if len(valid) <= batch:
                    index = valid
                else:
                    if perm is None or cursor + batch > len(perm):
                        perm = valid[torch.randperm(len(valid), generator=self.method.generator).numpy()]
                        cursor = 0
                    index, cursor = perm[cursor:cursor + batch], cursor + batch
                rec = self.method.step(feeder.batch(index)).to_dict()
                record = self._step_record(loaded, input_index, k, steps, rec)
                records.append(record)
                self.emit("step", **record)
                bar.set_postfix_str(f"cos {rec['cosine']:+.2f}" if rec["cosine"] is not None else "")
                bar.update(1)
            prediction = self._predict(feeder, order, bar)
        finally:
            bar.close()
        prediction.records = records
        if slice_axis is not None:
            prediction.masks = np.moveaxis(prediction.masks, 1, 1 + slice_axis)
            prediction.labels = np.moveaxis(prediction.labels, 0, slice_axis)
            if prediction.probabilities is not None:
                prediction.probabilities = np.moveaxis(prediction.probabilities, 1, 1 + slice_axis)
            if prediction.uncertainty is not None:
                prediction.uncertainty = np.moveaxis(prediction.uncertainty, 0, slice_axis)
        else:
            prediction.masks = prediction.masks[:, 0]
            prediction.labels = prediction.labels[0]
            if prediction.probabilities is not None:
                prediction.probabilities = prediction.probabilities[:, 0]
            if prediction.uncertainty is not None:
                prediction.uncertainty = prediction.uncertainty[0]
        if opts.postprocess and card.postprocess:
            self._postprocess(loaded, prediction, slice_axis, input_index)
        return prediction

    def _step_record(self, loaded: imageio.LoadedImage, input_index: int, k: int, steps: int, rec: dict) -> dict:
        self.global_step += 1
        return {"input_index": input_index, "input": str(loaded.path), "step": k + 1,
                "global_step": self.global_step, "total_steps": self.total_steps or steps,
                **{key: rec[key] for key in ("cosine", "lr", "aux_loss", "pseudo_loss", "loss", "seconds", "applied",
                                             "skipped")}}

    def _segment_with_pipeline(self, loaded: imageio.LoadedImage, input_index: int) -> Prediction:
        """An nnU-Net model or a MONAI bundle: the model's own preprocessing, the steps on its sliding
        windows, its own prediction with the adapted network (see :mod:`.nnunet_pipeline`,
        :mod:`.monai_pipeline`)."""
        from tqdm import tqdm

        from .nnunet_pipeline import NnUNetPipeline

        opts, card, pipeline = self.options, self.card, self.pipeline
        if loaded.dims != 3:
            raise InputError(f"{loaded.path.name} is a 2D image; {card.name} segments volumes (choose a CT or MR "
                             f"volume)")
        array = self._usable_channels(loaded, "volume")
        case = pipeline.prepare(array, loaded.image)
        pipeline.use_range(case)
        self.reset_for_input()
        steps = opts.steps_per_input
        bar = tqdm(total=steps + 1, desc=imageio.stem_of(loaded.path)[:24], unit="step", file=sys.stderr,
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        records = []
        try:
            self._announce_cost(loaded, input_index, case, steps)
            windows = pipeline.adaptation_windows(case, steps, self.method.predict) if steps else []
            if steps:
                crop = f", their centre {' x '.join(map(str, self.step_crop))}" if self.step_crop else ""
                self.log(f"{loaded.path.name}: adapting on {_plural(len(windows), 'window')} of "
                         f"{len(case.windows)} ({' x '.join(map(str, pipeline.patch))} voxels each{crop}), "
                         f"the ones with the most foreground")
            for k in range(steps):
                x = pipeline.window(case, windows[k % len(windows)])
                rec = self.method.step(memory.centre_crop(x, self.step_crop) if self.step_crop else x).to_dict()
                record = self._step_record(loaded, input_index, k, steps, rec)
                records.append(record)
                self.emit("step", **record)
                bar.set_postfix_str(f"cos {rec['cosine']:+.2f}" if rec["cosine"] is not None else "")
                bar.update(1)
            training = self.model.training
            with self.method._out_of_memory("predicting"):
                if isinstance(pipeline, NnUNetPipeline):  # instance norms: the weights are all that changes
                    weights = (pipeline.adapted_weights() if opts.method in GRADIENT_METHODS
                               else list(pipeline.model.fold_weights))
                    segmentation, probabilities = pipeline.predict(case, weights)
                elif opts.method == "none":  # the bundle's own network, running statistics and all
                    segmentation, probabilities = pipeline.predict(case, list(pipeline.model.fold_weights))
                else:  # batch statistics (bn and the gradient methods) as the method normalises
                    segmentation, probabilities = pipeline.predict(case, None, forward=self.method.predict)
            self.model.train(training)
            bar.update(1)
        finally:
            bar.close()
        classes = card.classes
        if card.output == "sigmoid":  # one mask per channel, overlaps allowed
            masks = np.stack([segmentation[c.channel] for c in classes]).astype(np.uint8)
        else:
            masks = np.stack([(segmentation == c.label) for c in classes]).astype(np.uint8)
        prediction = Prediction(masks=masks, labels=imageio.labels_from_masks(masks, classes), records=records)
        if opts.probabilities:
            prediction.probabilities = np.ascontiguousarray(probabilities[[c.channel for c in classes]])
        if opts.uncertainty:
            prediction.uncertainty = normalised_entropy(torch.from_numpy(probabilities)[None], card.output)[0].numpy()
        return prediction

    def _announce_cost(self, loaded: imageio.LoadedImage, input_index: int, case, steps: int) -> None:
        """Time one forward pass of a window and say how long the volume will take (:mod:`.cost`)."""
        from . import cost
        from .adaptation.views import consistency_views

        pipeline = self.pipeline
        first = pipeline.window(case, case.windows[0])
        self.step_crop = None
        if steps and self.options.method in GRADIENT_METHODS:
            self._check_step_fits(first)
        with self.method._out_of_memory("timing a forward pass"):
            if self.device.type != "cpu" and not self._forward_warm:
                # a GPU's first pass pays one-time set-up (kernels loaded, cuDNN's algorithms chosen): on an
                # H200 1.76 s against 0.018 s for the next; on a CPU the first is within 10 % of the next
                self.method.predict(first)
                self._forward_warm = True
            forward_seconds = cost.timed_forward(self.method.predict, first)
            crop_seconds = None
            if self.step_crop:  # steps on a crop: timed apart (a CPU's time does not follow the voxels)
                crop = memory.centre_crop(first, self.step_crop)
                self.method.predict(crop)  # a new shape's first pass chooses its kernels
                crop_seconds = cost.timed_forward(self.method.predict, crop)
        context = getattr(self.method, "loss_context", None)
        views = len(consistency_views(context.spatial_dims, context.view_axes)) if context is not None else 0
        estimate = cost.Estimate(
            forward_seconds=forward_seconds, steps=steps, passes_per_step=cost.step_passes(self.options.method, views),
            selection_passes=len(case.windows) if steps and len(case.windows) > 1 else 0,
            prediction_passes=pipeline.prediction_passes(case), step_forward_seconds=crop_seconds)
        self.emit("estimate", input_index=input_index, input=str(loaded.path), seconds=estimate.seconds,
                  forward_seconds=forward_seconds, prediction_seconds=estimate.prediction_seconds,
                  device=self.device_text)
        self.log(f"{loaded.path.name}: {estimate.text()} on {self.device_text}")

    def _check_step_fits(self, window: torch.Tensor) -> None:
        """Refuse steps on windows like ``window`` whose memory (counted on the meta device,
        :mod:`.memory`) is not free now, before the first one, instead of running out of memory in it.
        Where a whole window's step does not fit but a crop of it does, the steps run on the largest
        such centre crop (``self.step_crop``; the prediction keeps the model's windows); on a GPU the
        consistency views per pass are the most that fit beside the step."""
        self.step_crop = None
        try:
            count = memory.activation_counter(self.method.model)
            saved = count(tuple(window.shape), window.dtype)[0]
        except Exception:  # noqa: BLE001 - an operation without a meta kernel: the step's own check speaks
            return
        method, available = self.options.method, memory.device_available_bytes(self.device)
        context = getattr(self.method, "loss_context", None)
        choose = self.device.type == "cuda" and context is not None  # on a CPU one view at a time is fastest
        # on a GPU the views are chosen below, for the window or crop the steps run on: one to begin with
        per_pass = context.batch_views if context is not None and not choose else 1
        shape = tuple(window.shape[2:])
        whole = memory.step_bytes(method, saved, per_pass)
        if available is not None and whole > available:
            kept: dict[tuple[int, ...], int] = {}  # per crop tried: the activations it keeps

            def need(crop: tuple[int, ...]) -> int | None:
                try:
                    kept[crop], out = count((*window.shape[:2], *crop), window.dtype)
                except Exception:  # noqa: BLE001 - a crop the network cannot take
                    return None
                return memory.step_bytes(method, kept[crop], per_pass) if tuple(out[2:]) == crop else None

            crop = memory.adaptation_crop(shape, self.pipeline.step_multiple(shape), need, available)
            if crop is None:
                memory.check_step_fits(whole, available, shape, self.device_text, cropped=True)  # refuses
            self.step_crop, saved = crop, kept[crop]
            self.log(f"a step on a whole {' x '.join(map(str, shape))} window needs about {whole / (1 << 20):.0f} MiB "
                     f"and {available / (1 << 20):.0f} MiB is free on {self.device_text}: the steps run on its "
                     f"centre {' x '.join(map(str, crop))} voxels (the prediction on whole windows)")
        if choose:
            from .adaptation.views import consistency_views

            views = len(consistency_views(context.spatial_dims, context.view_axes))
            per_pass = context.batch_views = memory.views_per_pass(views, available, method, saved,
                                                                   context.batch_views)
        need_bytes = memory.step_bytes(method, saved, per_pass)  # more views per pass hold more (memory.VIEW_PEAK)
        self.log(f"an adaptation step holds about {need_bytes / (1 << 20):.0f} MiB on {self.device_text}")
        if choose:
            self.log(f"the consistency views run {per_pass} per pass (of {views}), as the free "
                     f"memory of {self.device_text} allows")

    def _postprocess(self, loaded: imageio.LoadedImage, prediction: Prediction, slice_axis: int | None,
                     input_index: int) -> None:
        """The card's anatomical rules on the masks (probabilities and uncertainty stay as predicted)."""
        from . import postprocess

        spacing = tuple(reversed(loaded.image.GetSpacing()))  # numpy axis order
        masks, report = postprocess.apply(prediction.masks, self.card.classes, self.card.postprocess, spacing,
                                          slice_axis)
        prediction.masks = masks
        prediction.labels = imageio.labels_from_masks(masks, self.card.classes)
        prediction.postprocess = report.to_list()
        self.emit("postprocess", input_index=input_index, input=str(loaded.path), segments=prediction.postprocess)
        self.log(f"{loaded.path.name}: post-processing: {report.text()}")

    @torch.no_grad()
    def _predict(self, feeder: _Feeder, order: list[np.ndarray], bar) -> Prediction:
        card, opts = self.card, self.options
        n, spatial = len(feeder), feeder.spatial
        classes = card.classes
        masks = np.zeros((len(classes), n) + spatial, dtype=np.uint8)
        probs_out = np.zeros((len(classes), n) + spatial, dtype=np.float32) if opts.probabilities else None
        unc_out = np.zeros((n,) + spatial, dtype=np.float32) if opts.uncertainty else None
        channels = [c.channel for c in classes]
        for index in order:
            logits = self.method.predict(feeder.batch(index))
            probs = torch.sigmoid(logits) if card.output == "sigmoid" else torch.softmax(logits, 1)
            probs = feeder.restore(probs.float())
            if card.output == "sigmoid":
                chosen = probs[:, channels] > 0.5
            else:
                winner = probs.argmax(1, keepdim=True)
                chosen = winner == torch.tensor(channels, device=winner.device).view(1, -1, *([1] * len(spatial)))
            masks[:, index] = chosen.transpose(0, 1).to(torch.uint8).cpu().numpy()
            if probs_out is not None:
                probs_out[:, index] = probs[:, channels].transpose(0, 1).cpu().numpy()
            if unc_out is not None:
                unc_out[index] = normalised_entropy(probs, card.output).cpu().numpy()
            bar.update(1)
        return Prediction(masks=masks, labels=imageio.labels_from_masks(masks, classes), probabilities=probs_out, uncertainty=unc_out)

    # -- files ---------------------------------------------------------------------------
    def write_outputs(self, loaded: imageio.LoadedImage, prediction: Prediction, folder: outputs.StagedFolder,
                      names: dict[str, str]) -> dict[str, str]:
        """Write one result into the staged folder; returns the file names written by kind."""
        from .figures import plot_adaptation, write_overlay

        opts, card, ref = self.options, self.card, loaded.image
        written = {}
        with outputs.disk_errors(folder.outdir):
            imageio.write_image(imageio.with_geometry(prediction.labels, ref), folder.path(names["labelmap"]))
            written["labelmap"] = names["labelmap"]
            imageio.write_seg_nrrd(folder.path(names["segmentation"]), prediction.masks, ref, card.classes)
            written["segmentation"] = names["segmentation"]
            outputs.write_jsonl(folder.path(names["steps"]), prediction.records)
            written["steps"] = names["steps"]
            plot_adaptation(prediction.records, folder.path(names["plot"]),
                            title=f"{loaded.path.name}: {opts.method}, {opts.mode}")
            written["plot"] = names["plot"]
            if loaded.dims == 2:
                write_overlay(folder.path(names["overlay"]), loaded.array, prediction.masks,
                              [c.color for c in card.classes])
                written["overlay"] = names["overlay"]
            if prediction.probabilities is not None:
                image = imageio.with_geometry(np.moveaxis(prediction.probabilities, 0, -1), ref, vector=True)
                imageio.write_image(image, folder.path(names["probabilities"]))
                written["probabilities"] = names["probabilities"]
            if prediction.uncertainty is not None:
                imageio.write_image(imageio.with_geometry(prediction.uncertainty, ref),
                                    folder.path(names["uncertainty"]))
                written["uncertainty"] = names["uncertainty"]
            if prediction.postprocess is not None:
                outputs.write_json(folder.path(names["postprocessing"]), prediction.postprocess)
                written["postprocessing"] = names["postprocessing"]
        return written

    def run(self, inputs: Sequence[str | Path], outdir: str | Path) -> list[dict[str, str]]:
        """Adapt and segment ``inputs`` in order, writing one result folder each.

        Emits ``start``, ``step`` and ``output`` events and returns the paths of
        each result (as in the ``output`` event); ``done`` and ``error`` are the
        caller's (it knows how the run ended).
        """
        opts = self.options
        outdir = Path(outdir).absolute()
        inputs = [Path(p) for p in inputs]
        targets = result_names(inputs)
        self.inputs, self.kept, self.skipped = inputs, [], []
        for stale in outputs.remove_stale_staging(outdir):
            self.log(f"removed {outdir / stale}, left by an earlier run that was killed")
        existing = {name for name in targets if opts.skip_existing and outputs.is_complete_result(outdir / name)}
        check_inputs_and_targets(inputs, targets, outdir, opts.overwrite, skip=existing)
        if opts.save_state:
            state = Path(opts.save_state).absolute()
            if state.is_dir():
                raise ConfigurationError(f"--save-state {state} is a folder; name the state file")
            check_writable_folder(state.parent, "the folder of --save-state", create=False)
        for path, name in zip(inputs, targets):  # from the headers: refuse what cannot fit before any work
            if name not in existing:
                memory.check_fits(path, len(self.card.classes), opts.probabilities, opts.uncertainty)
        steps = opts.steps_per_input
        self.total_steps = steps * len(inputs)
        self.global_step = 0
        self.emit("start", version=VERSION, inputs=[str(p) for p in inputs], output_dir=str(outdir),
                  model=str(self.model_path), model_name=self.card.name, method=opts.method, mode=opts.mode,
                  device=self.device_text, steps_per_input=steps, total_steps=self.total_steps)
        results = []
        for i, (path, name) in enumerate(zip(inputs, targets)):
            if name in existing:
                self.skipped.append(str(path))
                self.log(f"{path.name}: {outdir / name} holds a complete result already; skipped (--skip-existing)")
                continue
            self.current_input = str(path)
            loaded = imageio.read_image(path)
            prediction = self.segment(loaded, input_index=i)
            names = outputs.file_names(loaded.is_nifti)
            last = i == len(inputs) - 1
            state = Path(opts.save_state).absolute() if opts.save_state and last else None
            with outputs.StagedFolder(outdir, name, opts.overwrite) as folder:
                written = cancel.interruptible(self.write_outputs, loaded, prediction, folder, names)
                if state is not None:  # before the commit: a failure here leaves no folder behind
                    with outputs.disk_errors(state.parent):
                        self.method.save_state(state)
                with cancel.protected():  # the folder in place and its output event, or neither
                    final = folder.commit()
                    paths = {kind: str(final / filename) for kind, filename in written.items()}
                    if state is not None:
                        paths["state"] = str(state)
                    results.append(paths)
                    self.kept.append(str(path))
                    self.emit("output", input_index=i, input=str(path), paths=paths)
            self.current_input = None
        return results

    def summary(self) -> str | None:
        """After a run of several inputs that stopped: what was kept, what failed, what was not done."""
        if len(self.inputs) < 2:
            return None
        done = set(self.kept) | set(self.skipped)
        failed = self.current_input
        rest = [str(p) for p in self.inputs if str(p) not in done and str(p) != failed]
        parts = [f"{len(self.kept)} of {len(self.inputs)} results kept"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped as complete")
        if failed:
            parts.append(f"stopped at {Path(failed).name}")
        if rest:
            parts.append("not processed: " + ", ".join(Path(p).name for p in rest))
        advice = " Fix or remove the input it stopped at, then run again with --skip-existing to go on." \
            if failed or rest else ""
        return "; ".join(parts) + "." + advice


def result_names(inputs: Sequence[Path]) -> list[str]:
    """Result folder names: the input's stem, ``_2``, ``_3`` ... when stems repeat."""
    names, seen = [], {}
    for p in inputs:
        stem = imageio.stem_of(p) or "image"
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        names.append(stem if count == 1 else f"{stem}_{count}")
    return names


def check_inputs_and_targets(inputs: Sequence[Path], names: Sequence[str], outdir: Path, overwrite: bool,
                             skip: set[str] = frozenset()) -> None:
    """Fail before any work: missing or unsupported inputs, existing results, a result
    folder that would replace (or hold) an input."""
    if not inputs:
        raise ConfigurationError("no input given; name at least one image, volume or DICOM folder")
    for p in inputs:
        imageio.check_readable_path(p)
        if p.is_file() and imageio.suffix_of(p) not in imageio.SUPPORTED:
            raise InputError(f"{p.name}: {imageio.suffix_of(p) or 'files without a suffix'} is not a supported "
                             f"format; use PNG, JPEG, TIFF, BMP, NRRD, NIfTI, MHA/MHD or a DICOM series folder")
    resolved = [p.resolve() for p in inputs]
    out_resolved = outdir.resolve()
    for p in resolved:
        if p.is_dir() and (out_resolved == p or p in out_resolved.parents):
            raise ConfigurationError(f"the output folder {outdir} is inside the DICOM folder {p}, which would "
                                     f"change the input; choose an output folder outside it (-o)")
    for name in names:
        if name in skip:
            continue
        target = (outdir / name).resolve()
        for p in resolved:
            if p == target or target in p.parents:
                raise ConfigurationError(f"the result folder {target} would replace the input {p}; choose "
                                         f"another output folder (-o)")
        outputs.check_target(outdir, name, overwrite)
    if outdir.exists() and not outdir.is_dir():
        raise ConfigurationError(f"{outdir} is a file, not a folder; choose an output folder (-o)")
    check_writable_folder(outdir, "the output folder (-o)")


def check_writable_folder(folder: Path, what: str, create: bool = True) -> None:
    """Before any work: ``folder`` (or, when it is to be created, its nearest existing parent)
    must be a writable folder; a dangling link is named as such."""
    if folder.is_symlink() and not folder.exists():
        raise ConfigurationError(f"{what} {folder} is a link to {os.readlink(folder)}, which does not exist; "
                                 f"create the target or choose another folder")
    probe = folder
    if not create and not folder.is_dir():
        raise ConfigurationError(f"{what}: the folder {folder} does not exist; create it or choose another")
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigurationError(f"{what} {folder} cannot be written ({probe} is not a writable folder); "
                                 f"choose another folder")

