"""Anatomical post-processing from the model card: synthetic masks with known
islands, holes and a cup outside the disc; the card's rules; the bundled model's
real outputs with and without it; the command line's switch and report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from GraTaSegmenterLib import postprocess
from GraTaSegmenterLib.errors import ModelFileError
from GraTaSegmenterLib.models.card import ModelCard, PostprocessRule, SegmentClass
from GraTaSegmenterLib.models.fundus import FUNDUS_CLASSES, FUNDUS_POSTPROCESS


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def synthetic(shape=(128, 128)):
    """A disc with 3 islands and 1 hole; a cup partly outside it, with an island inside the disc and one
    outside."""
    disc = disk(shape, 64, 64, 30)
    for cy, cx in ((10, 10), (10, 118), (118, 20)):
        disc |= disk(shape, cy, cx, 3)
    disc &= ~disk(shape, 50, 64, 4)  # a hole
    cup = disk(shape, 64, 84, 14)  # crosses the disc's edge at x = 94
    cup |= disk(shape, 64, 48, 2) | disk(shape, 120, 120, 2)  # an island inside the disc, one outside
    return np.stack([disc, cup]).astype(np.uint8)


def test_fundus_rules_give_one_disc_without_holes_and_the_cup_inside():
    masks = synthetic()
    out, report = postprocess.apply(masks, FUNDUS_CLASSES, FUNDUS_POSTPROCESS, (1.0, 1.0))
    disc, cup = out.astype(bool)
    assert postprocess.components(masks[0]) == 4 and postprocess.components(masks[1]) == 3
    assert postprocess.components(disc) == 1 and postprocess.components(cup) == 1
    assert not (cup & ~disc).any()
    np.testing.assert_array_equal(disc, disk(masks.shape[1:], 64, 64, 30))  # islands gone, hole filled
    d, c = report.segments
    assert (d.segment, d.islands_removed, d.holes_filled, d.outside_removed) == ("optic disc", 3, 1, 0)
    outside = int((masks[1].astype(bool) & ~disk(masks.shape[1:], 64, 64, 30)).sum())
    assert (c.segment, c.outside_removed, c.islands_removed) == ("optic cup", outside, 1)
    assert c.voxels_after == int((disk(masks.shape[1:], 64, 84, 14) & disk(masks.shape[1:], 64, 64, 30)).sum())
    assert report.text() == ("optic disc: 3 islands removed, 1 hole filled; optic cup: "
                             f"{outside} voxels outside the optic disc removed, 1 island removed")


def test_rules_run_in_dependency_order_whatever_the_card_order():
    masks = synthetic()
    a, _ = postprocess.apply(masks, FUNDUS_CLASSES, FUNDUS_POSTPROCESS, (1.0, 1.0))
    b, _ = postprocess.apply(masks, FUNDUS_CLASSES, tuple(reversed(FUNDUS_POSTPROCESS)), (1.0, 1.0))
    np.testing.assert_array_equal(a, b)


def test_diagonal_pixels_are_one_component():
    m = np.eye(6, dtype=np.uint8)
    assert postprocess.components(m) == 1


def test_min_size_in_voxels_and_in_mm():
    masks = synthetic()[:1]
    cls = FUNDUS_CLASSES[:1]
    small = postprocess.apply(masks, cls, (PostprocessRule("optic disc", min_size=30),), (1.0, 1.0))
    assert postprocess.components(small[0][0]) == 1  # islands have 29 pixels (r = 3)
    # the same threshold in mm^2 on 0.5 x 0.5 mm pixels: 7.5 mm^2 = 30 pixels
    mm = postprocess.apply(masks, cls, (PostprocessRule("optic disc", min_size=7.5, min_size_unit="mm"),),
                           (0.5, 0.5))
    assert postprocess.components(mm[0][0]) == 1 and mm[1].segments[0].small_removed == 3
    kept = postprocess.apply(masks, cls, (PostprocessRule("optic disc", min_size=7.5, min_size_unit="mm"),),
                             (1.0, 1.0))
    assert kept[1].segments[0].small_removed == 0  # 7.5 mm^2 = 7.5 pixels: islands of 29 stay


def test_per_slice_rules_on_a_volume():
    masks = synthetic()
    volume = np.stack([masks, masks[:, ::-1]], axis=1)  # (2 classes, 2 slices, H, W)
    rules = tuple(PostprocessRule(r.segment, r.largest_component, r.fill_holes, r.inside, per_slice=True)
                  for r in FUNDUS_POSTPROCESS)
    out, report = postprocess.apply(volume, FUNDUS_CLASSES, rules, (2.0, 1.0, 1.0), slice_axis=0)
    for k in range(2):
        expected, _ = postprocess.apply(volume[:, k], FUNDUS_CLASSES, FUNDUS_POSTPROCESS, (1.0, 1.0))
        np.testing.assert_array_equal(out[:, k], expected)
    assert report.segments[0].islands_removed == 6  # 3 per slice
    # in 3D the two slices' discs overlap into one component: the islands of both go as well
    out3d, rep3d = postprocess.apply(volume, FUNDUS_CLASSES, FUNDUS_POSTPROCESS, (2.0, 1.0, 1.0))
    assert postprocess.components(out3d[0]) == 1


def test_empty_masks_stay_empty():
    masks = np.zeros((2, 16, 16), np.uint8)
    out, report = postprocess.apply(masks, FUNDUS_CLASSES, FUNDUS_POSTPROCESS, (1.0, 1.0))
    assert not out.any() and report.text() == "optic disc: unchanged; optic cup: unchanged"


def _card(**overrides):
    from conftest import fundus_card

    return fundus_card(**overrides)


@pytest.mark.parametrize("rules,message", [
    ((PostprocessRule("optic rim"),), "no class of that name"),
    ((PostprocessRule("optic cup", inside="optic cup"),), "'inside' must name another class"),
    ((PostprocessRule("optic cup", inside="lens"),), "'inside' must name another class"),
    ((PostprocessRule("optic cup", min_size=-1),), "min_size must be a positive number"),
    ((PostprocessRule("optic cup", min_size=5, min_size_unit="inch"),), "min_size_unit"),
    ((PostprocessRule("optic cup", inside="optic disc"), PostprocessRule("optic disc", inside="optic cup")),
     "cycle"),
    ((PostprocessRule("optic cup"), PostprocessRule("optic cup")), "one rule"),
])
def test_card_rules_are_validated(rules, message):
    with pytest.raises(ModelFileError, match=message):
        _card(postprocess=rules)


def test_card_rules_round_trip_through_json():
    card = _card(postprocess=FUNDUS_POSTPROCESS)
    again = ModelCard.from_json(card.to_json())
    assert again.postprocess == FUNDUS_POSTPROCESS
    data = json.loads(card.to_json())
    data["postprocess"][0]["colour"] = "red"
    with pytest.raises(ModelFileError):
        ModelCard.from_dict(data)


def test_bundled_and_reference_cards_carry_the_fundus_rules():
    from GraTaSegmenterLib.models import default_model_path, load_model, reference_card

    assert load_model(default_model_path()).card.postprocess == FUNDUS_POSTPROCESS
    config = {"backbone": "resnet34", "in_channels": 3, "num_classes": 2}
    assert reference_card(config).postprocess == FUNDUS_POSTPROCESS


def test_models_without_rules_are_left_as_they_are():
    card = ModelCard(name="m", architecture="unet", arguments={}, input_channels=1, spatial_dims=2,
                     output="softmax", classes=(SegmentClass("a", 1, 1, (1.0, 0.0, 0.0)),))
    assert card.postprocess == ()


def test_bundled_model_on_a_sample_with_and_without_post_processing(tmp_path):
    """The real outputs of the bundled model on a centre-C sample (the hardest shift)."""
    from GraTaSegmenterLib import imageio
    from GraTaSegmenterLib.segment import Options, Segmenter

    sample = imageio.read_image(_sample("phantom_C_0.png"))
    results = {}
    for pp in (False, True):
        seg = Segmenter(Options(method="grata", steps=2, device="cpu", uncertainty=True, postprocess=pp))
        results[pp] = seg.segment(sample)
    raw, post = results[False], results[True]
    assert raw.postprocess is None and post.postprocess is not None
    np.testing.assert_array_equal(post.uncertainty, raw.uncertainty)  # computed before post-processing
    expected, report = postprocess.apply(raw.masks, FUNDUS_CLASSES, FUNDUS_POSTPROCESS, (1.0, 1.0))
    np.testing.assert_array_equal(post.masks, expected)
    assert post.postprocess == report.to_list()
    disc, cup = post.masks.astype(bool)
    assert postprocess.components(disc) <= 1 and postprocess.components(cup) <= 1
    assert not (cup & ~disc).any()


def _sample(name):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "GraTaSegmenter" / "GraTaSegmenterLib" / "samples" / name


def test_command_line_reports_and_switches_it_off(tmp_path):
    from GraTaSegmenterLib.events import validate
    from test_cli_support import parse_events, run_cli

    for extra, expect in (([], True), (["--no-postprocess"], False)):
        out = tmp_path / ("on" if expect else "off")
        code, stdout, err = run_cli(["adapt", str(_sample("phantom_C_0.png")), "-o", str(out), "--steps", "1",
                                     "--device", "cpu", "--events", *extra])
        assert code == 0, err
        events = parse_events(stdout)
        assert all(validate(e) == [] for e in events)
        pp = [e for e in events if e["event"] == "postprocess"]
        folder = out / "phantom_C_0"
        assert bool(pp) == expect and (folder / "postprocessing.json").is_file() == expect
        output = next(e for e in events if e["event"] == "output")
        assert ("postprocessing" in output["paths"]) == expect
        if expect:
            assert [s["segment"] for s in pp[0]["segments"]] == ["optic disc", "optic cup"]
            assert json.loads((folder / "postprocessing.json").read_text(encoding="utf-8")) == pp[0]["segments"]
            assert "post-processing: optic disc:" in err


@pytest.mark.parametrize("shape", [(64, 64), (20, 40, 40)])
def test_hole_filling_equals_scipys(shape):
    """The one-pass fill gives exactly scipy.ndimage.binary_fill_holes (which iterates dilations)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(10):
        mask = ndimage.binary_dilation(rng.random(shape) < 0.08) & ~(rng.random(shape) < 0.05)
        filled, holes = postprocess._fill(mask)
        np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))
        assert holes == ndimage.label(filled & ~mask)[1]
