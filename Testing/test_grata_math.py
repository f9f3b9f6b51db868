"""The mathematics of one GraTa step, checked without the reference code.

Hand-computed cosine and learning rate for losses with known gradients, the
look-ahead point, the restore before the optimiser step, the ablations, frozen
weights, the non-finite guard, the consistency views, batched pseudo-labels and
the strong style augmentation. What these tests pin down was compared with the
authors' reference implementation by benchmarks/conformance/ (docs/conformance.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from GraTaSegmenterLib.adaptation import GraTa
from GraTaSegmenterLib.adaptation import augment, views
from GraTaSegmenterLib.adaptation.losses import pseudo_label
from GraTaSegmenterLib.models.resunet import ResUnet
from GraTaSegmenterLib.models.unet import UNet

BASE_LR = 1e-3


class Tiny(nn.Module):
    """One GroupNorm with known affine parameters: the only trained parameters."""

    spatial_dims = 2

    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(1, 3)
        with torch.no_grad():
            self.norm.weight.copy_(torch.tensor([1.2, 0.8, -0.5]))
            self.norm.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))

    def forward(self, x):
        return self.norm(x)


A_W = torch.tensor([0.3, -0.2, 0.5])  # aux loss (A_W . w) + (A_B . b): gradient (A_W, A_B) everywhere
A_B = torch.tensor([0.1, 0.4, -0.6])
T_W = torch.tensor([0.9, 1.1, 0.2])  # pseudo loss 0.5 ||theta - T||^2: gradient theta - T
T_B = torch.tensor([0.5, 0.0, -0.2])


def tiny_grata(aux_bias=True, **kwargs):
    torch.manual_seed(0)
    g = GraTa(Tiny(), lr=BASE_LR, seed=0, **kwargs)
    seen = []

    def aux_fn(ctx, x):
        w, b = g.params
        loss = (A_W * w).sum()
        return loss + (A_B * b).sum() if aux_bias else loss

    def pseudo_fn(ctx, x):
        w, b = g.params
        seen.append([w.detach().clone(), b.detach().clone()])
        return 0.5 * ((w - T_W) ** 2).sum() + 0.5 * ((b - T_B) ** 2).sum()

    g.aux_fn, g.pseudo_fn = aux_fn, pseudo_fn
    return g, seen


def x_small():
    return torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def theta0():
    m = Tiny()
    return m.norm.weight.detach().clone().double(), m.norm.bias.detach().clone().double()


def hand_cosine(aux, pse, pse_extra=()):
    """<aux, pse> / (||pse incl. extra|| ||aux|| + 1e-12), in float64."""
    inner = sum(float((a * p).sum()) for a, p in zip(aux, pse))
    n_aux = math.sqrt(sum(float((a * a).sum()) for a in aux))
    n_pse = math.sqrt(sum(float((p * p).sum()) for p in list(pse) + list(pse_extra)))
    return inner / (n_pse * n_aux + 1e-12)


def test_cosine_lr_look_ahead_and_sgd_update_by_hand():
    g, seen = tiny_grata(optimizer="sgd")
    w0, b0 = theta0()
    rec = g.step(x_small())

    # The pseudo loss is evaluated at theta - g_aux (raw gradient, no lr).
    w_look, b_look = w0 - A_W.double(), b0 - A_B.double()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0][0].double(), w_look, atol=1e-7, rtol=0)
    torch.testing.assert_close(seen[0][1].double(), b_look, atol=1e-7, rtol=0)

    gp_w, gp_b = w_look - T_W.double(), b_look - T_B.double()
    c = hand_cosine([A_W.double(), A_B.double()], [gp_w, gp_b])
    assert rec.applied and rec.skipped is None
    assert rec.cosine == pytest.approx(c, abs=1e-6)
    assert rec.lr == pytest.approx(BASE_LR * (rec.cosine + 1) ** 2 / 4, rel=1e-12)
    assert rec.lr == pytest.approx(BASE_LR * (c + 1) ** 2 / 4, rel=1e-5)

    # SGD, momentum 0.99, Nesterov, first step: update = (1 + 0.99) g_pse, applied
    # to the restored theta (not to the look-ahead point).
    w, b = (p.detach().double() for p in g.params)
    torch.testing.assert_close(w, w0 - rec.lr * 1.99 * gp_w, atol=2e-7, rtol=0)
    torch.testing.assert_close(b, b0 - rec.lr * 1.99 * gp_b, atol=2e-7, rtol=0)
    assert (w - (w_look - rec.lr * 1.99 * gp_w)).abs().min() > 0.1  # clearly not from theta - g_aux


def test_adam_first_step_is_lr_times_sign():
    g, _ = tiny_grata()  # Adam by default
    w0, b0 = theta0()
    rec = g.step(x_small())
    gp = [(w0 - A_W.double()) - T_W.double(), (b0 - A_B.double()) - T_B.double()]
    for p, start, grad in zip(g.params, (w0, b0), gp):
        expected = start - rec.lr * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(p.detach().double(), expected, atol=1e-7, rtol=0)


def test_cosine_norms_follow_the_reference():
    """The aux loss touches only the weight: the inner product and the aux norm
    run over parameters with both gradients, the pseudo norm over all
    parameters with a pseudo gradient; only the weight is looked ahead."""
    g, seen = tiny_grata(aux_bias=False, optimizer="sgd")
    w0, b0 = theta0()
    rec = g.step(x_small())
    torch.testing.assert_close(seen[0][0].double(), w0 - A_W.double(), atol=1e-7, rtol=0)
    torch.testing.assert_close(seen[0][1].double(), b0, atol=0, rtol=0)
    gp_w, gp_b = (w0 - A_W.double()) - T_W.double(), b0 - T_B.double()
    c = hand_cosine([A_W.double()], [gp_w], pse_extra=[gp_b])
    assert rec.cosine == pytest.approx(c, abs=1e-6)
    # Different from the cosine with the bias left out of the pseudo norm.
    assert abs(hand_cosine([A_W.double()], [gp_w]) - c) > 1e-2


def test_align_false_evaluates_pseudo_loss_at_theta():
    g, seen = tiny_grata(align=False, optimizer="sgd")
    w0, b0 = theta0()
    rec = g.step(x_small())
    torch.testing.assert_close(seen[0][0].double(), w0, atol=0, rtol=0)
    torch.testing.assert_close(seen[0][1].double(), b0, atol=0, rtol=0)
    gp_w, gp_b = w0 - T_W.double(), b0 - T_B.double()
    c = hand_cosine([A_W.double(), A_B.double()], [gp_w, gp_b])
    assert rec.cosine == pytest.approx(c, abs=1e-6)
    assert rec.lr == pytest.approx(BASE_LR * (c + 1) ** 2 / 4, rel=1e-5)
    torch.testing.assert_close(g.params[0].detach().double(), w0 - rec.lr * 1.99 * gp_w, atol=2e-7, rtol=0)
    assert g.name == "grata-noalign"


def test_dynamic_lr_false_uses_the_base_lr():
    g, _ = tiny_grata(dynamic_lr=False, optimizer="sgd")
    w0, _ = theta0()
    rec = g.step(x_small())
    assert rec.lr == BASE_LR
    assert rec.cosine is not None and rec.cosine < 0.999  # the cosine is still reported
    gp_w = (w0 - A_W.double()) - T_W.double()
    torch.testing.assert_close(g.params[0].detach().double(), w0 - BASE_LR * 1.99 * gp_w, atol=2e-7, rtol=0)


def test_non_finite_pseudo_loss_applies_no_update():
    g, _ = tiny_grata()
    before = [p.detach().clone() for p in g.params]
    g.pseudo_fn = lambda ctx, x: (g.params[0] * float("nan")).sum()
    rec = g.step(x_small())
    assert not rec.applied and rec.skipped
    assert rec.lr == 0.0
    for p, b in zip(g.params, before):
        assert torch.equal(p.detach(), b)  # look-ahead undone, no optimiser step
    assert all(p.grad is None for p in g.params)
    assert not g.optimizer.state  # the optimiser never stepped


def test_frozen_weights_bit_identical_after_three_steps():
    torch.manual_seed(0)
    model = ResUnet("resnet18")
    g = GraTa(model, seed=0)  # ent + consis, Adam
    trained = set(g.param_names)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trained}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    norms = [p.detach().clone() for p in g.params]
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        assert g.step(x).applied
    assert frozen and buffers  # num_batches_tracked remain
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), n
    assert set(n for n, _ in model.named_buffers()) == set(buffers)
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert any(not torch.equal(p.detach(), s) for p, s in zip(g.params, norms))


# --------------------------------------------------------------------------- views
def test_views_followed_by_inverse_are_identity():
    x2 = torch.rand(2, 3, 5, 5)
    x3 = torch.rand(2, 1, 3, 4, 4)
    for vs, x in ((views.VIEWS_2D, x2), (views.VIEWS_3D, x3)):
        names = [v.name for v in vs]
        assert len(set(names)) == len(names)
        for v in vs:
            assert torch.equal(v.inverse(v.forward(x)), x), v.name
            assert torch.equal(v.forward(v.inverse(x)), x), v.name
    assert len(views.VIEWS_2D) == 6 and len(views.VIEWS_3D) == 7


def test_2d_views_match_the_reference_definitions():
    """The reference's weak views: horizontal flip (width axis), vertical flip
    (height axis), rotations by 90/180/270 degrees; as torch.rot90 over (H, W)
    they are k = 1, 2, 3."""
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    expected = {
        "identity": x,
        "flip_horizontal": x.flip(-1),
        "flip_vertical": x.flip(-2),
        "rotate_90": torch.rot90(x, 1, dims=(-2, -1)),
        "rotate_180": torch.rot90(x, 2, dims=(-2, -1)),
        "rotate_270": torch.rot90(x, 3, dims=(-2, -1)),
    }
    got = {v.name: v.forward(x) for v in views.VIEWS_2D}
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert torch.equal(got[name], want), name
    # 3D: the same rotations in the H-W plane, flips along W, H and D.
    x3 = torch.rand(1, 1, 2, 3, 3)
    got3 = {v.name: v.forward(x3) for v in views.VIEWS_3D}
    for k, name in ((1, "rotate_90_hw"), (2, "rotate_180_hw"), (3, "rotate_270_hw")):
        assert torch.equal(got3[name], torch.rot90(x3, k, dims=(-2, -1))), name
    for dim, name in ((-1, "flip_w"), (-2, "flip_h"), (-3, "flip_d")):
        assert torch.equal(got3[name], x3.flip(dim)), name


@pytest.mark.parametrize("kind", ["resunet18_2d", "unet_3d"])
def test_batched_pseudo_label_equals_sequential(kind):
    torch.manual_seed(0)
    if kind == "resunet18_2d":
        model = ResUnet("resnet18", heads=())
        x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    else:
        model = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), norm="batch")
        x = torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(5))
    g = GraTa(model, seed=0, memory_format="contiguous", batch_views=False)
    with torch.no_grad():  # non-trivial affine parameters
        for p in g.params:
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ctx = g.loss_context
    sequential = pseudo_label(ctx, x)
    for views_per_pass in (7, 3):  # all views in one pass; passes of three (the CUDA default)
        ctx.batch_views = views_per_pass
        batched = pseudo_label(ctx, x)
        assert batched.shape == sequential.shape == (x.shape[0], 2, *x.shape[2:])
        torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=0)
    # Per-chunk statistics matter: statistics over all views at once differ.
    assert not torch.allclose(ctx.activate(ctx.forward(torch.cat([x, x.flip(-1)]))[: x.shape[0]]),
                              ctx.activate(ctx.forward(x)), atol=1e-5)


# --------------------------------------------------------------------------- augmentation
def test_style_parameter_ranges_and_probabilities():
    n, c = 4000, 3
    p = augment.draw_style_parameters(n, c, torch.Generator().manual_seed(0))
    tol = 0.03  # about 4 standard errors at n = 4000

    def per_sample_applied(t, neutral):
        on = t != neutral
        assert torch.equal(on.all(1), on.any(1))  # one decision per sample
        return on[:, 0]

    for t, lo, hi in ((p.brightness, 0.5, 1.5), (p.contrast, 0.5, 1.5), (p.gamma, 0.5, 2.0)):
        on = per_sample_applied(t, 1.0)
        assert float(on.float().mean()) == pytest.approx(0.75, abs=tol)
        vals = t[on]
        assert float(vals.min()) >= lo and float(vals.max()) <= hi
    # Contrast and gamma: below and above 1 with equal odds (batchgenerators' rule).
    for t in (p.contrast, p.gamma):
        vals = t[t != 1.0]
        assert float((vals < 1).float().mean()) == pytest.approx(0.5, abs=tol)
    # Brightness: uniform on [0.5, 1.5].
    vals = p.brightness[p.brightness != 1.0]
    assert float(vals.mean()) == pytest.approx(1.0, abs=0.01)
    assert float((vals < 1).float().mean()) == pytest.approx(0.5, abs=tol)

    assert p.noise_std.shape == (n,)
    on = p.noise_std > 0
    assert float(on.float().mean()) == pytest.approx(0.5, abs=tol)
    assert float(p.noise_std.min()) >= 0 and float(p.noise_std.max()) <= 0.05
    assert float(p.noise_std[on].mean()) == pytest.approx(0.025, abs=0.002)

    sig = p.blur_sigma
    on = sig > 0
    assert bool(((sig == 0) | ((sig >= 0.5) & (sig <= 1.5))).all())
    sample_on = on.any(1)
    # p 0.5 per sample, then p 0.5 per channel: some channel blurred with p 0.5 (1 - 0.5**3).
    assert float(sample_on.float().mean()) == pytest.approx(0.5 * (1 - 0.5 ** c), abs=tol)
    assert float(on.float().mean()) == pytest.approx(0.25, abs=tol)


@pytest.mark.parametrize("size", [(37, 29), (5, 6)])
def test_blur_equals_scipy_gaussian_filter(size):
    rng = np.random.default_rng(0)
    img = rng.random((1, 3, *size)).astype(np.float32)
    sigmas = torch.tensor([[0.6, 0.0, 1.5]])
    out = augment.blur(torch.from_numpy(img), sigmas).numpy()
    for ch, s in enumerate(sigmas[0].tolist()):
        want = img[0, ch] if s == 0 else ndimage.gaussian_filter(img[0, ch].astype(np.float64), s,
                                                                 mode="reflect", truncate=4.0)
        np.testing.assert_allclose(out[0, ch], want, atol=1e-5, rtol=0)


def test_strong_style_output_is_min_max_normalised():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(6)) * 0.5 + 0.2
    for _ in range(10):
        y = augment.strong_style(x, g)
        assert y.shape == x.shape and torch.isfinite(y).all()
        flat = y.flatten(1)
        torch.testing.assert_close(flat.min(1).values, torch.zeros(4), atol=1e-6, rtol=0)
        torch.testing.assert_close(flat.max(1).values, torch.ones(4), atol=1e-6, rtol=0)
