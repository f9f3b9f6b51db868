"""nnU-Net v2 trained-model folders, read without running code from them.

The folder users have (the NNUNet and TotalSegmentator extensions keep models
so): ``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_final.pth`` (or
``checkpoint_best.pth``), one folder per trainer, plans and configuration
(``nnUNetTrainer__nnUNetPlans__3d_fullres``). Either that folder (every fold
found, an ensemble as nnU-Net predicts it) or one ``fold_N`` folder inside it
(that fold alone) is a model.

What is not taken from nnU-Net, and why:

* nnU-Net reads the checkpoint with ``torch.load(weights_only=False)``, which
  runs any code a tampered file carries. Here it is read with
  ``weights_only=True``; only numpy's scalar and dtype classes (the training
  log holds numpy numbers) and ``torch.device`` are allowed besides tensors.
* nnU-Net builds the network by ``pydoc.locate`` on the dotted names in
  ``plans.json`` (any importable callable) and through the trainer class.
  Here the names must be in :data:`NETWORKS` and :data:`OPERATIONS`, classes of
  ``dynamic_network_architectures`` and ``torch.nn``; a trainer that builds
  another network is caught by the strict load (every key and shape).
* The plans' preprocessor, reader, normalisation and resampling names must be
  nnU-Net's own (:data:`PREPROCESSORS` ...), so that nnU-Net's pipeline, which
  looks them up by name, can only find its own code.

Prediction is nnU-Net's own (:mod:`..adaptation.nnunet_pipeline`); this module
needs only torch and ``dynamic_network_architectures``.
"""

from __future__ import annotations

import importlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelFileError
from .anatomy import code_for
from .card import ModelCard, SegmentClass

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")

#: network classes a plans file may name -> (module, class)
NETWORKS = {
    "dynamic_network_architectures.architectures.unet.PlainConvUNet":
        ("dynamic_network_architectures.architectures.unet", "PlainConvUNet"),
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet":
        ("dynamic_network_architectures.architectures.unet", "ResidualEncoderUNet"),
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet":
        ("dynamic_network_architectures.architectures.unet", "ResidualEncoderUNet"),
}
_NN = {name: getattr(nn, name) for name in (
    "Conv1d", "Conv2d", "Conv3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d",
    "BatchNorm2d", "BatchNorm3d", "GroupNorm", "LeakyReLU", "ReLU", "PReLU", "ELU", "GELU", "SiLU",
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d")}
_MODULE_OF = {"Conv": "conv", "Inst": "instancenorm", "Batc": "batchnorm", "Grou": "normalization",
              "Drop": "dropout"}
#: the operations (``conv_op``, ``norm_op``, ``nonlin``, ``dropout_op``) a plans file may name, under
#: both spellings nnU-Net writes (``torch.nn.X`` and ``torch.nn.modules.<module>.X``)
OPERATIONS = {**{f"torch.nn.{k}": v for k, v in _NN.items()},
              **{f"torch.nn.modules.{_MODULE_OF.get(k[:4], 'activation')}.{k}": v for k, v in _NN.items()}}
PREPROCESSORS = ("DefaultPreprocessor",)
# Both read a NIfTI into the voxel order SimpleITK gives (z, y, x) with the spacing reversed, which is
# how GraTaSegmenter reads every volume; reorienting readers would need the same reorientation here.
READERS = ("SimpleITKIO", "NibabelIO")
NORMALISATIONS = ("CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                  "RGBTo01Normalization")
RESAMPLINGS = ("resample_data_or_seg_to_shape", "resample_torch_fornnunet", "no_resampling_hack")
ARCH_KEYS_FROM_PLANS = ("conv_op", "norm_op", "dropout_op", "nonlin")

PALETTE = ((0.87, 0.44, 0.36), (0.35, 0.62, 0.85), (0.55, 0.78, 0.35), (0.93, 0.75, 0.30), (0.67, 0.47, 0.80),
           (0.30, 0.75, 0.73), (0.90, 0.55, 0.70), (0.60, 0.60, 0.60))


@dataclass
class NnUNetModel:
    """An nnU-Net model folder as read: the network with the first fold's weights, every fold's
    weights, and what nnU-Net's pipeline needs (plans, dataset, configuration, trainer, mirroring)."""

    folder: Path
    plans: dict[str, Any]
    dataset: dict[str, Any]
    configuration: str
    trainer: str
    folds: list[str]
    checkpoint: str
    network: nn.Module
    fold_weights: list[dict[str, torch.Tensor]]
    mirror_axes: tuple[int, ...] | None
    card: ModelCard
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return resolved_configuration(self.plans, self.configuration)


def is_nnunet_folder(path: Path) -> bool:
    from ..model_folders import NNUNET, kind

    return kind(path) == NNUNET


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path.parent.name} has no {path.name}; an nnU-Net model folder holds dataset.json, "
                             f"plans.json and fold_N/checkpoint_final.pth") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{what} {path} is not readable JSON ({exc}); copy the model folder again") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{what} {path} is not a JSON object; copy the model folder again")
    return data


def resolved_configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    """A configuration of the plans with ``inherits_from`` resolved, as nnU-Net resolves it."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        known = ", ".join(configurations) if isinstance(configurations, dict) else "none"
        raise ModelFileError(f"plans.json has no configuration {name!r} (it has: {known}); the folder and its "
                             f"plans do not belong together")
    config, seen = dict(configurations[name]), {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise ModelFileError(f"plans.json: configuration {name!r} inherits from {parent!r}, which is missing "
                                 f"or circular")
        seen.add(parent)
        config = {**configurations[parent], **config}
    return config


def _checkpoint_globals() -> list:
    """What an nnU-Net checkpoint pickles besides tensors: numpy scalars (the training log), their
    dtypes, and torch.device (the trainer's init arguments). Nothing that can run code."""
    allowed: list = [np.dtype, torch.device]
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed += [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    for name in dir(np.dtypes):
        value = getattr(np.dtypes, name)
        if isinstance(value, type) and name.endswith("DType"):
            allowed.append(value)
    return allowed


def read_checkpoint(path: Path) -> dict[str, Any]:
    """An nnU-Net checkpoint as a dict, read with ``weights_only=True``."""
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        from ..adaptation.methods import _load_failure

        raise ModelFileError(f"{path.parent.name}/{path.name} was not loaded: {_load_failure(exc)}. Unpickling "
                             f"it could run code; use the checkpoint as nnU-Net wrote it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ModelFileError(f"{path.parent.name}/{path.name} is not a readable checkpoint "
                             f"({' '.join(str(exc).split())[:200]}); copy the model folder again") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("network_weights"), dict):
        raise ModelFileError(f"{path.parent.name}/{path.name} is not an nnU-Net checkpoint (no network_weights)")
    weights = obj["network_weights"]
    if not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelFileError(f"{path.parent.name}/{path.name}: network_weights holds something other than tensors")
    return obj


def _locate_network(name: str) -> type:
    if name not in NETWORKS:
        raise ModelFileError(f"plans.json names the network {name!r}, which GraTaSegmenter does not build (it "
                             f"builds {', '.join(n.rsplit('.', 1)[1] for n in NETWORKS)}); the model was not loaded")
    module, cls = NETWORKS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        raise ModelFileError("nnU-Net models need the package dynamic-network-architectures; install "
                             "GraTaSegmenter's nnU-Net requirements (requirements/nnunet*.txt)") from None


def build_network(config: dict[str, Any], input_channels: int, output_channels: int) -> nn.Module:
    """The network of a configuration, as nnU-Net builds it from the plans (without deep
    supervision, as nnU-Net predicts), from allow-listed classes only."""
    arch = config.get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("arch_kwargs"), dict):
        raise ModelFileError("plans.json describes its network in an older format (no 'architecture'); "
                             "re-plan it with nnU-Net v2.2 or newer")
    network = _locate_network(arch.get("network_class_name", ""))
    kwargs = dict(arch["arch_kwargs"])
    for key in arch.get("_kw_requires_import", ARCH_KEYS_FROM_PLANS):
        value = kwargs.get(key)
        if value is None:
            continue
        if value not in OPERATIONS:
            raise ModelFileError(f"plans.json: {key} = {value!r} is not an operation GraTaSegmenter builds "
                                 f"(torch.nn convolutions, norms, activations, dropout); the model was not loaded")
        kwargs[key] = OPERATIONS[value]
    if "deep_supervision" in kwargs:
        kwargs.pop("deep_supervision")
    try:
        return network(input_channels=input_channels, num_classes=output_channels, deep_supervision=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise ModelFileError(f"plans.json's network arguments do not build a {network.__name__} ({exc})") from None


def _labels(dataset: dict[str, Any]) -> list[tuple[str, int]]:
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelFileError("dataset.json has no labels; the model folder is incomplete")
    try:  # nnU-Net's "ignore" label marks unannotated voxels in training; the network has no output for it
        pairs = sorted(((str(k), int(v)) for k, v in labels.items() if k != "ignore"), key=lambda kv: kv[1])
    except (TypeError, ValueError):
        raise ModelFileError("dataset.json: label values must be whole numbers") from None
    values = [v for _, v in pairs]
    if values != list(range(len(values))):
        raise ModelFileError(f"dataset.json: labels must be 0, 1, 2, ... without gaps (nnU-Net's rule); got {values}")
    if len(values) > 256:
        raise ModelFileError("dataset.json has more than 255 labels; labelmaps here are 8-bit")
    return pairs


def regions(dataset: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]] | None:
    """A region-based model's regions as nnU-Net reads them (labels given as lists, background
    excluded, in dataset.json's order), or None for a model of plain labels."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not any(isinstance(v, (list, tuple)) for v in labels.values()):
        return None
    found = []
    try:
        for name, value in labels.items():
            members = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
            if name != "ignore" and set(members) != {0}:  # as nnU-Net's LabelManager reads them
                found.append((str(name), members))
    except (TypeError, ValueError):
        raise ModelFileError("dataset.json: region labels must be whole numbers or lists of them") from None
    order = dataset.get("regions_class_order")
    if not isinstance(order, list) or len(order) != len(found) or not all(isinstance(v, int) and 0 < v < 256
                                                                           for v in order):
        raise ModelFileError(f"dataset.json lists {len(found)} regions but its regions_class_order is {order!r} "
                             f"(one label from 1 to 255 per region, as nnU-Net needs); the folder is incomplete")
    if not found or any(0 in members for _, members in found):
        raise ModelFileError("dataset.json: a region may not contain the background label 0")
    return found


def _classes(dataset: dict[str, Any]) -> tuple[SegmentClass, ...]:
    """The segments: one per label, or one per region (channel = the region's sigmoid output; label =
    the value nnU-Net's labelmap gives it, ``regions_class_order``)."""
    found = regions(dataset)
    if found is not None:
        named = [(name, channel, label) for channel, ((name, _), label)
                 in enumerate(zip(found, dataset["regions_class_order"]))]
    else:
        named = [(name, value, value) for name, value in _labels(dataset)[1:]]
    classes = []
    for k, (name, channel, label) in enumerate(named):
        category, type_ = code_for(name)
        classes.append(SegmentClass(name=name.replace("_", " "), channel=channel, label=label,
                                    color=PALETTE[k % len(PALETTE)], category=category, type=type_))
    return tuple(classes)


def _check_plans(plans: dict[str, Any], config: dict[str, Any], channels: int) -> None:
    reader = plans.get("image_reader_writer")
    if reader not in READERS:
        raise ModelFileError(f"plans.json: the model was trained on images read by {reader!r}; GraTaSegmenter "
                             f"reads volumes as {' or '.join(READERS)} do, so it cannot feed this model the same voxels")
    problems = []
    if config.get("preprocessor_name") not in PREPROCESSORS:
        problems.append(f"preprocessor {config.get('preprocessor_name')!r}")
    schemes = config.get("normalization_schemes") or []
    problems += [f"normalisation {s!r}" for s in schemes if s not in NORMALISATIONS]
    for key in ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities"):
        if config.get(key) not in RESAMPLINGS:
            problems.append(f"{key} {config.get(key)!r}")
    if problems:
        raise ModelFileError("plans.json names code that is not nnU-Net's own: " + ", ".join(problems)
                             + "; the model was not loaded")
    if len(schemes) != channels:
        raise ModelFileError(f"plans.json normalises {len(schemes)} channel(s), dataset.json lists {channels}; the "
                             f"folder and its plans do not belong together")
    if config.get("previous_stage") or config.get("previous_stage_name"):
        raise ModelFileError("this configuration is the second stage of a cascade (it needs the first stage's "
                             "segmentation); use the 3d_fullres or 3d_lowres configuration instead")


def _strict_load(net: nn.Module, state: dict[str, torch.Tensor], where: str, trainer: str) -> None:
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        shown = "; ".join(f"{label}: {', '.join(keys[:4])}" + (f" ... ({len(keys)})" if len(keys) > 4 else "")
                          for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                          if keys)
        raise ModelFileError(f"{where}: the weights do not fit the network the plans describe ({shown}). The "
                             f"trainer {trainer!r} may build another network than its plans say; such models are "
                             f"not supported")
    bad = sorted(k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all()))
    if bad:
        raise ModelFileError(f"{where} holds NaN or infinite weights ({', '.join(bad[:4])}); the file is damaged")
    net.load_state_dict(state, strict=True)


def _folds(folder: Path) -> tuple[Path, list[Path]]:
    """(model folder, fold folders to use) for a model folder or one fold folder."""
    if folder.name.startswith("fold_") and not (folder / "plans.json").is_file():
        return folder.parent, [folder]
    folds = sorted(p for p in folder.glob("fold_*") if p.is_dir())
    if not folds:
        raise ModelFileError(f"{folder.name} has no fold_N folder with a checkpoint; the nnU-Net model is incomplete")
    usable = [p for p in folds if p.name != "fold_all"] or folds
    return folder, usable


def _checkpoint_in(fold: Path) -> Path:
    for name in CHECKPOINTS:
        if (fold / name).is_file():
            return fold / name
    raise ModelFileError(f"{fold.parent.name}/{fold.name} has neither {' nor '.join(CHECKPOINTS)}; training did not "
                         f"finish or the copy is incomplete")


def load_nnunet(path: str | Path, device: str | torch.device = "cpu") -> NnUNetModel:
    """Read an nnU-Net v2 model folder (or one of its fold folders) safely; see the module docstring."""
    path = Path(path)
    folder, fold_dirs = _folds(path)
    dataset = _read_json(folder / "dataset.json", "dataset.json")
    plans = _read_json(folder / "plans.json", "plans.json")
    checkpoints = [_checkpoint_in(f) for f in fold_dirs]
    first = read_checkpoint(checkpoints[0])
    init = first.get("init_args") if isinstance(first.get("init_args"), dict) else {}
    configuration = init.get("configuration") or folder.name.rsplit("__", 1)[-1]
    trainer = str(first.get("trainer_name") or folder.name.split("__", 1)[0])
    config = resolved_configuration(plans, configuration)
    channels = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise ModelFileError("dataset.json has no channel_names; the model folder is incomplete")
    _check_plans(plans, config, len(channels))
    classes = _classes(dataset)
    region_based = regions(dataset) is not None
    net = build_network(config, len(channels), len(classes) + (0 if region_based else 1))
    weights = [first["network_weights"]] + [read_checkpoint(c)["network_weights"] for c in checkpoints[1:]]
    for ckpt, state in zip(checkpoints, weights):
        _strict_load(net, state, f"{ckpt.parent.name}/{ckpt.name}", trainer)
    net.load_state_dict(weights[0])
    mirror = first.get("inference_allowed_mirroring_axes")
    mirror_axes = tuple(int(a) for a in mirror) if mirror is not None else None
    patch = [int(v) for v in config["patch_size"]]
    card = ModelCard(
        name=f"nnU-Net {plans.get('dataset_name', folder.parent.name)} {configuration}",
        architecture="nnunet",
        arguments={"network": config["architecture"]["network_class_name"].rsplit(".", 1)[1],
                   "configuration": configuration, "trainer": trainer, "plans": plans.get("plans_name", ""),
                   "folds": [f.name.removeprefix("fold_") for f in fold_dirs]},
        input_channels=len(channels),
        spatial_dims=len(patch),
        output="sigmoid" if region_based else "softmax",
        classes=classes,
        input_size=tuple(patch),
        normalisation="model",
        description=f"nnU-Net v2 model ({trainer}, {configuration}); channels: "
                    + ", ".join(str(v) for v in channels.values()),
        provenance={"source": str(folder), "checkpoint": checkpoints[0].name},
    )
    net.card = card
    return NnUNetModel(folder=folder, plans=plans, dataset=dataset, configuration=configuration, trainer=trainer,
                       folds=[f.name.removeprefix("fold_") for f in fold_dirs], checkpoint=checkpoints[0].name,
                       network=net.to(device).eval(), fold_weights=weights, mirror_axes=mirror_axes, card=card)


def nnunet_summary(model: NnUNetModel) -> str:
    """What nnU-Net does with a volume for this model, for people (``grata-segmenter info``)."""
    config = model.config
    arch = config["architecture"]["arch_kwargs"]
    norm = str(arch.get("norm_op", "")).rsplit(".", 1)[-1]
    affine = (arch.get("norm_op_kwargs") or {}).get("affine")
    spacing = " x ".join(f"{s:g}" for s in config["spacing"])
    mirror = ("none" if model.mirror_axes == () else "all axes" if model.mirror_axes is None
              else ", ".join(map(str, model.mirror_axes)))
    lines = [
        f"network: {config['architecture']['network_class_name'].rsplit('.', 1)[1]}, {arch.get('n_stages')} stages, "
        f"features {arch.get('features_per_stage')}, norm {norm}" + (" (affine)" if affine else ""),
        f"patch: {' x '.join(map(str, config['patch_size']))} voxels at {spacing} mm (z, y, x after nnU-Net's "
        f"transpose {model.plans.get('transpose_forward')})",
        "normalisation: " + ", ".join(config["normalization_schemes"]),
        f"mirroring at inference and in the consistency views: {mirror}",
        f"trainer: {model.trainer}; configuration: {model.configuration}; folds: {', '.join(model.folds)} "
        f"({model.checkpoint})",
    ]
    return "\n".join(lines)
