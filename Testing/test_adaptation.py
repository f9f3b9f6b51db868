"""The adaptation methods as a user of the engine sees them: what they train,
what they leave alone, how they reset, resume and refuse bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from GraTaSegmenterLib.adaptation import BNAdapt, GraTa, NoAdapt, Tent, make_method
from GraTaSegmenterLib.adaptation.losses import LossContext, entropy
from GraTaSegmenterLib.errors import ConfigurationError, InputError, OutOfMemory
from GraTaSegmenterLib.models.resunet import ResUnet
from GraTaSegmenterLib.preprocessing import normalise_minmax, normalise_window

from conftest import build, fundus_card, volume_card


def _trained_model():
    """A tiny fundus UNet with non-trivial running statistics."""
    net = build(fundus_card())
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 3, 32, 32) * 0.5)
    net.eval()
    return net


def test_grata_trains_exactly_the_norm_affine_parameters():
    net = build(volume_card("group"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    method = GraTa(net, seed=1, lr=1e-2)
    x = torch.rand(1, 1, 8, 8, 8)
    for _ in range(3):
        assert method.step(x).applied
    norm_names = set(method.param_names)
    expected = {f"{m}.{p}" for m, mod in net.named_modules() if isinstance(mod, torch.nn.GroupNorm)
                for p in ("weight", "bias")}
    assert norm_names == expected and len(expected) == 2 * 6  # six GroupNorms
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= norm_names
    assert all(torch.equal(before[k], after[k]) for k in before if k not in norm_names)


def test_none_reproduces_the_source_model():
    net = _trained_model()
    reference = copy.deepcopy(net).eval()
    x = torch.rand(2, 3, 32, 32)
    method = NoAdapt(net)
    record = method.step(x)
    assert record.applied is False and record.cosine is None and record.lr is None
    with torch.no_grad():
        assert torch.allclose(method.predict(x), reference(x), atol=1e-6)


def test_bn_adapt_uses_batch_statistics():
    net = _trained_model()
    reference = copy.deepcopy(net).train()  # train mode: batch statistics
    x = torch.rand(2, 3, 32, 32)
    method = BNAdapt(net)
    with torch.no_grad():
        assert torch.allclose(method.predict(x), reference(x), atol=1e-5)
        assert not torch.allclose(method.predict(x), copy.deepcopy(reference).eval()(x), atol=1e-3)


def test_tent_steps_with_constant_lr_and_lowers_entropy():
    method = Tent(_trained_model(), lr=1e-2, seed=0)
    x = torch.rand(2, 3, 32, 32)
    losses = [method.step(x) for _ in range(5)]
    assert all(r.lr == 1e-2 and r.cosine is None and r.applied for r in losses)
    assert losses[-1].loss < losses[0].loss


def test_grata_record_and_dynamic_lr():
    method = GraTa(_trained_model(), seed=0)
    record = method.step(torch.rand(1, 3, 32, 32))
    assert record.step == 1 and record.applied and record.skipped is None
    assert -1.0 <= record.cosine <= 1.0
    assert record.lr == pytest.approx(1e-4 * (record.cosine + 1) ** 2 / 4, rel=1e-6)  # float32, as the reference
    assert record.aux_loss > 0 and record.pseudo_loss > 0 and record.seconds > 0


def test_same_seed_same_steps_and_reset_restores_source():
    x = torch.rand(1, 3, 32, 32)
    net = _trained_model()
    source = {k: v.clone() for k, v in net.state_dict().items()}
    a = GraTa(copy.deepcopy(net), seed=3)
    b = GraTa(net, seed=3)
    first = [a.step(x).cosine for _ in range(2)]
    assert [b.step(x).cosine for _ in range(2)] == first
    b.reset()
    for name, p in zip(b.param_names, b.params):
        assert torch.equal(p, source[name])
    assert b.steps_done == 0 and not b.optimizer.state
    assert [b.step(x).cosine for _ in range(2)] == first


def test_saved_state_resumes_exactly(tmp_path):
    x1, x2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    net = _trained_model()
    whole = GraTa(copy.deepcopy(net), seed=5)
    whole.step(x1)
    expected = whole.step(x2)

    first = GraTa(copy.deepcopy(net), seed=5)
    first.step(x1)
    first.save_state(tmp_path / "state.pt")
    second = GraTa(copy.deepcopy(net), seed=5)
    second.load_state(tmp_path / "state.pt")
    resumed = second.step(x2)

    assert resumed.cosine == expected.cosine and resumed.lr == expected.lr and resumed.step == 2
    assert all(torch.equal(p, q) for p, q in zip(second.params, whole.params))


def test_state_of_another_configuration_is_refused(tmp_path):
    tent = Tent(_trained_model())
    tent.save_state(tmp_path / "tent.pt")
    with pytest.raises(ConfigurationError, match="method 'tent'"):
        GraTa(_trained_model()).load_state(tmp_path / "tent.pt")
    (tmp_path / "junk.pt").write_text("no")
    with pytest.raises(ConfigurationError, match="cannot read"):
        GraTa(_trained_model()).load_state(tmp_path / "junk.pt")


def test_softmax_3d_model_adapts():
    method = GraTa(build(volume_card("instance")), seed=0, lr=1e-3)
    x = torch.rand(1, 1, 8, 16, 16)
    record = method.step(x)
    assert record.applied and np.isfinite(record.cosine)
    assert method.predict(x).shape == (1, 3, 8, 16, 16)


def test_softmax_entropy_is_the_class_entropy():
    net = build(volume_card())
    ctx = LossContext(model=net, output="softmax", spatial_dims=3, generator=torch.Generator())
    x = torch.rand(1, 1, 8, 8, 8)
    p = torch.softmax(net(x), 1)
    expected = -(p * torch.log(p + 1e-6)).sum(1).mean()
    assert entropy(ctx, x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_bf16_mode_runs_and_agrees_roughly():
    x = torch.rand(1, 3, 64, 64)
    net = ResUnet("resnet18", heads=())
    exact = GraTa(copy.deepcopy(net), seed=0)
    fast = GraTa(net, seed=0, precision="bf16", batch_views=True)
    assert fast.precision == "bf16"
    r_exact, r_fast = exact.step(x), fast.step(x)
    assert r_fast.applied and abs(r_fast.cosine - r_exact.cosine) < 0.1
    p_exact, p_fast = torch.sigmoid(exact.predict(x)), torch.sigmoid(fast.predict(x))
    assert p_fast.dtype == torch.float32
    assert ((p_exact > 0.5) == (p_fast > 0.5)).float().mean() > 0.95


def test_non_finite_parameters_skip_the_step():
    net = _trained_model()
    method = Tent(net)
    with torch.no_grad():
        method.params[0][0] = float("nan")
    before = [p.clone() for p in method.params]
    record = method.step(torch.rand(1, 3, 32, 32))
    assert not record.applied and record.skipped == "non-finite loss or gradient"
    assert all(torch.equal(p, q) or (p.isnan() == q.isnan()).all() for p, q in zip(method.params, before))


@pytest.mark.parametrize("x, message", [
    (torch.rand(1, 1, 32, 32), "expects 3 channel"),
    (torch.rand(3, 32, 32), "4-dimensional"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
    (torch.rand(1, 3, 32, 32) * 255, r"\[0, 1\]"),
    (torch.rand(1, 3, 31, 31), "multiple of 2"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
])
def test_bad_input_is_refused_clearly(x, message):
    method = GraTa(_trained_model())
    before = x.clone()
    with pytest.raises(InputError, match=message):
        method.step(x)
    assert torch.equal(x, before) or torch.isnan(x).all()


@pytest.mark.parametrize("options, message", [
    ({"aux_loss": "recon"}, "needs the recon head"),
    ({"pseudo_loss": "dice"}, "unknown loss"),
    ({"optimizer": "rmsprop"}, "optimizer must be"),
    ({"lr": -1.0}, "positive"),
    ({"precision": "fp8"}, "precision"),
])
def test_bad_configuration_is_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        GraTa(_trained_model(), **options)


def test_make_method_by_name():
    assert isinstance(make_method("tent", _trained_model(), lr=1e-3, aux_loss="ent"), Tent)
    assert make_method("grata", _trained_model(), align=False).name == "grata-noalign"
    with pytest.raises(ConfigurationError, match="unknown method"):
        make_method("sar", _trained_model())


def test_out_of_memory_is_translated(monkeypatch):
    method = GraTa(_trained_model())

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(method.loss_context, "forward", boom)
    with pytest.raises(OutOfMemory, match="out of memory on the CPU while adapting") as caught:
        method.step(torch.rand(1, 3, 32, 32))
    assert "downsample the image" in str(caught.value) and "--device cpu" not in str(caught.value)


def test_out_of_memory_advice_fits_the_device():
    from GraTaSegmenterLib.errors import oom_advice

    assert "--device cpu" in oom_advice("cuda", "adapting") and "smaller batch" in oom_advice("cuda", "adapting")
    assert "--device cpu" not in oom_advice("cpu", "adapting") and "batch" not in oom_advice("cpu", "adapting")


def test_normalisation_refuses_constant_and_non_finite_images():
    out = normalise_minmax(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    with pytest.raises(InputError, match="constant"):
        normalise_minmax(np.full((4, 4), 7.0))
    with pytest.raises(InputError, match="NaN or infinite"):
        normalise_minmax(np.array([1.0, np.inf]))
    assert normalise_window(np.array([-2000.0, 40.0, 3000.0]), -100, 300) == pytest.approx([0.0, 0.35, 1.0])


@pytest.mark.parametrize("aux", ["recon", "denoise", "supres", "rotate"])
def test_auxiliary_head_losses_train_their_branch(aux):
    net = ResUnet("resnet18", heads=(aux,))
    method = GraTa(net, aux_loss=aux, pseudo_loss="ent", seed=0, memory_format="contiguous")
    head_bn = [n for n in method.param_names if n.startswith(aux)]
    before = {n: p.clone() for n, p in zip(method.param_names, method.params)}
    record = method.step(torch.rand(2, 3, 64, 64))
    assert record.applied and np.isfinite(record.cosine) and record.aux_loss > 0
    changed = {n for n, p in zip(method.param_names, method.params) if not torch.equal(p, before[n])}
    # the pseudo loss (entropy of the segmentation) gives the auxiliary branch no gradient,
    # so, as in the reference, only segmentation-path parameters move
    assert changed and not changed & set(head_bn)
    if aux != "rotate":
        assert head_bn  # the image branches have BatchNorm layers of their own


def test_views_per_pass_choice():
    net = _trained_model()
    assert GraTa(copy.deepcopy(net)).loss_context.batch_views == 1  # CPU default: one view at a time
    assert GraTa(copy.deepcopy(net), batch_views=True).loss_context.batch_views == 7
    assert GraTa(copy.deepcopy(net), batch_views=2).loss_context.batch_views == 2
    with pytest.raises(ConfigurationError, match="batch_views"):
        GraTa(net, batch_views=0)


def test_user_choices_match_the_engine():
    from GraTaSegmenterLib import choices
    from GraTaSegmenterLib.adaptation.losses import LOSSES
    from GraTaSegmenterLib.adaptation.methods import METHODS

    assert set(choices.LOSSES) == set(LOSSES)
    assert set(choices.METHODS) == set(METHODS)
