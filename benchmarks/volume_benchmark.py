"""The 3D multi-centre benchmark: an nnU-Net model of phantom centre A adapted on centres B-E.

Every case goes through the engine as a user's volume does (``Segmenter`` on a
NIfTI file: nnU-Net's preprocessing, the steps on its windows, nnU-Net's
prediction with the adapted weights). Protocols as in the fundus benchmark:

* ``continual`` (the paper's): one model per centre, one step per volume, the
  volumes streamed in order, model and optimiser carried on;
* ``episodic`` (a clinician's click): reset to the source for every volume,
  ``--episodic-steps`` steps on it.

Metrics per organ: Dice (%) and the symmetric average surface distance (mm,
on the volume's spacing), from MONAI; an organ predicted empty has distance NaN
(counted apart).

    .venv/bin/python scripts/make_nnunet_model.py out/m16 --cases 10 --features 16 --iterations 1500
    .venv/bin/python benchmarks/volume_benchmark.py --model out/m16/Dataset501_GraTaPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0 \\
        --out docs/benchmark/volume --cases 8

writes results.json and table.md in --out.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "GraTaSegmenter"))

from GraTaSegmenterLib import imageio, phantom3d  # noqa: E402
from GraTaSegmenterLib.adaptation import make_method  # noqa: E402
from GraTaSegmenterLib.evaluation import METHOD_OPTIONS  # noqa: E402
from GraTaSegmenterLib.segment import Options, Segmenter  # noqa: E402

SEED = 7  # bodies disjoint from the training bodies (seed 0)
METHODS = ["none", "tent", "grata", "grata-noalign", "grata-nodynlr"]


def organ_metrics(masks: np.ndarray, labels: np.ndarray, spacing) -> dict[str, float]:
    from monai.metrics import compute_average_surface_distance, compute_dice

    out = {}
    for k, organ in enumerate(phantom3d.ORGANS):
        p = torch.from_numpy(masks[k][None, None].astype(np.float32))
        t = torch.from_numpy((labels == k + 1)[None, None].astype(np.float32))
        out[f"{organ}_dice"] = float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0]) * 100
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            asd = float(compute_average_surface_distance(p, t, include_background=True, symmetric=True,
                                                         spacing=list(spacing))[0, 0])
        out[f"{organ}_asd"] = asd if math.isfinite(asd) else float("nan")
    out["mean_dice"] = float(np.mean([out[f"{o}_dice"] for o in phantom3d.ORGANS]))
    return out


def write_cases(centre: str, cases: int, scale: float, folder: Path) -> list[tuple[Path, np.ndarray, tuple]]:
    """The benchmark's volumes of ``centre`` as NIfTI files in ``folder``, with their labels and spacing."""
    files = []
    for i in range(cases):
        case = phantom3d.render_case(centre, i, seed=SEED, scale=scale)
        image = sitk.GetImageFromArray(case.image)
        image.SetSpacing(tuple(reversed(case.spacing)))
        path = folder / f"centre_{centre}_{i:02d}.nii.gz"
        sitk.WriteImage(image, str(path))
        files.append((path, case.labels, case.spacing))
    return files


def make_segmenter(model: str, key: str, lr: float, mode: str, steps: int, seed: int) -> Segmenter:
    method, extra = METHOD_OPTIONS[key]
    seg = Segmenter(Options(model=model, method=method, steps=steps, lr=lr, mode=mode, device="cpu", seed=seed,
                            postprocess=False))
    if extra:  # the ablations: the same method with one part switched off
        seg.method = make_method(method, seg.model, seed=seed, lr=lr, memory_format="contiguous", **extra)
    return seg


def run(model: str, key: str, files: list[tuple[Path, np.ndarray, tuple]], lr: float, mode: str, steps: int,
        seed: int) -> dict:
    seg = make_segmenter(model, key, lr, mode, steps, seed)
    rows, records, start = [], [], time.perf_counter()
    for path, labels, spacing in files:
        prediction = seg.segment(imageio.read_image(path))
        rows.append({"case": path.name, **organ_metrics(prediction.masks, labels, spacing)})
        records += [{k: r[k] for k in ("step", "cosine", "lr", "loss", "seconds")} for r in prediction.records]
    return {"method": key, "mode": mode, "steps": steps, "images": rows, "records": records,
            "seconds": time.perf_counter() - start}


def summary(rows: list[dict]) -> dict[str, tuple[float, float, int]]:
    out = {}
    for key in rows[0]:
        if key == "case":
            continue
        values = np.array([r[key] for r in rows], float)
        finite = values[np.isfinite(values)]
        out[key] = (float(finite.mean()) if finite.size else float("nan"),
                    float(finite.std()) if finite.size else float("nan"), int(finite.size))
    return out


def table(results: list[dict], centres: str, mode: str) -> str:
    keys = ["mean_dice"] + [f"{o}_dice" for o in phantom3d.ORGANS] + [f"{o}_asd" for o in phantom3d.ORGANS]
    lines = [f"| centre | method | {' | '.join(keys)} |", "|" + "---|" * (len(keys) + 2)]
    for centre in centres:
        for r in results:
            if r["centre"] != centre or r["mode"] != mode:
                continue
            s = summary(r["images"])
            cells = []
            for k in keys:
                mean, std, n = s[k]
                cells.append(f"{mean:.1f} ± {std:.1f}" + (f" ({n}/{len(r['images'])})" if n < len(r["images"]) else ""))
            lines.append(f"| {centre} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results_path: Path, out: Path) -> None:
    """Two figures from results.json: mean Dice per centre and method (both protocols), and the
    cosine of the two gradients and GraTa's learning rate per step of the continual runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results_path.read_text())
    results = data["results"]
    centres = sorted({r["centre"] for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, mode in zip(axes, ("continual", "episodic")):
        rows = [r for r in results if r["mode"] == mode or (mode == "episodic" and r["method"] == "none")]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        width = 0.8 / max(1, len(methods))
        for k, method in enumerate(methods):
            means = []
            for centre in centres:
                r = next((r for r in rows if r["centre"] == centre and r["method"] == method), None)
                means.append(summary(r["images"])["mean_dice"][0] if r else float("nan"))
            ax.bar(np.arange(len(centres)) + (k - (len(methods) - 1) / 2) * width, means, width, label=method)
        steps = next((r["steps"] for r in rows if r["method"] != "none"), 0)
        ax.set_title(f"{mode} ({steps} step{'s' if steps != 1 else ''} per volume)", fontsize=9)
        ax.set_xticks(range(len(centres)), centres)
        ax.set_xlabel("centre (A: source)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean Dice over liver, spleen, kidney (%)")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "dice_per_centre.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 1, figsize=(8, 4.4), sharex=True)
    for r in (r for r in results if r["mode"] == "continual" and r["method"] == "grata"):
        steps = range(1, len(r["records"]) + 1)
        axes[0].plot(steps, [np.nan if x["cosine"] is None else x["cosine"] for x in r["records"]], "o-",
                     label=r["centre"])
        axes[1].plot(steps, [x["lr"] for x in r["records"]], "o-", label=r["centre"])
    axes[0].axhline(0, color="0.5", lw=0.8)
    axes[0].set_ylabel("cos(g_aux, g_pse)")
    axes[1].axhline(data["lr"], color="0.5", lw=0.8, ls="--")
    axes[1].set_ylabel("GraTa's learning rate")
    axes[1].set_xlabel("volume (one step each, continual)")
    axes[0].legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(out / "cosine_lr_traces.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="nnU-Net model folder (one fold) trained on centre A")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--centres", default="ABCDE")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=sorted(METHOD_OPTIONS))
    ap.add_argument("--episodic-steps", type=int, default=0, help="also run the episodic protocol with this many steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, help="only draw the figures of this results.json into --out")
    args = ap.parse_args(argv)
    if args.plot:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(args.plot, args.out)
        return 0
    if not args.model:
        ap.error("--model is required (unless --plot)")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for centre in args.centres:
            files = write_cases(centre, args.cases, args.scale, Path(tmp))
            protocols = [("continual", 1)] + ([("episodic", args.episodic_steps)] if args.episodic_steps else [])
            for mode, steps in protocols:
                for key in args.methods:
                    if key == "none" and mode == "episodic":
                        continue
                    r = run(args.model, key, files, args.lr, mode, 0 if key == "none" else steps, args.seed)
                    r["centre"] = centre
                    results.append(r)
                    s = summary(r["images"])
                    print(f"{centre} {mode:9s} {key:14s} mean Dice {s['mean_dice'][0]:5.1f}  "
                          + "  ".join(f"{o} {s[o + '_dice'][0]:5.1f}" for o in phantom3d.ORGANS)
                          + f"  ({r['seconds']:.0f} s)", flush=True)
                    (args.out / "results.json").write_text(json.dumps(
                        {"model": args.model, "cases": args.cases, "scale": args.scale, "lr": args.lr, "seed": SEED,
                         "torch": torch.__version__, "results": results}, indent=1))
    text = [f"# 3D benchmark: {args.cases} volumes per centre, lr {args.lr}, scale {args.scale}", "",
            "## Continual (the paper's protocol: one step per volume, carried on)", "",
            table(results, args.centres, "continual")]
    if args.episodic_steps:
        text += ["", f"## Episodic ({args.episodic_steps} steps per volume, reset per volume)", "",
                 table(results, args.centres, "episodic")]
    (args.out / "table.md").write_text("\n".join(text) + "\n")
    plot(args.out / "results.json", args.out)
    print(f"wrote {args.out / 'table.md'} and the figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
