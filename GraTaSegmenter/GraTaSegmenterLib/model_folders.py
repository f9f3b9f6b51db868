"""Which kind of model a folder is, and what it says of itself, from its JSON alone.

Why a module of its own: the Slicer panel and the web page show a model's card
before any run, in a process that may not have PyTorch (the panel checks and
installs it later). Nothing here imports torch, nnU-Net or MONAI, and nothing
in the folder is executed; the engine (:mod:`.models.nnunet`,
:mod:`.models.monai_bundle`) uses the same detection and does the real,
checked loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NNUNET, MONAI = "nnunet", "monai"
MONAI_CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")


def kind(path: str | Path) -> str | None:
    """``"nnunet"`` for an nnU-Net v2 model folder or one of its ``fold_N`` folders, ``"monai"`` for a
    MONAI bundle folder, None otherwise (a file, or a folder that is neither)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        return NNUNET
    if path.name.startswith("fold_") and (path.parent / "plans.json").is_file():
        return NNUNET
    if any((path / name).is_file() for name in MONAI_CONFIGS):
        return MONAI
    return None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(path: str | Path) -> dict[str, Any]:
    """What the folder says of itself: kind, name, segments (name per label), and a few details;
    an empty dict for a folder that is no model. Values are the folder's, unchecked."""
    path = Path(path)
    found = kind(path)
    if found == NNUNET:
        folder = path.parent if path.name.startswith("fold_") and not (path / "plans.json").is_file() else path
        dataset, plans = _json(folder / "dataset.json"), _json(folder / "plans.json")
        configuration = folder.name.rsplit("__", 1)[-1]
        config = (plans.get("configurations") or {}).get(configuration) or {}
        labels = dataset.get("labels") if isinstance(dataset.get("labels"), dict) else {}
        if any(isinstance(v, list) for v in labels.values()):  # a region-based model: dataset.json's order
            segments = [str(k).replace("_", " ") for k, v in labels.items() if v not in (0, [0]) and k != "ignore"]
        else:
            plain = {str(k): v for k, v in labels.items()
                     if isinstance(v, int) and not isinstance(v, bool) and k != "ignore"}
            segments = [k.replace("_", " ") for k, v in sorted(plain.items(), key=lambda kv: kv[1]) if v != 0]
        folds = [path.name] if folder != path else sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
        details = {"configuration": configuration, "trainer": folder.name.split("__", 1)[0],
                   "folds": ", ".join(f.removeprefix("fold_") for f in folds) or "none",
                   "channels": ", ".join(str(v) for v in (dataset.get("channel_names") or {}).values()),
                   "patch": " x ".join(map(str, config.get("patch_size") or [])) or "from the parent configuration",
                   "spacing": " x ".join(f"{s:g}" for s in config.get("spacing") or []) or "?"}
        if any(isinstance(v, list) for v in labels.values()):
            details["outputs"] = "regions (one sigmoid each; segments may overlap)"
        return {"kind": NNUNET, "name": f"nnU-Net {plans.get('dataset_name', folder.parent.name)} {configuration}",
                "segments": segments, "details": details}
    if found == MONAI:
        metadata = _json(path / "configs" / "metadata.json")
        outputs = ((metadata.get("network_data_format") or {}).get("outputs") or {})
        pred = next(iter(outputs.values()), {}) if isinstance(outputs, dict) and outputs else {}
        channels = pred.get("channel_def") if isinstance(pred, dict) and isinstance(pred.get("channel_def"), dict) else {}
        segments = [str(v) for k, v in sorted(channels.items(), key=lambda kv: str(kv[0]).zfill(6))
                    if str(v).lower() != "background"]
        inference = _json(path / "configs" / "inference.json")
        network = inference.get("network_def") if isinstance(inference.get("network_def"), dict) else {}
        details = {"network": str(network.get("_target_", "?")), "version": str(metadata.get("version", "?")),
                   "weights": "models/model.pt" if (path / "models" / "model.pt").is_file() else "missing"}
        return {"kind": MONAI, "name": f"MONAI bundle {metadata.get('name') or path.name}",
                "description": str(metadata.get("description", "")), "segments": segments, "details": details}
    return {}


def card_text(path: str | Path) -> str:
    """A few readable lines about a model folder (the panel's and the page's model box), or ''."""
    info = describe(path)
    if not info:
        return ""
    lines = [info["name"]]
    if info.get("description"):
        lines.append(info["description"])
    lines.append("3D volumes (CT/MR); the model's own preprocessing and prediction")
    if info["segments"]:
        lines.append("Segments: " + ", ".join(info["segments"]))
    lines += [f"{key}: {value}" for key, value in info["details"].items()]
    return "\n".join(lines)
