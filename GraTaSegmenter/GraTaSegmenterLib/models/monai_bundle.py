"""MONAI bundles, read as data: no expression evaluated, no import, no TorchScript.

A bundle as MONAI's model zoo ships it: ``configs/inference.json`` (or
``.yaml``), ``configs/metadata.json`` and ``models/model.pt``. MONAI's own
``ConfigParser`` evaluates every ``"$..."`` string as Python (``"$import os"``
lines included) and instantiates any importable ``_target_``; running a
downloaded bundle that way runs whatever it holds. Here the JSON (or YAML, by
``yaml.safe_load``) is only read, and only four entries are taken from it:

* ``network_def``: its ``_target_`` must be one of :data:`NETWORKS`, MONAI's
  segmentation networks, named plainly (``UNet``) or under ``monai.networks.nets``;
  its arguments must be literal values;
* ``preprocessing``: a ``Compose`` of the transforms in :data:`PREPROCESSING`
  (MONAI's intensity, orientation, spacing and cropping transforms), literal
  arguments; ``LoadImaged`` and ``EnsureChannelFirstd`` are what the engine's
  reader does and are skipped;
* ``inferer``: ``SlidingWindowInferer`` or ``SimpleInferer`` with literal arguments;
* ``postprocessing``: only whether ``Activationsd`` applies softmax or sigmoid
  (inversion, argmax or threshold follow); other transforms are named in the
  model's notes as not applied.

"Literal" means numbers, strings, booleans, null, lists and objects of them,
and ``"@name"`` references to other literal entries (resolved here, without
evaluation). A ``"$..."`` expression, a ``"%file#key"`` macro, a nested
``_target_`` or a ``_mode_`` is refused with the entry it was found in; so is
a bundle that has only ``models/model.ts`` (TorchScript is code). The
weights are read with ``torch.load(weights_only=True)`` and must fit the
network key for key.

Everything else in the config (imports, devices, data lists, trainers,
handlers) is never looked at: it is what a bundle needs to run itself, not
what is needed to rebuild its network and its preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelFileError
from ..model_folders import MONAI_CONFIGS as CONFIGS
from .anatomy import code_for
from .card import ModelCard, SegmentClass

WEIGHTS = "models/model.pt"
TORCHSCRIPT = "models/model.ts"

#: MONAI segmentation networks a bundle may name (classes of ``monai.networks.nets``)
NETWORKS = ("UNet", "BasicUNet", "BasicUNetPlusPlus", "AttentionUnet", "DynUNet", "SegResNet", "SegResNetDS",
            "UNETR", "SwinUNETR", "VNet", "HighResNet")
#: preprocessing transforms taken from the bundle (classes of ``monai.transforms``)
PREPROCESSING = ("Orientationd", "Spacingd", "ScaleIntensityRanged", "ScaleIntensityRangePercentilesd",
                 "ScaleIntensityd", "NormalizeIntensityd", "ThresholdIntensityd", "CropForegroundd",
                 "EnsureTyped", "CastToTyped", "ToTensord", "Identityd")
#: what the engine's reader already does (one volume, channel first)
SKIPPED = ("LoadImaged", "EnsureChannelFirstd", "AddChanneld")
INFERERS = ("SlidingWindowInferer", "SimpleInferer")
#: float32 as bundles write it for CastToTyped/EnsureTyped: matched as text, never evaluated (the
#: engine feeds float32 anyway, so the argument is dropped; any other dtype is refused as an expression)
DTYPES = ("$torch.float32", "$torch.float", "$np.float32", "$numpy.float32", "float32")
PALETTE = ((0.87, 0.44, 0.36), (0.35, 0.62, 0.85), (0.55, 0.78, 0.35), (0.93, 0.75, 0.30), (0.67, 0.47, 0.80),
           (0.30, 0.75, 0.73), (0.90, 0.55, 0.70), (0.60, 0.60, 0.60))


@dataclass
class MonaiBundle:
    """A bundle as read: the network with its weights, and the declarative parts of its config."""

    folder: Path
    network: nn.Module
    weights: dict
    target: str
    arguments: dict[str, Any]
    preprocessing: list[tuple[str, dict[str, Any]]]  # (transform class, keyword arguments)
    inferer: tuple[str, dict[str, Any]]
    activation: str  # "softmax" or "sigmoid"
    image_key: str
    card: ModelCard
    notes: list[str] = field(default_factory=list)

    @property
    def fold_weights(self) -> list[dict]:  # the pipelines' common name: one set of weights
        return [self.weights]

    @property
    def roi_size(self) -> tuple[int, ...] | None:
        roi = self.inferer[1].get("roi_size")
        return tuple(int(v) for v in roi) if roi is not None else None


def config_path(folder: Path) -> Path | None:
    for name in CONFIGS:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def is_monai_bundle(path: Path) -> bool:
    from ..model_folders import MONAI, kind

    return kind(path) == MONAI


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)  # the safe loader builds plain types only, no Python tags
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - JSON, YAML and decoding errors alike
        raise ModelFileError(f"{path.parent.parent.name}/{path.parent.name}/{path.name} is not readable "
                             f"({' '.join(str(exc).split())[:160]}); copy the bundle again") from None


class _Literal:
    """Resolves an entry of the config into plain values, refusing anything MONAI would evaluate."""

    def __init__(self, config: dict[str, Any]):
        self.config = config

    def refuse(self, where: str, value: Any, why: str) -> ModelFileError:
        shown = value if len(str(value)) <= 60 else str(value)[:57] + "..."
        return ModelFileError(f"the bundle's {where} is {shown!r}, {why}. GraTaSegmenter reads bundles without "
                              f"running code from them: only literal values and @references to them are taken. "
                              f"The bundle was not loaded")

    def lookup(self, ref: str, where: str) -> Any:
        node: Any = self.config
        for part in ref.replace("#", "::").split("::"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ModelFileError(f"the bundle's {where} refers to @{ref}, which the config does not have; "
                                     f"the bundle is incomplete")
        return node

    def value(self, value: Any, where: str, seen: tuple[str, ...] = (), targets: bool = False) -> Any:
        if isinstance(value, str):
            if value.startswith("$"):
                raise self.refuse(where, value, "a Python expression that MONAI would evaluate")
            if value.startswith("%"):
                raise self.refuse(where, value, "a macro that would read another file")
            if value.startswith("@"):
                ref = value[1:]
                if ref in seen:
                    raise ModelFileError(f"the bundle's {where}: @{ref} refers to itself; the config is damaged")
                return self.value(self.lookup(ref, where), f"{where} (@{ref})", seen + (ref,), targets)
            return value
        if isinstance(value, list):
            return [self.value(v, f"{where}[{i}]", seen, targets) for i, v in enumerate(value)]
        if isinstance(value, dict):
            special = sorted(k for k in value if str(k).startswith("_") and k not in ("_target_", "_desc_"))
            if special:
                raise self.refuse(f"{where}.{special[0]}", value[special[0]],
                                  "a directive of MONAI's config system (not plain data)")
            if "_target_" in value and not targets:
                raise self.refuse(f"{where}._target_", value["_target_"], "an object MONAI would build")
            return {str(k): self.value(v, f"{where}.{k}", seen) for k, v in value.items() if k != "_desc_"}
        if value is None or isinstance(value, (bool, int, float)):
            return value
        raise self.refuse(where, value, "not a plain value")

    def component(self, value: Any, where: str, allowed: tuple[str, ...], prefix: str) -> tuple[str, dict[str, Any]]:
        """(class name, literal keyword arguments) of a ``{"_target_": ...}`` entry."""
        node = self.value(value, where, targets=True)
        if not isinstance(node, dict) or "_target_" not in node:
            raise ModelFileError(f"the bundle's {where} is not an object with a _target_; the bundle was not loaded")
        target = str(node.pop("_target_"))
        name = target.removeprefix(prefix + ".") if target.startswith(prefix + ".") else target
        if name not in allowed:
            raise self.refuse(f"{where}._target_", target,
                              f"not one of the classes GraTaSegmenter builds ({', '.join(allowed)})")
        return name, node


def _transforms(parser: _Literal, config: dict[str, Any]) -> tuple[list, str]:
    entry = config.get("preprocessing")
    if entry is None:
        raise ModelFileError("the bundle's inference config has no 'preprocessing'; without it the network would "
                             "see other values than it was trained on")
    node = parser.lookup(entry[1:], "preprocessing") if isinstance(entry, str) and entry.startswith("@") else entry
    if not isinstance(node, dict) or node.get("_target_") not in ("Compose", "monai.transforms.Compose"):
        raise ModelFileError("the bundle's preprocessing is not a Compose of transforms; the bundle was not loaded")
    items = node.get("transforms")
    if isinstance(items, str) and items.startswith("@"):
        items = parser.lookup(items[1:], "preprocessing.transforms")
    if not isinstance(items, list) or not items:
        raise ModelFileError("the bundle's preprocessing lists no transforms; the bundle was not loaded")
    steps, image_key = [], None
    for i, item in enumerate(items):
        where = f"preprocessing.transforms[{i}]"
        if isinstance(item, str) and item.startswith("@"):
            item = parser.lookup(item[1:], where)
        target = str(item.get("_target_", "")) if isinstance(item, dict) else ""
        if target.removeprefix("monai.transforms.") in SKIPPED:
            keys = parser.value(item.get("keys", "image"), f"{where}.keys")
            image_key = image_key or (keys if isinstance(keys, str) else (list(keys) or ["image"])[0])
            continue
        if isinstance(item, dict) and isinstance(item.get("dtype"), str) and item["dtype"] in DTYPES:
            item = {k: v for k, v in item.items() if k != "dtype"}  # float32: what the engine feeds anyway
        steps.append(parser.component(item, where, PREPROCESSING, "monai.transforms"))
    return steps, image_key or "image"


def _activation(parser: _Literal, config: dict[str, Any], notes: list[str]) -> str:
    post = config.get("postprocessing")
    items = post.get("transforms") if isinstance(post, dict) else None
    activation = None
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        name = str(item.get("_target_", "")).removeprefix("monai.transforms.")
        if name == "Activationsd":
            if item.get("sigmoid") is True:
                activation = "sigmoid"
            elif item.get("softmax") is True:
                activation = "softmax"
        elif name not in ("Invertd", "AsDiscreted", "SaveImaged", "EnsureTyped", "CopyItemsd", "SqueezeDimd",
                          "ToNumpyd", "ToTensord"):
            notes.append(f"the bundle's postprocessing {name} is not applied")
    return activation or "softmax"


def _classes(metadata: dict[str, Any], out_channels: int, activation: str) -> tuple[SegmentClass, ...]:
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    pred = next(iter(outputs.values()), {}) if isinstance(outputs, dict) else {}
    names = {int(k): str(v) for k, v in (pred.get("channel_def") or {}).items() if str(k).isdigit()}
    first = 0 if activation == "sigmoid" else 1  # softmax: channel 0 is the background
    classes = []
    for channel in range(first, out_channels):
        name = names.get(channel, f"class {channel}")
        category, type_ = code_for(name)
        label = channel + 1 - first
        classes.append(SegmentClass(name=name.replace("_", " "), channel=channel, label=label,
                                    color=PALETTE[(label - 1) % len(PALETTE)], category=category, type=type_))
    return tuple(classes)


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import monai.networks.nets as nets

    try:
        return getattr(nets, name)(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any constructor complaint is the bundle's
        raise ModelFileError(f"the bundle's network_def does not build a {name} ({' '.join(str(exc).split())[:200]}); "
                             f"the bundle may be for another MONAI version") from None


def load_bundle(path: str | Path, device: str = "cpu") -> MonaiBundle:
    """Read a MONAI bundle folder safely; see the module docstring."""
    from . import _read_torch_checkpoint, _strict_load

    folder = Path(path)
    cfg_file = config_path(folder)
    if cfg_file is None:
        raise ModelFileError(f"{folder.name} has no configs/inference.json (or .yaml); choose the bundle's folder")
    config = _read(cfg_file)
    if not isinstance(config, dict):
        raise ModelFileError(f"{cfg_file.name} is not a config object; copy the bundle again")
    metadata = _read(folder / "configs" / "metadata.json") or {}
    if not isinstance(metadata, dict):
        metadata = {}
    parser, notes = _Literal(config), []
    if "network_def" not in config:
        raise ModelFileError(f"{cfg_file.name} has no network_def; the bundle was not loaded")
    target, arguments = parser.component(config["network_def"], "network_def", NETWORKS, "monai.networks.nets")
    preprocessing, image_key = _transforms(parser, config)
    if config.get("inferer") is not None:
        inferer = parser.component(config["inferer"], "inferer", INFERERS, "monai.inferers")
    else:
        inferer = ("SimpleInferer", {})
    activation = _activation(parser, config, notes)
    weights_file = folder / WEIGHTS
    if not weights_file.is_file():
        if (folder / TORCHSCRIPT).is_file():
            raise ModelFileError(f"{folder.name} holds its network only as TorchScript ({TORCHSCRIPT}), which is "
                                 f"code and is not run here; use the bundle's {WEIGHTS} (its weights)")
        raise ModelFileError(f"{folder.name} has no {WEIGHTS}; download the bundle's weights")
    network = _build(target, arguments)
    state = _read_torch_checkpoint(weights_file)
    _strict_load(network, state, weights_file)
    out_channels = int(arguments.get("out_channels", 0) or 0)
    if out_channels < 1:
        raise ModelFileError("the bundle's network_def has no out_channels; the bundle was not loaded")
    in_channels = int(arguments.get("in_channels", 1))
    dims = int(arguments.get("spatial_dims", 3))
    classes = _classes(metadata, out_channels, activation)
    if not classes:
        raise ModelFileError("the bundle's network has no output channel besides the background")
    roi = inferer[1].get("roi_size")
    card = ModelCard(
        name=f"MONAI {metadata.get('name') or folder.name} {metadata.get('version', '')}".strip(),
        architecture="monai",
        arguments={"network": target, **{k: v for k, v in arguments.items() if k in ("channels", "strides", "norm",
                                                                                    "features", "init_filters")}},
        input_channels=in_channels,
        spatial_dims=dims,
        output=activation,
        classes=classes,
        input_size=tuple(int(v) for v in roi) if isinstance(roi, list) and len(roi) == dims else None,
        normalisation="model",
        description=str(metadata.get("description") or metadata.get("task") or "MONAI bundle"),
        provenance={"source": str(folder), "checkpoint": WEIGHTS},
    )
    network.card = card
    return MonaiBundle(folder=folder, network=network.to(device).eval(), weights=dict(network.state_dict()),
                       target=target, arguments=arguments, preprocessing=preprocessing, inferer=inferer,
                       activation=activation, image_key=image_key, card=card, notes=notes)


def bundle_summary(bundle: MonaiBundle) -> str:
    """What the engine does with a volume for this bundle, for people (``grata-segmenter info``)."""
    name, kwargs = bundle.inferer
    lines = [f"network: {bundle.target} " + json.dumps(bundle.arguments, sort_keys=True),
             "preprocessing: " + ", ".join(f"{n}({', '.join(f'{k}={v}' for k, v in a.items() if k != 'keys')})"
                                           for n, a in bundle.preprocessing),
             f"inferer: {name} " + json.dumps(kwargs, sort_keys=True) + f"; activation {bundle.activation}"]
    lines += bundle.notes
    return "\n".join(lines)
