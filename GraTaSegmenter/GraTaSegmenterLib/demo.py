"""``grata-segmenter demo``: the bundled model on the bundled samples, before and after GraTa.

The samples folder holds target-centre fundus crops named
``phantom_<centre>_<i>.png`` with their reference masks ``phantom_<centre>_<i>_mask.png``
(grey, 255 background / 128 disc rim / 0 cup). Each sample is segmented by the
source model as trained (method ``none``) and after GraTa adaptation (episodic:
every sample starts from the source model); the Dice of disc and cup against the
masks is printed per centre, and ``summary.png`` shows every sample with the
reference, the before and the after contours. The full results are in
``OUTDIR/none/<sample>/`` and ``OUTDIR/grata/<sample>/``, both with the model
card's post-processing; ``OUTDIR/grata-raw/`` is the same adaptation without it,
and the connected components per mask are printed for both.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from .errors import InputError

SAMPLE = re.compile(r"^phantom_(?P<centre>[A-Za-z0-9]+)_(?P<index>\d+)\.png$")
DEFAULT_SAMPLES = Path(__file__).resolve().parent / "samples"
MAX_ROWS = 8


def find_samples(folder: Path) -> list[tuple[str, Path, Path]]:
    """(centre, image, mask) of every sample, sorted by centre and index."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"the samples folder {folder} does not exist; reinstall GraTaSegmenter or give --samples")
    found = []
    for path in folder.iterdir():
        m = SAMPLE.match(path.name)
        if m:
            mask = path.with_name(path.stem + "_mask.png")
            if not mask.is_file():
                raise InputError(f"{path.name} has no reference mask {mask.name}; restore the samples folder")
            found.append((m["centre"], int(m["index"]), path, mask))
    if not found:
        raise InputError(f"no samples (phantom_<centre>_<i>.png) in {folder}; give the samples folder with --samples")
    return [(c, p, m) for c, _, p, m in sorted(found, key=lambda t: (t[0], t[1]))]


def decode_reference(path: Path) -> np.ndarray:
    """Reference mask file -> uint8 (2, H, W): disc (cup included), cup."""
    from PIL import Image

    gray = np.asarray(Image.open(path).convert("L"))
    try:
        from .fundus_layout import decode_mask
    except ImportError:  # the layout module is optional
        return np.stack([gray < 255, gray == 0]).astype(np.uint8)
    return decode_mask(gray, strict=False)


def dice(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Dice per channel of (C, H, W) binary masks (MONAI; 1 when both are empty)."""
    import torch
    from monai.metrics import compute_dice

    y_pred = torch.as_tensor(pred[None].astype(np.float32))
    y = torch.as_tensor(ref[None].astype(np.float32))
    return compute_dice(y_pred, y, include_background=True, ignore_empty=False)[0].numpy()


def _read_masks(seg_path: str) -> np.ndarray:
    import SimpleITK as sitk

    layers = sitk.GetArrayFromImage(sitk.ReadImage(seg_path))  # (1, H, W, K) for a 2D input
    return np.moveaxis(layers.reshape(layers.shape[-3:]), -1, 0)


def _summary_picture(path: Path, rows: list[dict], colors) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from PIL import Image

    from .figures import contour_overlay

    rows = rows[:MAX_ROWS]
    fig = Figure(figsize=(9, 3 * len(rows)), dpi=90)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, row in enumerate(rows):
        rgb = np.asarray(Image.open(row["image"]).convert("RGB"))
        panels = [("reference", row["reference"], None), ("before (none)", row["none"], row["dice_none"]),
                  ("after (grata)", row["grata"], row["dice_grata"])]
        for c, (title, masks, d) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(contour_overlay(rgb, masks, colors))
            label = f"{row['name']}: {title}" if c == 0 else title
            if d is not None:
                label += f"\ndisc {100 * d[0]:.1f}  cup {100 * d[1]:.1f}"
            ax.set_title(label, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def run_demo(output: str | os.PathLike = "grata-demo", samples: str | None = None, model: str | None = None,
             steps: int = 10, device: str = "auto", overwrite: bool = False, seed: int = 0,
             print_to=None) -> dict:
    """Run the demo; returns the Dice table (also written to ``OUTDIR/summary.json``)."""
    from .outputs import disk_errors
    from .postprocess import components
    from .segment import Options, Segmenter

    out = print_to or sys.stdout
    outdir = Path(output).absolute()
    cases = find_samples(Path(samples) if samples else DEFAULT_SAMPLES)
    images = [image for _, image, _ in cases]
    results = {}
    # grata-raw: the same adaptation without the card's post-processing, to show what it changes
    for run, method, postprocess in (("none", "none", True), ("grata", "grata", True), ("grata-raw", "grata", False)):
        opts = Options(model=model, method=method, steps=steps, device=device, seed=seed, overwrite=overwrite,
                       postprocess=postprocess)
        segmenter = Segmenter(opts, progress=True)
        if run == "none":
            print(f"model: {segmenter.card.name} ({segmenter.model_path.name}); device: {segmenter.device_text}; "
                  f"{len(cases)} samples", file=out)
        print(f"segmenting with method {method}" + (f", {steps} steps per sample" if method == "grata" else "")
              + ("" if postprocess else ", without post-processing"), file=out, flush=True)
        results[run] = segmenter.run(images, outdir / run)
    colors = [c.color for c in segmenter.card.classes]
    rows, table = [], {}
    for i, (centre, image, mask) in enumerate(cases):
        reference = decode_reference(mask)
        row = {"name": image.stem, "centre": centre, "image": image, "reference": reference}
        for method in ("none", "grata", "grata-raw"):
            masks = _read_masks(results[method][i]["segmentation"])
            if masks.shape != reference.shape:
                raise InputError(f"{mask.name} is {reference.shape[1:]} but {image.name} is {masks.shape[1:]}; "
                                 f"restore the samples folder")
            row[method], row[f"dice_{method}"] = masks, dice(masks, reference)
            row[f"components_{method}"] = [components(m) for m in masks]
        rows.append(row)
        table.setdefault(centre, []).append(row)
    summary = {"samples": len(rows), "centres": {}}
    print(f"\n{'centre':<8}{'n':>3}  {'disc before':>11} {'disc after':>10}  {'cup before':>10} {'cup after':>9}",
          file=out)
    for centre, group in table.items():
        before = np.mean([r["dice_none"] for r in group], axis=0) * 100
        after = np.mean([r["dice_grata"] for r in group], axis=0) * 100
        summary["centres"][centre] = {"n": len(group), "dice_before": before.round(2).tolist(),
                                      "dice_after": after.round(2).tolist()}
        print(f"{centre:<8}{len(group):>3}  {before[0]:>11.1f} {after[0]:>10.1f}  {before[1]:>10.1f} "
              f"{after[1]:>9.1f}", file=out)
    before = np.mean([r["dice_none"] for r in rows]) * 100
    after = np.mean([r["dice_grata"] for r in rows]) * 100
    raw = np.mean([r["dice_grata-raw"] for r in rows]) * 100
    summary["mean_dice_before"], summary["mean_dice_after"] = round(float(before), 2), round(float(after), 2)
    summary["mean_dice_after_without_postprocessing"] = round(float(raw), 2)
    comps = {m: np.mean([r[f"components_{m}"] for r in rows], axis=0) for m in ("grata-raw", "grata")}
    summary["mean_components_after"] = {m: [round(float(v), 2) for v in c] for m, c in comps.items()}
    print(f"mean Dice of disc and cup (%): {before:.1f} before, {after:.1f} after adaptation "
          f"({raw:.1f} without post-processing)", file=out)
    print(f"connected components per mask after adaptation (disc, cup): {comps['grata-raw'][0]:.1f}, "
          f"{comps['grata-raw'][1]:.1f} without post-processing; {comps['grata'][0]:.1f}, {comps['grata'][1]:.1f} "
          f"with it", file=out)
    with disk_errors(outdir):
        _summary_picture(outdir / "summary.png", rows, colors)
        (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"results: {outdir} (summary.png, none/, grata/, grata-raw/)", file=out)
    return summary
