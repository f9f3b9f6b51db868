"""Draw Resources/phantom_grid.png: one row per phantom centre, 6 samples each.

The last two columns show the same images as columns 1-2 with the optic disc
(yellow) and cup (cyan) mask contours, to check that masks trace what is seen.

    PYTHONPATH=GraTaSegmenter .venv/bin/python benchmarks/make_phantom_grid.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from GraTaSegmenterLib.phantom import CENTRES, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "phantom_grid.png")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    centres = sorted(CENTRES)
    samples, contoured = 6, 2
    fig, axes = plt.subplots(len(centres), samples + contoured,
                             figsize=(1.6 * (samples + contoured), 1.7 * len(centres)))
    for row, centre in enumerate(centres):
        images, masks = render(centre, samples, seed=args.seed, size=args.size)
        for col in range(samples + contoured):
            k = col if col < samples else col - samples
            ax = axes[row, col]
            ax.imshow(images[k].transpose(1, 2, 0), interpolation="nearest")
            if col >= samples:
                ax.contour(masks[k, 0], levels=[0.5], colors="yellow", linewidths=0.7)
                ax.contour(masks[k, 1], levels=[0.5], colors="cyan", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{centre}: {CENTRES[centre].shift}", fontsize=7)
            if row == 0 and col >= samples:
                ax.set_title(f"#{k + 1} + masks", fontsize=7)
    fig.tight_layout(pad=0.2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
