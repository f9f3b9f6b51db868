"""Draw Resources/phantom3d_grid.png: one row per 3D phantom centre (A-E), the same body at each.

Columns: an axial slice through the kidneys with the window each centre's scale needs (CT
-200..300 HU after the centre's calibration; MR its 1st-99th percentiles), the same slice with
the organ contours (liver yellow, spleen cyan, kidneys magenta), a coronal slice (thick slices
show as steps), and the intensity histogram of the body (how far each centre's values lie
from the source's).

    PYTHONPATH=GraTaSegmenter .venv/bin/python benchmarks/make_phantom3d_grid.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from GraTaSegmenterLib.phantom3d import CENTRES, ORGANS, render_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ("yellow", "cyan", "magenta")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "phantom3d_grid.png")
    parser.add_argument("--index", type=int, default=0, help="the body (the same at every centre)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    centres = sorted(CENTRES)
    fig, axes = plt.subplots(len(centres), 4, figsize=(10.5, 2.5 * len(centres)),
                             gridspec_kw={"width_ratios": [1, 1, 1, 1.3]})
    source = render_case("A", args.index, seed=args.seed).image
    for row, centre in enumerate(centres):
        case = render_case(centre, args.index, seed=args.seed)
        image, labels = case.image, case.labels
        z = int(np.argmax((labels == 3).sum(axis=(1, 2))))  # the slice with most kidney
        y = int(np.argmax((labels > 0).sum(axis=(0, 2))))
        body = image[image > np.percentile(image, 30)]
        low, high = (np.percentile(body, 1), np.percentile(body, 99)) if CENTRES[centre].modality == "MR" \
            else (-200.0, 300.0)
        sz, sy, sx = case.spacing
        for col in (0, 1):  # voxel coordinates: the contours lie on the pixels they were computed from
            ax = axes[row, col]
            ax.imshow(image[z], cmap="gray", vmin=low, vmax=high, aspect=sy / sx, interpolation="nearest")
            if col == 1:
                for k, colour in enumerate(COLOURS):
                    if (labels[z] == k + 1).any():
                        ax.contour((labels[z] == k + 1).astype(float), levels=[0.5], colors=colour, linewidths=0.8)
        ax = axes[row, 2]  # coronal, stretched by the slice thickness (thick slices show as steps)
        ax.imshow(image[:, y], cmap="gray", vmin=low, vmax=high, aspect=sz / sx, interpolation="nearest")
        ax = axes[row, 3]
        ax.hist(source[source > -500].ravel(), bins=120, color="0.7", density=True, label="A (source)")
        ax.hist(image[image > (-500 if CENTRES[centre].modality == "CT" else 50)].ravel(), bins=120,
                histtype="step", color="tab:red", density=True, label=centre)
        ax.set_yticks([])
        ax.legend(fontsize=6, loc="upper left")
        ax.tick_params(labelsize=6)
        for ax in axes[row, :3]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{centre}: {CENTRES[centre].modality}, {sz:g} x {sy:g} mm", fontsize=7)
        axes[row, 1].set_title(CENTRES[centre].description, fontsize=6.5, loc="left")
    axes[0, 0].set_title("axial (kidneys)", fontsize=7)
    axes[0, 2].set_title("coronal", fontsize=7)
    axes[0, 3].set_title("intensities of the body", fontsize=7)
    handles = [matplotlib.lines.Line2D([], [], color=c, label=o) for c, o in zip(COLOURS, ORGANS)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(pad=0.3, rect=(0, 0.02, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
