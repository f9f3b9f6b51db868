#!/usr/bin/env python
"""Compare our GraTa engine with the authors' reference implementation.

Run by hand (not in CI): it needs a checkout of the reference code
(``git clone https://github.com/Chen-Ziyang/GraTa``) and an environment in
which that code imports (``batchgenerators``, ``scipy``, ``numpy``, torch).
This file contains no reference code: the reference is imported at run time
from the folder given with ``--reference``. See docs/conformance.md.

What it checks, for ``--backbone`` (default resnet34) at ``--size`` (256):

1. The reference ``ResUnet`` is built with a fixed seed (running statistics
   calibrated on random images, norm affine parameters perturbed so that no
   layer is the identity), its ``state_dict()`` saved with ``torch.save`` as a
   reference checkpoint, and the checkpoint loaded through our ``load_model``.
2. (a) eval-mode segmentation logits on a 1x3xSxS input in [0, 1] agree
   (max abs diff <= 1e-5).
3. (b) deterministic GraTa (aux ``ent``, pseudo ``ent``, Adam lr 1e-4,
   continual steps on the same image): the reference model configured as its
   TTA.py does, the reference GraTa optimiser wrapping Adam on all BatchNorm2d
   affine parameters; after step 1 and after the last step every norm
   parameter agrees (<= 1e-5) and each step's cosine and lr agree (<= 1e-5).
   Our side runs with ``memory_format="contiguous"`` and with the default
   (``"auto"``: channels_last on CPU).
4. ``aux=ent, pseudo=consis`` (random on both sides, different random
   streams): only the range of cosine and lr over the steps, no agreement
   claim; and whether the reference's in-place augmentation of
   ``data['data']`` changes the image its TTA loop predicts after the step
   (CPU only).

Usage::

    python benchmarks/conformance/run_reference_comparison.py \\
        --reference /path/to/GraTa [--backbone resnet34] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

TOL = 1e-5
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- imports
def import_ours():
    try:
        import GraTaSegmenterLib  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "GraTaSegmenter"))
    from GraTaSegmenterLib.adaptation import GraTa
    from GraTaSegmenterLib.models import load_model
    return GraTa, load_model


def import_reference(path: Path):
    """Import the reference network and optimiser from a checkout of its repository."""
    if not (path / "networks" / "ResUnet.py").is_file():
        sys.exit(f"{path} is not a checkout of the GraTa reference code (no networks/ResUnet.py)")
    sys.path.insert(0, str(path))
    from networks.ResUnet import ResUnet as RefResUnet
    try:
        from custom_optimizers.grata import GraTa as RefGraTa
    except ImportError as exc:
        sys.exit(f"the reference optimiser does not import ({exc}); install what it needs into this "
                 f"environment: pip install batchgenerators scipy (see docs/conformance.md)")
    return RefResUnet, RefGraTa


# --------------------------------------------------------------------------- reference side
def build_reference(RefResUnet, backbone: str, seed: int, size: int) -> nn.Module:
    """The reference ResUnet with seeded weights, calibrated running statistics
    and perturbed norm affine parameters (so that no BatchNorm is trivial)."""
    torch.manual_seed(seed)
    model = RefResUnet(resnet=backbone, num_classes=2, pretrained=False)
    g = torch.Generator().manual_seed(seed + 1)
    # Running statistics: cumulative average over a few random images in train mode.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, size, size, generator=g))
            model(torch.rand(2, 3, size, size, generator=g), rec=True, rot=True, den=True, sup=True)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
                m.weight.mul_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


def reference_collect_params(model: nn.Module) -> list[nn.Parameter]:
    """What the reference TTA.py trains: weight and bias of every BatchNorm2d, in module order."""
    params = []
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            for name, p in m.named_parameters():
                if name in ("weight", "bias"):
                    params.append(p)
    return params


def reference_configure(model: nn.Module, aux: str, pse: str) -> None:
    """The model set-up the reference TTA.py repeats before every step."""
    model.train()
    model.requires_grad_(False)
    for nm, m in model.named_modules():
        if aux in nm or pse in nm:
            m.requires_grad_(True)
        if isinstance(m, nn.BatchNorm2d):
            m.requires_grad_(True)
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None


class ReferenceRun:
    """The reference model and optimiser, stepped as its TTA loop does, with the
    cosine captured from the optimiser's own get_cosine."""

    def __init__(self, RefGraTa, model: nn.Module, aux: str, pse: str, lr: float):
        self.model, self.aux, self.pse = model, aux, pse
        reference_configure(model, aux, pse)
        params = reference_collect_params(model)
        base = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
        self.opt = RefGraTa(params, base, model, device="cpu")
        self.cosines: list[float] = []
        original = self.opt.get_cosine

        def recording_get_cosine():
            c = original()
            self.cosines.append(float(c))
            return c

        self.opt.get_cosine = recording_get_cosine

    def step(self, x_np: np.ndarray) -> dict:
        data = {"data": x_np.copy()}
        # As the TTA loop: the image it predicts after the step (shares memory on CPU).
        x_loop = torch.from_numpy(data["data"]).to(dtype=torch.float32).to("cpu")
        reference_configure(self.model, self.aux, self.pse)
        self.opt.base_optimizer.zero_grad()
        self.opt.step(data, self.aux, self.pse)
        lr = float(self.opt.base_optimizer.param_groups[0]["lr"])
        changed = float((x_loop - torch.from_numpy(x_np)).abs().max())
        return {"cosine": self.cosines[-1], "lr": lr, "loop_image_changed_by": changed}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


# --------------------------------------------------------------------------- comparisons
def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def trajectory(side, x: torch.Tensor, steps: int) -> dict:
    """Step one side (``step(x) -> (cosine, lr)``, ``named_params()``) and keep
    its cosine, lr and parameters after step 1 and after the last step."""
    start = {n: p.detach().clone() for n, p in side.named_params()}
    out = {"cosine": [], "lr": [], "params": {}, "start": start}
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        c, lr = side.step(x)
        out["cosine"].append(c)
        out["lr"].append(lr)
        if k in (1, steps):
            out["params"][k] = {n: p.detach().clone() for n, p in side.named_params()}
    out["prediction"] = side.predict(x)
    out["seconds"] = time.perf_counter() - t0
    return out


class OursSide:
    def __init__(self, GraTa, model, lr, fmt):
        self.g = GraTa(model, aux_loss="ent", pseudo_loss="ent", optimizer="adam", lr=lr, seed=0,
                       memory_format=fmt)

    def named_params(self):
        return list(zip(self.g.param_names, self.g.params))

    def step(self, x):
        r = self.g.step(x)
        return r.cosine, r.lr

    def predict(self, x):
        return self.g.predict(x)


class ReferenceSide:
    def __init__(self, RefGraTa, model, lr, channels_last):
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.run = ReferenceRun(RefGraTa, model, "ent", "ent", lr)
        chosen = {id(p) for p in reference_collect_params(model)}
        self.named = [(n, p) for n, p in model.named_parameters() if id(p) in chosen]

    def named_params(self):
        return self.named

    def step(self, x):
        r = self.run.step(x.numpy().astype(np.float32))
        return r["cosine"], r["lr"]

    def predict(self, x):
        return self.run.predict(x)


def compare(a: dict, b: dict, steps: int, first_step_params_only: bool = False) -> dict:
    """Per-step cosine and lr differences and parameter differences of two trajectories."""
    rows = []
    for k in range(steps):
        rows.append({"step": k + 1, "cos_a": a["cosine"][k], "cos_b": b["cosine"][k],
                     "lr_a": a["lr"][k], "lr_b": b["lr"][k],
                     "d_cos": abs(a["cosine"][k] - b["cosine"][k]), "d_lr": abs(a["lr"][k] - b["lr"][k])})
    after = {}
    for k, pa in a["params"].items():
        pb = b["params"][k]
        diffs = {n: max_abs(pa[n], pb[n]) for n in pa}
        worst = max(diffs, key=diffs.get)
        moved = max(max_abs(pa[n], a["start"][n]) for n in pa)
        after[k] = {"param_max_abs_diff": diffs[worst], "worst_param": worst, "n_params": len(pa),
                    "n_over_tolerance": sum(d > TOL for d in diffs.values()), "largest_param_change": moved}
    same_set = sorted(a["params"][1]) == sorted(b["params"][1])
    ok = (same_set and all(r["d_cos"] <= TOL and r["d_lr"] <= TOL for r in rows)
          and all(c["param_max_abs_diff"] <= TOL for k, c in after.items() if k == 1 or not first_step_params_only))
    return {"same_parameter_set": same_set, "params_checked_after": [1] if first_step_params_only else sorted(after), "steps": rows, "after": after,
            "adapted_logits_max_abs_diff": max_abs(a["prediction"], b["prediction"]), "pass": bool(ok)}


def deterministic(RefGraTa, GraTa, load_model, ref_state_path, build_ref, x, steps, lr) -> dict:
    """aux=ent, pseudo=ent on four sides: ours contiguous / auto, reference
    contiguous / channels_last (the last is the float-noise floor of the layout)."""
    runs = {
        "ours_contiguous": OursSide(GraTa, load_model(ref_state_path), lr, "contiguous"),
        "ours_auto": OursSide(GraTa, load_model(ref_state_path), lr, "auto"),
        "ref_contiguous": ReferenceSide(RefGraTa, build_ref(), lr, channels_last=False),
        "ref_channels_last": ReferenceSide(RefGraTa, build_ref(), lr, channels_last=True),
    }
    traj = {name: trajectory(side, x, steps) for name, side in runs.items()}
    # Gating: contiguous layouts; cosine and lr at every step, parameters after
    # step 1. Parameters after the last step are reported: from step 2 on,
    # rounding differences (cosine summation order, lr in float64 here and
    # float32 there) are amplified by Adam, as the reference's own layout change
    # shows (docs/conformance.md).
    pairs = {
        "ours_contiguous vs ref_contiguous": ("ours_contiguous", "ref_contiguous", True),
        "ours_auto vs ref_channels_last": ("ours_auto", "ref_channels_last", False),
        "ours_auto vs ref_contiguous": ("ours_auto", "ref_contiguous", False),
        "ref_channels_last vs ref_contiguous": ("ref_channels_last", "ref_contiguous", False),
    }
    out = {"seconds": {k: v["seconds"] for k, v in traj.items()}, "pairs": {}}
    for label, (a, b, gating) in pairs.items():
        out["pairs"][label] = compare(traj[a], traj[b], steps, first_step_params_only=False)
        out["pairs"][label]["gating"] = gating
    out["pass"] = all(c["pass"] for c in out["pairs"].values() if c["gating"])
    return out


def randomised(RefGraTa, GraTa, load_model, ref_state_path, build_ref, x, steps, lr, seed) -> dict:
    np.random.seed(seed)  # the reference's augmentation draws from numpy's and Python's global streams
    import random
    random.seed(seed)
    torch.manual_seed(seed)
    ref_run = ReferenceRun(RefGraTa, build_ref(), "ent", "consis", lr)
    ours = GraTa(load_model(ref_state_path), aux_loss="ent", pseudo_loss="consis", optimizer="adam", lr=lr,
                 seed=seed)
    x_np = x.numpy().astype(np.float32)
    ref_rows, our_rows = [], []
    for _ in range(steps):
        ref_rows.append(ref_run.step(x_np))
        o = ours.step(x)
        our_rows.append({"cosine": o.cosine, "lr": o.lr})

    def summary(rows):
        cs, ls = [r["cosine"] for r in rows], [r["lr"] for r in rows]
        return {"cosine": cs, "lr": ls, "cosine_range": [min(cs), max(cs)], "lr_range": [min(ls), max(ls)]}

    return {"reference": summary(ref_rows), "ours": summary(our_rows),
            "reference_loop_image_changed_by": [r["loop_image_changed_by"] for r in ref_rows]}


def run_backbone(args, RefResUnet, RefGraTa, GraTa, load_model, backbone: str) -> dict:
    result: dict = {"backbone": backbone, "lr": args.lr}
    try:
        build_reference(RefResUnet, backbone, args.seed, 64)
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        result["reference_error"] = f"{type(exc).__name__}: {exc}"
        result["pass"] = None
        return result

    def build_ref():
        return build_reference(RefResUnet, backbone, args.seed, args.size)

    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 2))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last-Res_Unet.pth"
        ref = build_ref()
        torch.save(ref.state_dict(), path)
        ours = load_model(path)
        result["loaded_card"] = ours.card.name
        with torch.no_grad():
            ref_logits = ref(x)[0]
            eval_c = max_abs(ours(x), ref_logits)
            ours_cl = load_model(path).to(memory_format=torch.channels_last)
            eval_cl = max_abs(ours_cl(x.contiguous(memory_format=torch.channels_last)), ref_logits)
        result["eval_logits"] = {"max_abs_diff_contiguous": eval_c, "max_abs_diff_channels_last": eval_cl,
                                 "logit_range": [float(ref_logits.min()), float(ref_logits.max())]}
        result["deterministic"] = deterministic(RefGraTa, GraTa, load_model, path, build_ref, x, args.steps,
                                                args.lr)
        if not args.skip_consis:
            result["ent_consis"] = randomised(RefGraTa, GraTa, load_model, path, build_ref, x, args.steps,
                                              args.lr, args.seed)
    result["pass"] = bool(eval_c <= TOL and result["deterministic"]["pass"])
    return result


# --------------------------------------------------------------------------- report
def print_report(res: dict) -> None:
    bb = res["backbone"]
    print(f"\n=== backbone {bb} ===")
    if "reference_error" in res:
        print(f"reference ResUnet cannot be built: {res['reference_error']}")
        return
    e = res["eval_logits"]
    print(f"(a) eval logits max |ours - ref|: contiguous {e['max_abs_diff_contiguous']:.3e}, "
          f"channels_last {e['max_abs_diff_channels_last']:.3e}  (logits in [{e['logit_range'][0]:.3g}, "
          f"{e['logit_range'][1]:.3g}])")
    det = res["deterministic"]
    print("(b) aux=ent pseudo=ent, Adam lr %g, continual steps on the same image; seconds per run: %s"
          % (res.get("lr", 1e-4), ", ".join(f"{k} {v:.0f}" for k, v in det["seconds"].items())))
    for label, d in det["pairs"].items():
        a, b = label.split(" vs ")
        kind = (f"checked: cosine, lr every step; parameters after step(s) {d['params_checked_after']}"
                if d["gating"] else "reported: channels_last, float noise amplified by Adam")
        print(f"  {label}  [{kind}]  same trained set: {d['same_parameter_set']}")
        print(f"    {'step':>4} {'cos ' + a:>22} {'cos ' + b:>22} {'|dcos|':>9} {'lr ' + a:>21} "
              f"{'lr ' + b:>21} {'|dlr|':>9}")
        for r in d["steps"]:
            print(f"    {r['step']:>4} {r['cos_a']:>22.8f} {r['cos_b']:>22.8f} {r['d_cos']:>9.2e} "
                  f"{r['lr_a']:>21.6e} {r['lr_b']:>21.6e} {r['d_lr']:>9.2e}")
        for k, c in d["after"].items():
            print(f"    after {k} step(s): max |param diff| = {c['param_max_abs_diff']:.3e} ({c['worst_param']}); "
                  f"{c['n_over_tolerance']} of {c['n_params']} tensors over {TOL:g}; "
                  f"largest change from the source {c['largest_param_change']:.3e}")
        verdict = ("PASS" if d["pass"] else "FAIL") if d["gating"] else "-"
        print(f"    adapted prediction max |diff| = {d['adapted_logits_max_abs_diff']:.3e}   -> {verdict}")
    if "ent_consis" in res:
        c = res["ent_consis"]
        print("    aux=ent pseudo=consis (random on both sides; ranges only, no agreement claim):")
        for side in ("reference", "ours"):
            s = c[side]
            print(f"    {side:>9}: cosine {', '.join(f'{v:+.4f}' for v in s['cosine'])}; "
                  f"lr {', '.join(f'{v:.3e}' for v in s['lr'])}")
        changed = c["reference_loop_image_changed_by"]
        print(f"    reference TTA-loop image after the step differs from the clean image by (max abs) "
              f"{', '.join(f'{v:.3f}' for v in changed)}  (CPU in-place augmentation quirk)")
    print(f"overall: {'PASS' if res['pass'] else 'FAIL'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="checkout of github.com/Chen-Ziyang/GraTa")
    ap.add_argument("--backbone", action="append", choices=["resnet18", "resnet34", "resnet50"],
                    help="repeatable; default resnet34")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--skip-consis", action="store_true", help="skip the randomised ent/consis run")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    RefResUnet, RefGraTa = import_reference(args.reference.resolve())
    GraTa, load_model = import_ours()
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "numpy": np.__version__, "threads": torch.get_num_threads()},
               "settings": {"size": args.size, "steps": args.steps, "lr": args.lr, "seed": args.seed,
                            "tolerance": TOL},
               "backbones": []}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{args.size}x{args.size}, "
          f"{args.steps} steps, tolerance {TOL:g}")
    for bb in args.backbone or ["resnet34"]:
        try:
            res = run_backbone(args, RefResUnet, RefGraTa, GraTa, load_model, bb)
        except Exception as exc:  # noqa: BLE001 - one backbone failing must not hide the others
            res = {"backbone": bb, "error": traceback.format_exc(), "pass": False}
            print(f"\n=== backbone {bb} ===\nerror: {exc}")
        else:
            print_report(res)
        results["backbones"].append(res)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=lambda o: None if o is None else str(o)), encoding="utf-8")
        print(f"\nwrote {args.json}")
    verdicts = [r["pass"] for r in results["backbones"] if r["pass"] is not None]
    return 0 if verdicts and all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
