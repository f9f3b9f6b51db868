"""Tests of the multi-centre fundus phantom (GraTaSegmenterLib.phantom)."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from GraTaSegmenterLib import phantom
from GraTaSegmenterLib.phantom import CENTRES, AcquisitionProfile, describe, render

SIZE = 128


def test_centres_are_profiles():
    assert sorted(CENTRES) == ["A", "B", "C", "D", "E", "F", "G", "H"]
    for name, p in CENTRES.items():
        assert isinstance(p, AcquisitionProfile) and p.name == name
        assert np.asarray(p.colour_matrix).shape == (3, 3)
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.gamma = 2.0
        text = describe(name)
        assert text.startswith(f"Centre {name}") and "gamma" in text


@pytest.mark.parametrize("centre", sorted(CENTRES))
def test_shapes_types_ranges(centre):
    images, masks = render(centre, 2, seed=1, size=SIZE)
    assert images.shape == (2, 3, SIZE, SIZE) and images.dtype == np.float32
    assert masks.shape == (2, 2, SIZE, SIZE) and masks.dtype == np.uint8
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(masks)) <= {0, 1}
    disc, cup = masks[:, 0].astype(bool), masks[:, 1].astype(bool)
    assert disc.any(axis=(1, 2)).all() and cup.any(axis=(1, 2)).all()
    assert not (cup & ~disc).any()


def test_deterministic_and_prefix():
    a_img, a_mask = render("B", 3, seed=7, size=SIZE)
    b_img, b_mask = render("B", 3, seed=7, size=SIZE)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    p_img, p_mask = render("B", 2, seed=7, size=SIZE)
    assert np.array_equal(p_img, a_img[:2]) and np.array_equal(p_mask, a_mask[:2])


def test_threads_do_not_change_results(monkeypatch):
    ref = render("C", 3, seed=3, size=SIZE)
    monkeypatch.setattr(phantom, "_WORKERS", 1)
    serial = render("C", 3, seed=3, size=SIZE)
    assert all(np.array_equal(r, s) for r, s in zip(ref, serial))


def test_seeds_and_centres_differ():
    a0, m0 = render("A", 2, seed=0, size=SIZE)
    a1, m1 = render("A", 2, seed=1, size=SIZE)
    assert not np.array_equal(a0, a1) and not np.array_equal(m0, m1)
    means = {c: render(c, 4, seed=0, size=SIZE)[0].mean(axis=(0, 2, 3)) for c in "ABCDE"}
    for c in "BCDE":  # per-channel mean colour differs from the source centre
        assert np.abs(means[c] - means["A"]).max() > 0.01, c
    for c in "CD":  # strong centres differ clearly
        assert np.abs(means[c] - means["A"]).max() > 0.08, c


def _vertical_cdr(mask):
    rows_disc = np.flatnonzero(mask[0].any(axis=1))
    rows_cup = np.flatnonzero(mask[1].any(axis=1))
    return (rows_cup[-1] - rows_cup[0] + 1) / (rows_disc[-1] - rows_disc[0] + 1)


def test_cup_to_disc_ratio_spread():
    _, masks = render("A", 40, seed=11, size=SIZE)
    cdr = np.array([_vertical_cdr(m) for m in masks])
    assert cdr.min() >= 0.15 and cdr.max() <= 0.85
    assert cdr.min() < 0.35 and cdr.max() > 0.65


def test_disc_size_follows_magnification():
    def mean_disc(c):
        return render(c, 12, seed=5, size=SIZE)[1][:, 0].mean()
    a, c, d = mean_disc("A"), mean_disc("C"), mean_disc("D")
    assert c < a < d
    # disc diameter 25-45 % of the crop width at magnification 1 (loose check)
    _, masks = render("A", 12, seed=5, size=SIZE)
    cols = np.array([np.flatnonzero(m[0].any(axis=0)).size for m in masks]) / SIZE
    assert 0.2 < cols.min() and cols.max() < 0.5


def test_mask_matches_visible_disc():
    """The disc is brighter than its surroundings in every centre."""
    for c in "ABCDE":
        images, masks = render(c, 3, seed=2, size=SIZE)
        for img, m in zip(images, masks):
            lum = img.mean(axis=0)
            assert lum[m[0] == 1].mean() > lum[m[0] == 0].mean() + 0.05, c


@pytest.mark.parametrize("kwargs, word", [
    (dict(centre="Z", count=1), "A, B, C, D, E, F, G, H"),
    (dict(centre="a", count=1), "choose one of"),
    (dict(centre="A", count=0), "count"),
    (dict(centre="A", count=1.5), "count"),
    (dict(centre="A", count=1, size=63), ">= 64"),
    (dict(centre="A", count=1, seed=-1), "seed"),
])
def test_argument_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        render(**kwargs)
    if kwargs["centre"] not in CENTRES:
        with pytest.raises(ValueError):
            describe(kwargs["centre"])


def test_windowed_masks_equal_full_grid():
    """Masks are computed in a window around the disc; nothing is cut off."""
    for c in sorted(CENTRES):
        for i in range(3):
            rng_anat, _, _ = phantom._rngs(c, 0, i)
            anatomy = phantom._make_anatomy(rng_anat, CENTRES[c])
            x, y = phantom._axes(SIZE)
            dl = anatomy.disc_level(x, y)
            full = np.stack([dl <= 1.0, anatomy.cup_level(x, y, dl) <= 1.0]).astype(np.uint8)
            assert np.array_equal(phantom._masks(anatomy, SIZE), full)


# Centres A-E (seed 5, 2 images, 64 px) as they were rendered before centres F-H were added: the new
# centres must not change the old ones (benchmarks stay comparable). A byte hash was used first and
# broke on another CPU of the same kind: numpy's AVX-512 paths round a few float operations (power,
# exp) one ulp differently, which moves a rare pixel by one grey level. So the test compares with the
# stored pictures, allowing that and nothing more (another seed differs in >90 % of the pixels).
# The file was written under numpy 2.3.5 with its AVX-512 paths off, where the earlier hashes of
# A-E at 128 px (f4e06f26..., 9d5c3409..., 9ff0ec22..., 76802eb2..., 0c6449b5...) were reproduced.
REFERENCE = Path(__file__).parent / "data" / "phantom_centres_A-E_seed5_64px.npz"


@pytest.mark.parametrize("centre", list("ABCDE"))
def test_old_centres_are_unchanged_up_to_float_rounding(centre):
    with np.load(REFERENCE) as stored:
        reference_images, reference_masks = stored[f"{centre}_images"], stored[f"{centre}_masks"]
    images, masks = render(centre, 2, seed=5, size=64)
    grey = np.round(images.astype(np.float64) * 255).astype(np.int16)
    difference = np.abs(grey - reference_images)
    assert difference.max() <= 1, "a pixel moved by more than float rounding can move it"
    assert np.count_nonzero(difference) <= 0.001 * difference.size
    assert np.array_equal(masks, reference_masks)


def test_local_centres_keep_the_source_colour_but_not_its_local_look():
    """F-H differ from A where per-image statistics cannot see it: colour means stay close to A's,
    while F's illumination varies across the image, G has bright lesions outside the disc and H's
    discs are smaller and further from the centre."""
    a_img, a_mask = render("A", 8, seed=3, size=SIZE)
    for c in "FGH":
        img, _ = render(c, 8, seed=3, size=SIZE)
        assert np.abs(img.mean(axis=(0, 2, 3)) - a_img.mean(axis=(0, 2, 3))).max() < 0.12, c
    f_img, _ = render("F", 8, seed=3, size=SIZE)
    quad = lambda im: im.reshape(8, 3, 2, SIZE // 2, 2, SIZE // 2).mean(axis=(1, 3, 5))  # noqa: E731
    assert quad(f_img).std(axis=(1, 2)).mean() > 1.5 * quad(a_img).std(axis=(1, 2)).mean()
    g_img, g_mask = render("G", 8, seed=3, size=SIZE)
    pale = lambda im, m: ((im[:, 2] > 0.56) & (m[:, 0] == 0)).sum()  # noqa: E731 (disc-like pallor outside it)
    assert pale(g_img, g_mask) > 10 * max(1, pale(a_img, a_mask))
    h_img, h_mask = render("H", 8, seed=3, size=SIZE)
    assert h_mask[:, 0].mean() < 0.6 * a_mask[:, 0].mean()
    ys, xs = np.mgrid[:SIZE, :SIZE]
    offset = lambda m: np.mean([np.hypot((ys * k).sum() / k.sum() - SIZE / 2, (xs * k).sum() / k.sum() - SIZE / 2)
                                for k in m[:, 0].astype(float)])  # noqa: E731
    assert offset(h_mask) > 2 * offset(a_mask)
