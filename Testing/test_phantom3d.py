"""The 3D multi-centre phantom, and the organ codes models' label names get."""

from __future__ import annotations

import json

import numpy as np
import pytest

from GraTaSegmenterLib import phantom3d
from GraTaSegmenterLib.errors import ConfigurationError
from GraTaSegmenterLib.models.anatomy import TABLE, code_for, normalised
from slicer_runtime import SHARED, TAGS


def test_same_arguments_same_volume_and_every_organ_present():
    a, b = phantom3d.render_case("A", 4, scale=0.5), phantom3d.render_case("A", 4, scale=0.5)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    counts = np.bincount(a.labels.ravel(), minlength=4)
    assert len(counts) == 4 and all(counts[1:] > 50)  # liver, spleen, kidneys
    assert counts[1] > counts[2] and counts[1] > counts[3]  # the liver is the largest organ
    assert a.spacing == (2.5, 1.5, 1.5) and a.image.dtype == np.float32 and a.labels.dtype == np.uint8


def test_the_same_body_at_every_centre_scanned_differently():
    cases = {c: phantom3d.render_case(c, 2, scale=0.5) for c in phantom3d.CENTRES}
    # same anatomy where the grid is the same (A, B, D): identical masks
    for c in ("B", "D"):
        np.testing.assert_array_equal(cases[c].labels, cases["A"].labels)
    # C has thicker slices and bigger pixels, E 3 mm slices: other grids, same extent
    assert cases["C"].spacing == (5.0, 2.0, 2.0) and cases["E"].spacing[0] == 3.0
    for c in ("C", "E"):
        extent = np.array(cases[c].labels.shape) * cases[c].spacing
        np.testing.assert_allclose(extent, np.array(cases["A"].labels.shape) * cases["A"].spacing, rtol=0.1)

    def organ_spread(case):  # how far apart the three organs' intensities lie
        return float(np.ptp([np.median(case.image[case.labels == k]) for k in (1, 2, 3)]))

    assert organ_spread(cases["D"]) < 0.6 * organ_spread(cases["A"])  # no contrast agent at D: 28 HU against 60
    assert np.median(cases["B"].image[cases["B"].labels == 1]) == pytest.approx(
        1.1 * np.median(cases["A"].image[cases["A"].labels == 1]) - 60, abs=8)  # B's calibration
    noise = {c: float(np.std(np.diff(cases[c].image[cases[c].labels == 1]))) for c in "AD"}
    assert noise["D"] > 1.5 * noise["A"]  # 35 HU against 8 HU, seen through partial volume and blur
    assert cases["E"].image.min() >= 0  # magnitude MR images


def test_bad_arguments_are_refused():
    with pytest.raises(ConfigurationError, match="unknown centre"):
        phantom3d.render_case("Z", 0)
    with pytest.raises(ConfigurationError, match="index"):
        phantom3d.render_case("A", -1)
    with pytest.raises(ConfigurationError, match="scale"):
        phantom3d.render_case("A", 0, scale=5)


def test_label_names_get_slicers_own_codes():
    assert normalised("Kidney_Left") == "kidney" and normalised("gall bladder") == "gallbladder"
    assert code_for("liver")[1].value == "10200004" and code_for("kidney_right")[1].meaning == "Kidney"
    assert code_for("something else") == (None, None)


@pytest.mark.parametrize("tag", TAGS)
def test_every_code_of_the_table_is_in_slicers_general_anatomy(tag):
    path = SHARED / tag / "Terminologies" / "SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json"
    if not path.is_file():
        pytest.skip(f"Slicer's terminology files are not at {path.parent}")
    data = json.loads(path.read_text())
    known = {(c["CodingSchemeDesignator"], c["CodeValue"], c["CodeMeaning"],
              t["CodingSchemeDesignator"], t["CodeValue"], t["CodeMeaning"])
             for c in data["SegmentationCodes"]["Category"] for t in c.get("Type", [])}
    for name, (category, type_) in TABLE.items():
        assert (category.scheme, category.value, category.meaning, type_.scheme, type_.value, type_.meaning) in known, name
