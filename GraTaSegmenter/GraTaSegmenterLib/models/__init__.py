"""Networks and model files.

Two kinds of file load with :func:`load_model`:

* the project's own model file (``.safetensors``): weights plus a
  :class:`~.card.ModelCard` in the header. safetensors holds raw tensors and
  JSON only, so loading it cannot run code;
* a checkpoint of the GraTa authors' reference code as they distribute it (a
  plain ``state_dict`` of their ResUnet, e.g. ``REFUGE/last-Res_Unet.pth``),
  read with ``torch.load(weights_only=True)``, which refuses pickled objects
  other than tensors and containers instead of executing them. The network
  (ResNet-18/34/50 encoder, auxiliary heads) is recognised from the keys.

Every key must match: a missing or unexpected key is an error that lists
them, never a silently random weight.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelFileError
from .card import FILE_ARCHITECTURES, ModelCard, SegmentClass
from .fundus import FUNDUS_CLASSES, FUNDUS_POSTPROCESS
from .resunet import ResUnet, resunet_config_from_keys
from .unet import UNet

__all__ = ["ModelCard", "SegmentClass", "load_model", "save_model", "build_network",
           "default_model_path", "file_sha256", "reference_card"]

FILE_FORMAT = "grata-segmenter-model"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL_NAME = "fundus_unet_centreA.safetensors"


def default_model_path() -> Path:
    """The bundled source model (trained on phantom centre A)."""
    path = WEIGHTS_DIR / DEFAULT_MODEL_NAME
    if not path.is_file():
        raise ModelFileError(f"the bundled model {path} is missing; reinstall GraTaSegmenter")
    return path


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_network(card: ModelCard) -> nn.Module:
    """Instantiate the (untrained) network a card describes."""
    if card.architecture not in FILE_ARCHITECTURES:
        raise ModelFileError(f"a model file cannot hold a {card.architecture!r} network (an nnU-Net model is its "
                             f"folder, chosen as the model itself); the file is damaged or was written by hand")
    args = dict(card.arguments)
    try:
        if card.architecture == "resunet":
            net = ResUnet(**args)
        else:
            net = UNet(**args)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"the model card's arguments do not build a {card.architecture}: {exc}") from None
    problems = card_network_problems(card)
    if problems:
        raise ModelFileError("the model card does not match its network: " + "; ".join(problems)
                             + ". The file is damaged or was written for another network; export it again")
    return net


def card_network_problems(card: ModelCard) -> list[str]:
    """What the card says against what its network is (checked when a file is opened, so that a
    wrong card fails there with this message, not after the adaptation with an index error)."""
    args = card.arguments
    if card.architecture == "resunet":
        dims, channels_in, channels_out = 2, args.get("in_channels", 3), args.get("num_classes", 2)
    else:
        dims, channels_in, channels_out = (args.get("spatial_dims", 2), args.get("in_channels", 3),
                                           args.get("out_channels", 2))
    problems = []
    if card.spatial_dims != dims:
        problems.append(f"the card says {card.spatial_dims}D, the network is {dims}D")
    if card.input_channels != channels_in:
        problems.append(f"the card says {card.input_channels} input channels, the network takes {channels_in}")
    if card.out_channels > channels_out:
        problems.append(f"the card's classes need {card.out_channels} output channels, the network has "
                        f"{channels_out}")
    return problems


def reference_card(config: dict, source: str = "") -> ModelCard:
    """Card for an authors' reference ResUnet checkpoint (fundus disc/cup)."""
    if config["num_classes"] != 2:
        raise ModelFileError(f"a reference ResUnet checkpoint has 2 outputs (disc, cup), this one "
                             f"{config['num_classes']}; wrap it in a project model file with its own card")
    return ModelCard(
        name=f"GraTa reference ResUnet ({config['backbone']})",
        architecture="resunet",
        arguments=config,
        input_channels=config["in_channels"],
        spatial_dims=2,
        output="sigmoid",
        classes=FUNDUS_CLASSES,
        postprocess=FUNDUS_POSTPROCESS,
        input_size=(512, 512),
        normalisation="minmax",
        description="Optic disc and cup segmentation network of the GraTa authors' reference code.",
        provenance={"source": "GraTa reference checkpoint (github.com/Chen-Ziyang/GraTa)", "file": source},
    )


def _strict_load(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelFileError(f"{path.name} does not match the network it describes ("
                             + "; ".join(problems) + "). The file is incomplete or for another network.")
    _check_values(state, path)
    net.load_state_dict(state, strict=True)


def _check_values(state: dict[str, torch.Tensor], path: Path) -> None:
    """Weights a network can compute with: floating point, finite, variances not negative.
    A NaN weight would make every adaptation step 'skipped' and every mask empty."""
    integer = sorted(k for k, v in state.items() if not torch.is_floating_point(v)
                     and not k.endswith("num_batches_tracked"))
    nonfinite = sorted(k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all()))
    negative = sorted(k for k, v in state.items() if k.endswith("running_var") and torch.is_floating_point(v)
                      and bool((v < 0).any()))
    problems = []
    for label, keys in (("not floating point", integer), ("NaN or infinite values", nonfinite),
                        ("negative variances", negative)):
        if keys:
            problems.append(f"{label} in {', '.join(keys[:5])}" + (f" ... ({len(keys)} in all)" if len(keys) > 5 else ""))
    if problems:
        raise ModelFileError(f"{path.name} holds weights the network cannot use (" + "; ".join(problems)
                             + "). The file is damaged; download or export it again.")


def _read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path.name} contains Python objects other than weights; it was not loaded, because "
            f"unpickling it could run code. Use the original checkpoint or a .safetensors model file. "
            f"({str(exc).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelFileError(f"{path.name} is not a readable PyTorch checkpoint ({exc}); "
                             f"download it again") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path.name} is a PyTorch file but not a state dict of weights")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _read_safetensors(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path.name} is a damaged model file ({exc}); download or copy it again") from None
    if meta.get("format") != FILE_FORMAT or "card" not in meta:
        raise ModelFileError(f"{path.name} is a safetensors file without a GraTaSegmenter model card; "
                             f"save it with GraTaSegmenterLib.models.save_model")
    return ModelCard.from_json(meta["card"]), tensors


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < 100_000_000 and head[8:9] == b"{"


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model file into a network in eval mode, with its card as ``model.card``.

    Raises ModelFileError (with what to do) for a missing file, a file that is
    not a model, a tampered pickle, or weights that do not fit the network.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; check the path")
    with open(path, "rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head):
        card, state = _read_safetensors(path)
    elif head[:2] == b"PK" or head[:1] == b"\x80":
        state = _read_torch_checkpoint(path)
        try:
            config = resunet_config_from_keys(state)
        except ValueError as exc:
            raise ModelFileError(f"{path.name} is a PyTorch state dict but not of the reference ResUnet "
                                 f"({exc}); other networks need a .safetensors model file with a card") from None
        card = reference_card(config, source=path.name)
    else:
        raise ModelFileError(f"{path.name} is not a model file (neither a .safetensors model file nor a "
                             f"PyTorch checkpoint); choose the model file itself")
    net = build_network(card)
    _strict_load(net, state, path)
    net.card = card
    return net.to(device).eval()


def save_model(model: nn.Module, card: ModelCard, path: str | os.PathLike) -> Path:
    """Write weights and card to one ``.safetensors`` file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FILE_FORMAT, "card": card.to_json()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rule_text(rule) -> str:
    """'optic cup: inside optic disc, largest component, fill holes'."""
    parts = [f"inside {rule.inside}"] if rule.inside else []
    if rule.min_size:
        unit = "voxels" if rule.min_size_unit == "voxels" else "mm^2/mm^3"
        parts.append(f"components >= {rule.min_size:g} {unit}")
    parts += [name for flag, name in ((rule.largest_component, "largest component"), (rule.fill_holes, "fill holes"),
                                       (rule.per_slice, "per slice")) if flag]
    return f"{rule.segment}: " + ", ".join(parts or ["nothing"])


def card_summary(card: ModelCard) -> str:
    """A few human-readable lines about a model (for tooltips and `info`)."""
    lines = [card.name, card.description] if card.description else [card.name]
    size = "x".join(map(str, card.input_size)) if card.input_size else "any"
    lines.append(f"{card.architecture} {json.dumps(card.arguments, sort_keys=True)}")
    lines.append(f"{card.spatial_dims}D, {card.input_channels} channel(s), input {size}, "
                 f"{card.normalisation} normalisation, {card.output} output")
    lines.append("classes: " + ", ".join(f"{c.name} (label {c.label})" for c in card.classes))
    if card.postprocess:
        lines.append("post-processing: " + "; ".join(rule_text(r) for r in card.postprocess))
    for key, value in sorted(card.provenance.items()):
        lines.append(f"{key}: {value}")
    return "\n".join(line for line in lines if line)
