"""The fundus benchmark of the paper's protocol (and an episodic one), on any
data set in the reference layout: the phantom centres, or the public fundus
benchmark with the authors' checkpoints.

    # phantom: export centres A-E (100 test images each) and run everything
    .venv/bin/python benchmarks/fundus_benchmark.py --data-root out/phantom_data \
        --phantom-export 100 --out docs/benchmark

    # the public benchmark (see docs/benchmark.md for the folder layout)
    .venv/bin/python benchmarks/fundus_benchmark.py --data-root /data/Fundus \
        --model /models/REFUGE/last-Res_Unet.pth --source REFUGE \
        --targets RIM_ONE_r3 ORIGA REFUGE_Valid Drishti_GS --out results/REFUGE

Outputs in --out: results.json (every image's metrics and every step's
record), table.md, and plots (per-target bars, Dice against steps, cosine
and learning-rate traces).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from GraTaSegmenterLib import fundus_layout
from GraTaSegmenterLib.evaluation import METHOD_OPTIONS, evaluate_stream
from GraTaSegmenterLib.models import default_model_path, load_model

PAPER_METHODS = ["none", "bn", "tent", "grata", "grata-noalign", "grata-nodynlr"]
EPISODIC_METHODS = ["bn", "tent", "grata"]
PHANTOM_SEED = 7  # disjoint from the training (2025) and held-out (2026) seeds of the source model


def csv_names(root: Path, dataset: str) -> list[str]:
    """The CSVs the reference reads for a target: train and test, or the single one."""
    split = [f"{dataset}_{s}.csv" for s in ("train", "test") if (root / f"{dataset}_{s}.csv").exists()]
    return split or [f"{dataset}.csv"]


def export_phantom(root: Path, count: int, size: int = 512, centres: str = "ABCDE") -> None:
    for centre in centres:
        if not (root / f"Phantom_{centre}_test.csv").exists():
            fundus_layout.export_centre(root, centre, "test", count, seed=PHANTOM_SEED, size=size)
            print(f"exported phantom centre {centre}: {count} images", flush=True)


def load_target(root: Path, dataset: str, size: int, limit: int | None):
    cases = fundus_layout.read_split(root, csv_names(root, dataset), size)[:limit]
    return [c.image for c in cases], [c.mask for c in cases], [c.name for c in cases]


def fmt(stat: dict) -> str:
    return f"{stat['mean']:.2f} +/- {stat['std']:.2f}"


def markdown_tables(paper: list[dict], episodic: list[dict], source_row: dict | None) -> str:
    out = []
    if paper:
        targets = list(dict.fromkeys(r["target"] for r in paper))
        methods = list(dict.fromkeys(r["method"] for r in paper))
        cell = {(r["target"], r["method"]): r["summary"] for r in paper}
        metrics = [("mean_dice", "Mean of disc and cup Dice (%)"), ("disc_dice", "Disc Dice (%)"),
                   ("cup_dice", "Cup Dice (%)"), ("disc_asd", "Disc ASD (px)"), ("cup_asd", "Cup ASD (px)"),
                   ("disc_components", "Disc connected components per mask"),
                   ("cup_components", "Cup connected components per mask")]
        metrics += [("pp_" + k, t + ", with post-processing") for k, t in metrics]
        for metric, title in metrics:
            if not all(metric in c for c in cell.values()):
                continue  # not measured (no post-processing rules, or results of an older run)
            out.append(f"### {title}, paper protocol (continual, 1 step per image)\n")
            out.append("| method | " + " | ".join(targets) + " | mean over targets |")
            out.append("|---|" + "---:|" * (len(targets) + 1))
            for m in methods:
                stats = [cell[(t, m)][metric] for t in targets]
                undefined = sum(s["n_total"] - s["n"] for s in stats)
                note = f" ({undefined} undefined)" if undefined else ""
                means = [s["mean"] for s in stats if np.isfinite(s["mean"])]
                overall = f"{np.mean(means):.2f}" if means else "-"
                out.append(f"| {m} | " + " | ".join(fmt(s) for s in stats) + f" | {overall}{note} |")
            out.append("")
        if source_row:
            out.append(f"In-domain (source, method none): mean Dice {fmt(source_row['mean_dice'])}, "
                       f"disc {fmt(source_row['disc_dice'])}, cup {fmt(source_row['cup_dice'])}.\n")
    if episodic:
        steps = sorted({s for r in episodic for s in r["by_steps"]}, key=int)
        for key, title in (("mean_dice", ""), ("pp_mean_dice", ", with post-processing")):
            if not all(key in v for r in episodic for v in r["by_steps"].values()):
                continue
            out.append(f"### Mean Dice (%) over all targets, episodic protocol (reset per image){title}\n")
            out.append("| method | " + " | ".join(f"{s} steps" for s in steps) + " |")
            out.append("|---|" + "---:|" * len(steps))
            for m in dict.fromkeys(r["method"] for r in episodic):
                row = []
                for s in steps:
                    values = [r["by_steps"][s][key]["mean"] for r in episodic
                              if r["method"] == m and s in r["by_steps"]]
                    row.append(f"{np.mean(values):.2f}" if values else "-")
                out.append(f"| {m} | " + " | ".join(row) + " |")
            out.append("")
    return "\n".join(out)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(paper: list[dict], episodic: list[dict], records: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if paper:
        targets = list(dict.fromkeys(r["target"] for r in paper))
        methods = list(dict.fromkeys(r["method"] for r in paper))
        cell = {(r["target"], r["method"]): r["summary"]["mean_dice"] for r in paper}
        fig, ax = plt.subplots(figsize=(10, 4))
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            xs = np.arange(len(targets)) + j * width
            ax.bar(xs, [cell[(t, m)]["mean"] for t in targets], width,
                   yerr=[cell[(t, m)]["std"] for t in targets], label=m, capsize=2)
        ax.set_xticks(np.arange(len(targets)) + 0.4 - width / 2, targets)
        ax.set_ylabel("mean Dice of disc and cup (%)")
        ax.set_title("Paper protocol: per-target Dice")
        ax.legend(ncol=4, fontsize=8)
        made.append(_save(fig, out / "bars_per_target.png"))
    if episodic:
        fig, ax = plt.subplots(figsize=(6, 4))
        # colour = target, marker and line = method, so that every curve can be told apart
        targets = list(dict.fromkeys(r["target"] for r in episodic))
        methods = list(dict.fromkeys(r["method"] for r in episodic))
        markers, lines = "osD^v", ["-", "--", ":", "-."]
        for r in episodic:
            steps = sorted(r["by_steps"], key=int)
            i, j = targets.index(r["target"]), methods.index(r["method"])
            ax.plot([int(s) for s in steps], [r["by_steps"][s]["mean_dice"]["mean"] for s in steps],
                    color=f"C{i % 10}", marker=markers[j % len(markers)], linestyle=lines[j % len(lines)],
                    label=f"{r['method']} {r['target']}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("adaptation steps on the image")
        ax.set_ylabel("mean Dice (%)")
        ax.set_title("Episodic protocol: Dice against steps")
        ax.legend(fontsize=6, ncol=3)
        made.append(_save(fig, out / "dice_vs_steps.png"))
    if records:
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
        for target, recs in records.items():
            a1.plot([r["cosine"] for r in recs], lw=0.8, label=target)
            a2.plot([r["lr"] for r in recs], lw=0.8, label=target)
        a1.set_ylabel("cosine")
        a2.set_ylabel("learning rate")
        a2.set_xlabel("image (one step each)")
        a1.set_title("GraTa, paper protocol: cosine similarity and learning rate per step")
        a1.legend(fontsize=7)
        made.append(_save(fig, out / "cosine_lr_traces.png"))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, help="data set root in the reference layout")
    parser.add_argument("--phantom-export", type=int, metavar="N",
                        help="export phantom centres A-E with N test images each where missing")
    parser.add_argument("--model", type=Path, default=None, help="source model (default: the bundled one)")
    parser.add_argument("--source", default="Phantom_A")
    parser.add_argument("--targets", nargs="+", default=[f"Phantom_{c}" for c in "BCDE"])
    parser.add_argument("--protocol", choices=["paper", "episodic", "both"], default="both")
    parser.add_argument("--methods", nargs="+", default=PAPER_METHODS, choices=list(METHOD_OPTIONS))
    parser.add_argument("--episodic-methods", nargs="+", default=EPISODIC_METHODS, choices=list(METHOD_OPTIONS))
    parser.add_argument("--episodic-steps", type=int, nargs="+", default=[1, 3, 10, 30])
    parser.add_argument("--limit", type=int, help="images per target (default: all)")
    parser.add_argument("--episodic-limit", type=int, default=10, help="images per target, episodic protocol")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="base learning rate of tent and grata (the paper's: 1e-4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; on a shared CPU, one process per core with 1 thread is fastest")
    parser.add_argument("--skip-source", action="store_true", help="do not score the source data set")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="only combine the results.json of runs over different targets into --out")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.data_root is None:
        parser.error("--data-root is required (unless --merge)")
    import torch

    torch.set_num_threads(args.threads)

    started = time.time()
    model_path = args.model or default_model_path()
    size = load_model(model_path).card.input_size[0]
    if args.phantom_export:
        export_phantom(args.data_root, args.phantom_export)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/fundus_benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    common = dict(seed=args.seed, device=args.device, lr=args.lr)

    source_row = None
    source_csvs = [c for c in csv_names(args.data_root, args.source) if (args.data_root / c).exists()]
    if source_csvs and not args.skip_source:
        images, masks, names = load_target(args.data_root, args.source, size, args.limit)
        source_row = evaluate_stream(model_path, "none", images, masks, names, target=args.source,
                                     **common).summary()
        print(f"in-domain {args.source}: mean Dice {source_row['mean_dice']['mean']:.2f}", flush=True)

    paper, episodic, traces, raw = [], [], {}, []
    for target in args.targets:
        images, masks, names = load_target(args.data_root, target, size, args.limit)
        if args.protocol in ("paper", "both"):
            for m in args.methods:
                run = evaluate_stream(model_path, m, images, masks, names, target=target, **common)
                summary = run.summary()
                paper.append({"target": target, "method": m, "summary": summary})
                raw.append({"protocol": "paper", "target": target, "method": m,
                            "images": [vars(r) for r in run.images], "records": run.records})
                if m == "grata":
                    traces[target] = run.records
                print(f"[{time.time() - started:6.0f} s] paper {target:12s} {m:14s} "
                      f"mean Dice {summary['mean_dice']['mean']:.2f}", flush=True)
        if args.protocol in ("episodic", "both"):
            n = args.episodic_limit
            for m in args.episodic_methods:
                run = evaluate_stream(model_path, m, images[:n], masks[:n], names[:n], target=target,
                                      protocol="episodic", steps=args.episodic_steps, **common)
                by_steps = {str(s): run.summary(s) for s in sorted({r.steps for r in run.images})}
                episodic.append({"target": target, "method": m, "by_steps": by_steps})
                raw.append({"protocol": "episodic", "target": target, "method": m,
                            "images": [vars(r) for r in run.images], "records": run.records})
                print(f"[{time.time() - started:6.0f} s] episodic {target:12s} {m:8s} "
                      + " ".join(f"{s}:{v['mean_dice']['mean']:.1f}" for s, v in by_steps.items()), flush=True)

    return write_outputs(args.out, {
        "commands": [command], "model": str(model_path), "input_size": size, "seconds": time.time() - started,
        "source": source_row, "paper": paper, "episodic": episodic, "raw": raw, "traces": traces})


def write_outputs(out: Path, results: dict) -> int:
    table = markdown_tables(results["paper"], results["episodic"], results["source"])
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    made = plots(results["paper"], results["episodic"], results["traces"], out)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(table)
    print("wrote", ", ".join(str(p) for p in [out / "table.md", out / "results.json", *made]))
    return 0


def merge(paths: list[Path], out: Path) -> int:
    """Combine runs over disjoint targets (e.g. one process per core)."""
    parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    merged = {"commands": [c for p in parts for c in p["commands"]], "model": parts[0]["model"],
              "input_size": parts[0]["input_size"], "seconds": max(p["seconds"] for p in parts),
              "source": next((p["source"] for p in parts if p["source"]), None)}
    for key in ("paper", "episodic", "raw"):
        merged[key] = [row for p in parts for row in p[key]]
    merged["traces"] = {t: r for p in parts for t, r in p["traces"].items()}
    out.mkdir(parents=True, exist_ok=True)
    return write_outputs(out, merged)


if __name__ == "__main__":
    sys.exit(main())
