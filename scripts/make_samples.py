"""Write the bundled sample images: phantom fundus crops of the target centres
B-E (two each, 512 px, PNG) with their masks in the reference coding
(255 background, 128 disc rim, 0 cup), and the checksum manifest that the
Slicer module's SampleData registration reads.

    .venv/bin/python scripts/make_samples.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from GraTaSegmenterLib import phantom
from GraTaSegmenterLib.fundus_layout import encode_mask
from GraTaSegmenterLib.slicer_support.samples import write_manifest

SAMPLES = Path(__file__).resolve().parents[1] / "GraTaSegmenter" / "GraTaSegmenterLib" / "samples"
SEED = 11  # disjoint from the training, held-out and benchmark seeds


def main() -> int:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    for centre in "BCDE":
        images, masks = phantom.render(centre, 2, seed=SEED, size=512)
        for i, (image, mask) in enumerate(zip(images, masks)):
            rgb = (np.clip(image, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
            Image.fromarray(rgb).save(SAMPLES / f"phantom_{centre}_{i}.png", optimize=True)
            Image.fromarray(encode_mask(mask)).save(SAMPLES / f"phantom_{centre}_{i}_mask.png", optimize=True)
    print(write_manifest(SAMPLES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
