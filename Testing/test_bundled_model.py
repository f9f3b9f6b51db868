"""The bundled source model: present, unchanged, described, and as good as
its card says on its own centre."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from GraTaSegmenterLib import phantom
from GraTaSegmenterLib.evaluation import segmentation_metrics
from GraTaSegmenterLib.models import default_model_path, file_sha256, load_model

ROOT = Path(__file__).resolve().parents[1]


def test_checksums_agree_everywhere():
    path = default_model_path()
    digest = file_sha256(path)
    assert path.with_suffix(".sha256").read_text(encoding="utf-8").split()[0] == digest
    catalog = json.loads((ROOT / "GraTaSegmenter/Resources/Models/catalog.json").read_text(encoding="utf-8"))
    bundled = next(m for m in catalog["models"] if m["kind"] == "bundled")
    assert bundled["sha256"] == digest and bundled["file"] == path.name
    assert path.stat().st_size < 30 * 2**20


def test_card_describes_a_fundus_sigmoid_model():
    card = load_model(default_model_path()).card
    assert card.architecture == "unet" and card.arguments["norm"] == "batch"
    assert card.input_size == (256, 256) and card.output == "sigmoid" and card.input_channels == 3
    assert [c.name for c in card.classes] == ["optic disc", "optic cup"]
    assert card.provenance["held_out_dice"]["disc"] >= 90 and card.provenance["held_out_dice"]["cup"] >= 80


def test_segments_held_out_centre_a_images():
    model = load_model(default_model_path())
    images, masks = phantom.render("A", 6, seed=2026, size=512)
    x = F.interpolate(torch.from_numpy(images), size=(256, 256), mode="bilinear", align_corners=False)
    lo = x.amin((1, 2, 3), keepdim=True)
    x = (x - lo) / (x.amax((1, 2, 3), keepdim=True) - lo)
    y = F.interpolate(torch.from_numpy(masks).float(), size=(256, 256), mode="nearest").bool()
    with torch.no_grad():
        pred = torch.sigmoid(model(x)) > 0.5
    scores = [segmentation_metrics(p, t) for p, t in zip(pred, y)]
    assert np.mean([s["disc_dice"] for s in scores]) >= 90
    assert np.mean([s["cup_dice"] for s in scores]) >= 80
