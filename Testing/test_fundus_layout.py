"""Tests of the fundus benchmark layout writer/reader (GraTaSegmenterLib.fundus_layout)."""

import csv

import numpy as np
import pytest
from PIL import Image

from GraTaSegmenterLib import fundus_layout as fl
from GraTaSegmenterLib.phantom import render

SIZE = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("fundus")
    csv_path = fl.export_centre(root, "B", "train", 3, seed=4, size=SIZE)
    return root, csv_path


def _minmax(x):
    return (x - x.min()) / (x.max() - x.min())


def test_export_layout(exported):
    root, csv_path = exported
    assert csv_path == root / "Phantom_B_train.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "mask"] and len(rows) == 4
    for image, mask in rows[1:]:
        assert image.startswith("Phantom_B/train/image/") and image.endswith(".png")
        assert mask.startswith("Phantom_B/train/mask/")
        gray = Image.open(root / mask)
        assert gray.mode == "L"
        assert set(np.unique(np.asarray(gray))) == {0, 128, 255}
        assert Image.open(root / image).mode == "RGB"
    assert not list(root.glob("*.tmp*"))


def test_round_trip(exported):
    root, _ = exported
    images, masks = render("B", 3, seed=4, size=SIZE)
    cases = fl.read_split(root, ["Phantom_B_train.csv"], SIZE)
    assert [c.name for c in cases] == [f"Phantom_B_train_{i:04d}" for i in range(3)]
    for case, img, mask in zip(cases, images, masks):
        assert case.image.dtype == np.float32 and case.image.shape == (3, SIZE, SIZE)
        assert case.mask.dtype == np.uint8 and np.array_equal(case.mask, mask)
        assert case.image.min() == 0.0 and case.image.max() == 1.0
        # the phantom already holds 8-bit levels: exact up to float rounding
        assert np.abs(case.image - _minmax(img)).max() < 1e-5
    # without the .csv suffix, lazily, and resized
    small = list(fl.iter_split(root, ["Phantom_B_train"], 64))
    assert small[0].image.shape == (3, 64, 64) and small[0].mask.shape == (2, 64, 64)
    assert set(np.unique(small[0].mask)) <= {0, 1}


def test_list_cases(exported):
    root, _ = exported
    pairs = fl.list_cases(root, ["Phantom_B_train.csv"])
    assert len(pairs) == 3 and all(i.is_file() and m.is_file() for i, m in pairs)


def test_encode_decode():
    _, masks = render("A", 2, seed=0, size=64)
    for m in masks:
        gray = fl.encode_mask(m)
        assert gray.dtype == np.uint8 and set(np.unique(gray)) <= {0, 128, 255}
        assert np.array_equal(fl.decode_mask(gray), m)
    gray = np.array([[255, 128], [0, 255]], np.uint8)
    assert np.array_equal(fl.decode_mask(gray), [[[0, 1], [1, 0]], [[0, 0], [1, 0]]])
    with pytest.raises(ValueError, match="inside the disc"):
        fl.encode_mask(np.array([[[0]], [[1]]], np.uint8))
    with pytest.raises(ValueError, match="not 0"):
        fl.decode_mask(np.array([[255, 100]], np.uint8))
    assert fl.decode_mask(np.array([[255, 100]], np.uint8), strict=False).tolist() == [[[0, 1]], [[0, 0]]]


def _write_case(root, name, gray, mask_ext="png", mask_file=None):
    (root / "img").mkdir(exist_ok=True)
    (root / "msk").mkdir(exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "img" / f"{name}.png")
    mask_rel = f"msk/{name}.{mask_ext}"
    Image.fromarray(gray).save(root / (mask_file or mask_rel))
    return f"img/{name}.png", mask_rel


def test_tif_masks_read_from_dash_one(tmp_path):
    gray = np.full((8, 8), 255, np.uint8)
    gray[2:6, 2:6] = 128
    gray[3:5, 3:5] = 0
    img, mask = _write_case(tmp_path, "x", gray, "tif", mask_file="msk/x-1.tif")
    (tmp_path / "D_test.csv").write_text(f"image,mask\n{img},{mask}\n")
    (case,) = fl.read_split(tmp_path, ["D_test.csv"], 8)
    assert np.array_equal(case.mask, fl.decode_mask(gray))
    assert case.image.max() == 0.0  # a flat image normalises to zeros, not NaN


def test_error_paths(tmp_path, exported):
    root, _ = exported
    with pytest.raises(FileNotFoundError, match="Phantom_B_train.csv"):
        fl.read_split(root, ["Nope_test.csv"], SIZE)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        fl.list_cases(tmp_path / "missing", ["x.csv"])

    (tmp_path / "Cols_test.csv").write_text("img,label\na.png,b.png\n")
    with pytest.raises(ValueError, match="column"):
        fl.list_cases(tmp_path, ["Cols_test.csv"])

    (tmp_path / "Gone_test.csv").write_text("image,mask\nimg/none.png,msk/none.png\n")
    with pytest.raises(FileNotFoundError, match="image .*none.png does not exist"):
        fl.list_cases(tmp_path, ["Gone_test.csv"])

    img, mask = _write_case(tmp_path, "odd", np.full((8, 8), 77, np.uint8))
    (tmp_path / "Odd_test.csv").write_text(f"image,mask\n{img},{mask}\n")
    with pytest.raises(ValueError, match="77"):
        fl.read_split(tmp_path, ["Odd_test.csv"], 8)
    assert fl.read_split(tmp_path, ["Odd_test.csv"], 8, strict=False)[0].mask[0].all()

    with pytest.raises(ValueError, match="split"):
        fl.export_centre(tmp_path, "A", "../evil", 1, size=64)
    with pytest.raises(ValueError, match="unknown centre"):
        fl.export_centre(tmp_path, "Z", "train", 1, size=64)
    assert not list(tmp_path.glob("Phantom_*"))


def test_interrupted_export_leaves_no_csv(tmp_path, monkeypatch):
    calls = []

    def failing_save(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError):
        fl.export_centre(tmp_path, "A", "test", 3, size=64)
    assert not list(tmp_path.glob("*.csv*"))
