"""Draw the extension icon (128x128 PNG): a fundus disc with optic disc and cup,
and a rising curve (adaptation). Usage: python scripts/make_icon.py"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
SIZE, SCALE = 128, 4


def draw() -> Image.Image:
    n = SIZE * SCALE
    im = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((4 * SCALE, 4 * SCALE, n - 4 * SCALE, n - 4 * SCALE), fill=(176, 62, 30, 255))      # fundus
    d.ellipse((14 * SCALE, 14 * SCALE, n - 14 * SCALE, n - 14 * SCALE), fill=(205, 88, 40, 255))
    for dx, dy, w in ((30, -20, 5), (-28, 26, 4), (26, 30, 4), (-30, -24, 5)):                       # vessels
        d.line((64 * SCALE, 64 * SCALE, (64 + dx * 1.6) * SCALE, (64 + dy * 1.6) * SCALE),
               fill=(130, 28, 18, 255), width=w * SCALE)
    d.ellipse((40 * SCALE, 38 * SCALE, 88 * SCALE, 90 * SCALE), fill=(242, 191, 64, 255))            # optic disc
    d.ellipse((54 * SCALE, 52 * SCALE, 78 * SCALE, 78 * SCALE), fill=(64, 140, 242, 255))            # optic cup
    pts = [(16 + i * 6, 112 - 44 * (1 - 0.82 ** i)) for i in range(17)]                               # adaptation curve
    d.line([(x * SCALE, y * SCALE) for x, y in pts], fill=(255, 255, 255, 255), width=5 * SCALE, joint="curve")
    im = im.filter(ImageFilter.SMOOTH)
    return im.resize((SIZE, SIZE), Image.LANCZOS)


if __name__ == "__main__":
    icon = draw()
    for target in (ROOT / "GraTaSegmenter.png", ROOT / "GraTaSegmenter" / "Resources" / "Icons" / "GraTaSegmenter.png"):
        target.parent.mkdir(parents=True, exist_ok=True)
        icon.save(target)
        print(f"wrote {target}")
