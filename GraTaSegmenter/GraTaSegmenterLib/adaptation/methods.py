"""Test-time adaptation methods behind one interface: GraTa and its baselines.

Every method wraps a segmentation network and offers

* ``step(x) -> StepRecord``: one adaptation step on a batch ``x`` in [0, 1];
* ``predict(x) -> logits``: no gradient, same normalisation mode as adaptation;
* ``reset()``: back to the source weights with a fresh optimiser;
* ``state_dict()`` / ``load_state_dict()``: the adapted state, to resume later.

The method takes the network over: it switches its normalisation layers to
the mode adaptation needs (batch statistics) and trains their affine
parameters in place, as TENT and the GraTa reference code do.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..choices import PRECISIONS
from ..errors import ConfigurationError, InputError, OutOfMemory, is_out_of_memory, oom_advice
from .losses import LossContext, entropy, get_loss
from .norm import configure_for_adaptation, use_batch_statistics

OPTIMIZERS = ("adam", "sgd", "adamw")
COSINE_EPS = 1e-12
# What to do about a saved state that does not fit, said for the command line and the panel
# alike (the panel passes its continual state to the engine as --load-state).
START_AFRESH = "start afresh without --load-state (in the Slicer panel: Reset adaptation)"


def _load_failure(exc: BaseException) -> str:
    """torch.load's reason in one line. Its weights-only refusal is a page of text that also
    suggests loading with ``weights_only=False``, i.e. running the file's code: keep only the
    unpickler's own reason."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip()
        reason = reason.split(". Check the documentation")[0].split(" Check the documentation")[0]
        return f"it holds something other than plain tensors: {reason.rstrip('.')}"
    return text[:300]


@dataclass
class StepRecord:
    """What one adaptation step did. ``None`` where a method has no such value.

    ``applied`` is False when the step changed nothing: a method without
    gradient steps, or a step skipped because a loss, a gradient or the cosine
    was not finite (``skipped`` then says which).
    """

    step: int
    method: str
    cosine: float | None
    lr: float | None
    aux_loss: float | None
    pseudo_loss: float | None
    loss: float | None
    seconds: float
    applied: bool
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _spatial_dims(model: nn.Module, default: int = 2) -> int:
    card = getattr(model, "card", None)
    if card is not None:
        return card.spatial_dims
    return getattr(model, "spatial_dims", default)


def _output_kind(model: nn.Module) -> str:
    card = getattr(model, "card", None)
    return card.output if card is not None else "sigmoid"


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


class Method:
    """Common machinery: input checks, device placement, memory layout,
    precision, timing. Subclasses implement :meth:`_step`."""

    name = "method"

    def __init__(self, model: nn.Module, *, seed: int | None = None, precision: str = "fp32",
                 memory_format: str = "auto", batch_views: bool | int | None = None):
        if precision not in PRECISIONS:
            raise ConfigurationError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.model = model
        self.spatial_dims = _spatial_dims(model)
        self.output = _output_kind(model)
        self.device = _device_of(model)
        self.precision = precision if precision == "fp32" or bf16_supported(self.device) else "fp32"
        self.memory_format = self._memory_format(memory_format)
        self.model.to(memory_format=self.memory_format)
        self.seed = seed if seed is not None else int(torch.seed() % (2**63))
        self.generator = torch.Generator().manual_seed(self.seed)
        self.steps_done = 0
        self.loss_context = LossContext(
            model=model, output=self.output, spatial_dims=self.spatial_dims, generator=self.generator,
            autocast=self._autocast,
            batch_views=self._views_per_pass(batch_views),
            memory_format=self.memory_format,
            view_axes=getattr(model, "consistency_axes", None),
        )

    # -- placement and precision -------------------------------------------------
    def _views_per_pass(self, choice: bool | int | None) -> int:
        """How many consistency views share one forward pass: ``False`` or 1 one at a
        time, ``True`` all of them, an integer that many; ``None`` (auto) batches on
        CUDA, where a larger batch fills the GPU, in passes of three views, which
        keeps the peak memory near TENT's. On a CPU batching does not pay."""
        if choice is None:
            return 3 if self.device.type == "cuda" else 1
        if isinstance(choice, bool):
            return 7 if choice else 1
        if not isinstance(choice, int) or choice < 1:
            raise ConfigurationError(f"batch_views must be True, False or a positive number of views, "
                                     f"not {choice!r}")
        return choice

    def _memory_format(self, choice: str) -> torch.memory_format:
        if choice not in ("auto", "channels_last", "contiguous"):
            raise ConfigurationError("memory_format must be 'auto', 'channels_last' or 'contiguous'")
        if choice == "contiguous" or self.device.type not in ("cpu", "cuda"):
            return torch.contiguous_format
        return torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _prepare(self, x: Any) -> torch.Tensor:
        """Check a batch and move it to the model's device."""
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError):
                raise InputError(f"expected an image batch (array or tensor), got {type(x).__name__}") from None
        if not x.is_floating_point():
            raise InputError(f"expected a float image batch in [0, 1], got {x.dtype}; normalise it first")
        want = 2 + self.spatial_dims
        if x.ndim != want:
            layout = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise InputError(f"this is a {self.spatial_dims}D model: expected a {want}-dimensional batch "
                             f"{layout}, got shape {tuple(x.shape)}")
        card = getattr(self.model, "card", None)
        if card is not None and x.shape[1] != card.input_channels:
            raise InputError(f"the model expects {card.input_channels} channel(s), the image has {x.shape[1]}; "
                             f"choose a {'colour (RGB)' if card.input_channels == 3 else 'single-channel'} image "
                             f"or another model")
        multiple = getattr(self.model, "size_multiple", 1)
        if any(s % multiple for s in x.shape[2:]):
            raise InputError(f"image size {tuple(x.shape[2:])} is not a multiple of {multiple}; "
                             f"resize it to the model's input size")
        x = x.to(self.device, torch.float32, non_blocking=True)
        finite, lo, hi = torch.stack([torch.isfinite(x).all().float(), x.min(), x.max()]).tolist()
        if finite < 1:
            raise InputError("the image batch contains NaN or infinite values; fix the image first")
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise InputError(f"image values must lie in [0, 1] (min-max normalised), got [{lo:g}, {hi:g}]")
        return x.contiguous(memory_format=self.memory_format)

    # -- public interface ------------------------------------------------------
    def step(self, x: Any) -> StepRecord:
        x = self._prepare(x)
        start = time.perf_counter()
        with self._out_of_memory("adapting"):
            record = self._step(x)
        self.steps_done += 1
        record.step = self.steps_done
        record.seconds = time.perf_counter() - start
        return record

    @torch.no_grad()
    def predict(self, x: Any) -> torch.Tensor:
        x = self._prepare(x)
        with self._out_of_memory("predicting"):
            return self.loss_context.forward(x).contiguous()

    def reset(self) -> None:
        self.steps_done = 0
        self.generator.manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.name, "steps_done": self.steps_done, "generator": self.generator.get_state()}

    def _check_compatible(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.name:
            raise ConfigurationError(f"the saved adaptation state is of method {state.get('method')!r}, "
                                     f"not {self.name!r}; choose that method or " + START_AFRESH)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_compatible(state)
        self.steps_done = int(state["steps_done"])
        self.generator.set_state(state["generator"])

    @contextlib.contextmanager
    def _out_of_memory(self, doing: str):
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - translated or re-raised
            if is_out_of_memory(exc):
                self.model.zero_grad(set_to_none=True)
                raise OutOfMemory(oom_advice(self.device.type, doing)) from None
            raise

    def _record(self, **values: Any) -> StepRecord:
        base = dict(step=0, method=self.name, cosine=None, lr=None, aux_loss=None, pseudo_loss=None,
                    loss=None, seconds=0.0, applied=False, skipped=None)
        base.update(values)
        return StepRecord(**base)

    def _step(self, x: torch.Tensor) -> StepRecord:
        raise NotImplementedError


class NoAdapt(Method):
    """The source model as trained: running statistics, no adaptation."""

    name = "none"

    def __init__(self, model: nn.Module, **kwargs: Any):
        super().__init__(model, **kwargs)
        self.model.eval()

    def _step(self, x: torch.Tensor) -> StepRecord:
        return self._record()


class BNAdapt(Method):
    """Normalise with the statistics of the test batch; no gradient step."""

    name = "bn"

    def __init__(self, model: nn.Module, **kwargs: Any):
        super().__init__(model, **kwargs)
        use_batch_statistics(self.model)
        self.model.requires_grad_(False)

    def _step(self, x: torch.Tensor) -> StepRecord:
        return self._record()


class GradientMethod(Method):
    """Shared by TENT and GraTa: the trained parameters, the optimiser, the
    source copy for :meth:`reset`, the finiteness guard and saved state."""

    def __init__(self, model: nn.Module, *, optimizer: str = "adam", lr: float = 1e-4, **kwargs: Any):
        if optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"optimizer must be one of {OPTIMIZERS}, not {optimizer!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigurationError(f"the learning rate must be a positive number, not {lr!r}")
        super().__init__(model, **kwargs)
        try:
            named = configure_for_adaptation(self.model)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.source = [p.detach().clone() for p in self.params]
        self.optimizer_name = optimizer
        self.base_lr = float(lr)
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.params, lr=self.base_lr, betas=(0.9, 0.999), weight_decay=0.0)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.params, lr=self.base_lr, momentum=0.99, nesterov=True)
        # The reference builds AdamW with PyTorch's default weight decay (0.01).
        return torch.optim.AdamW(self.params, lr=self.base_lr, betas=(0.9, 0.999))

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            for p, s in zip(self.params, self.source):
                p.copy_(s)
        self.optimizer = self._make_optimizer()

    def _apply(self, lr: float | torch.Tensor) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["params"] = {n: p.detach().to("cpu").clone() for n, p in zip(self.param_names, self.params)}
        state["optimizer"] = self.optimizer.state_dict()
        state["optimizer_name"] = self.optimizer_name
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state["params"]
        if sorted(saved) != sorted(self.param_names) or state.get("optimizer_name") != self.optimizer_name:
            raise ConfigurationError("the saved adaptation state was made with another model or optimiser; "
                                     + START_AFRESH)
        with torch.no_grad():
            for n, p in zip(self.param_names, self.params):
                if saved[n].shape != p.shape:
                    raise ConfigurationError(f"saved parameter {n} has another shape; " + START_AFRESH)
                p.copy_(saved[n])
        self.optimizer.load_state_dict(state["optimizer"])

    def save_state(self, path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (loadable with weights_only)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(self.state_dict(), tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_state(self, path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable state is the same user error
            raise ConfigurationError(f"cannot read the adaptation state {path} ({_load_failure(exc)}); "
                                     + START_AFRESH) from None
        self.load_state_dict(state)


def _finite(*tensors: torch.Tensor) -> torch.Tensor:
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all()


class Tent(GradientMethod):
    """TENT (Wang et al., ICLR 2021): descend the prediction entropy (the
    reference's entropy, see :func:`losses.entropy`) with a constant lr."""

    name = "tent"

    def _step(self, x: torch.Tensor) -> StepRecord:
        self.optimizer.zero_grad(set_to_none=True)
        loss = entropy(self.loss_context, x)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        values = torch.stack([loss.detach(), _finite(loss.detach(), norm).float()]).tolist()
        if values[1] < 1:
            self.optimizer.zero_grad(set_to_none=True)
            return self._record(loss=values[0], lr=0.0, skipped="non-finite loss or gradient")
        self._apply(self.base_lr)
        return self._record(loss=values[0], lr=self.base_lr, applied=True)


class GraTa(GradientMethod):
    """GraTa (Chen et al., AAAI 2025): gradient alignment with a dynamic lr.

    One step: gradient of the auxiliary loss g_aux at theta; look-ahead to
    theta - g_aux (raw gradient, no lr); gradient of the pseudo loss g_pse at
    the look-ahead point; back to theta; cosine c of g_aux and g_pse over all
    trained parameters; optimiser step on g_pse with lr = base_lr (c+1)^2/4.

    ``align=False`` computes g_pse at theta (no look-ahead) and
    ``dynamic_lr=False`` keeps lr = base_lr: the paper's two ablations.
    """

    name = "grata"

    def __init__(self, model: nn.Module, aux_loss: str = "ent", pseudo_loss: str = "consis",
                 optimizer: str = "adam", lr: float = 1e-4, align: bool = True, dynamic_lr: bool = True,
                 seed: int | None = None, **kwargs: Any):
        self.aux_fn = get_loss(aux_loss, model)
        self.pseudo_fn = get_loss(pseudo_loss, model)
        super().__init__(model, optimizer=optimizer, lr=lr, seed=seed, **kwargs)
        self.aux_loss_name, self.pseudo_loss_name = aux_loss, pseudo_loss
        self.align, self.dynamic_lr = bool(align), bool(dynamic_lr)
        if not (self.align and self.dynamic_lr):
            self.name = "grata" + ("" if self.align else "-noalign") + ("" if self.dynamic_lr else "-nodynlr")

    def _step(self, x: torch.Tensor) -> StepRecord:
        params = self.params
        self.optimizer.zero_grad(set_to_none=True)
        aux = self.aux_fn(self.loss_context, x)
        aux.backward()
        g_aux = [p.grad for p in params]
        with torch.no_grad():
            looked = [p for p, g in zip(params, g_aux) if g is not None]
            if self.align:
                saved = [p.detach().clone() for p in looked]
                torch._foreach_sub_(looked, [g for g in g_aux if g is not None])
        self.optimizer.zero_grad(set_to_none=True)
        pse = self.pseudo_fn(self.loss_context, x)
        pse.backward()
        with torch.no_grad():
            if self.align:
                torch._foreach_copy_(looked, saved)
            cosine, norms_finite = self._cosine(g_aux)
            # lr = base_lr (c+1)^2/4, evaluated in float32 on the device as the reference does,
            # so that the very same number reaches the optimiser.
            lr_t = self.base_lr * (0.25 * ((cosine + 1) ** 2)) if self.dynamic_lr else torch.zeros_like(cosine)
            values = torch.stack([aux.detach(), pse.detach(), cosine, lr_t,
                                  _finite(aux.detach(), pse.detach(), cosine, norms_finite).float()]).tolist()
        aux_v, pse_v, cos_v, lr_v, ok = values
        if ok < 1:
            self.optimizer.zero_grad(set_to_none=True)
            return self._record(cosine=cos_v, lr=0.0, aux_loss=aux_v, pseudo_loss=pse_v, loss=pse_v,
                                skipped="non-finite loss, gradient or cosine")
        lr = lr_v if self.dynamic_lr else self.base_lr
        # The reference hands Adam the lr as a float32 tensor, so that Adam's step size is
        # computed in float32; a host tensor does the same without a device synchronisation.
        self._apply(torch.tensor(lr, dtype=torch.float32) if self.dynamic_lr else lr)
        return self._record(cosine=cos_v, lr=lr, aux_loss=aux_v, pseudo_loss=pse_v, loss=pse_v, applied=True)

    def _cosine(self, g_aux: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine of the two gradients as the reference computes it: the inner
        product and the auxiliary norm over parameters that have both
        gradients, the pseudo norm over all parameters with a pseudo gradient.
        Also returns the finiteness flag of the norms (covers every element)."""
        both_aux, both_pse, pse_all = [], [], []
        for p, ga in zip(self.params, g_aux):
            if p.grad is None:
                continue
            pse_all.append(p.grad)
            if ga is not None:
                both_aux.append(ga)
                both_pse.append(p.grad)
        if not both_aux:
            raise ConfigurationError("the auxiliary and pseudo losses share no trained parameter; "
                                     "choose other losses")
        # Accumulated one parameter at a time, in module order, like the reference: a
        # different summation order changes the last bits of the cosine, and Adam turns
        # last-bit differences of near-zero gradients into full-size parameter differences.
        inner = torch.zeros((), device=both_aux[0].device)
        for a, b in zip(both_aux, both_pse):
            inner = inner + (a * b).sum()
        norm_pse = torch.stack([g.norm(p=2) for g in pse_all]).norm(p=2)
        norm_aux = torch.stack([g.norm(p=2) for g in both_aux]).norm(p=2)
        cosine = inner / (norm_pse * norm_aux + COSINE_EPS)
        return cosine, torch.isfinite(norm_pse) & torch.isfinite(norm_aux)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["losses"] = [self.aux_loss_name, self.pseudo_loss_name]
        return state

    def _check_compatible(self, state: dict[str, Any]) -> None:
        super()._check_compatible(state)
        if list(state.get("losses", [])) != [self.aux_loss_name, self.pseudo_loss_name]:
            raise ConfigurationError("the saved adaptation state used other losses; " + START_AFRESH)


METHODS = {"none": NoAdapt, "bn": BNAdapt, "tent": Tent, "grata": GraTa}


def make_method(name: str, model: nn.Module, **options: Any) -> Method:
    """Build a method by its command-line name, ignoring options it has no use for."""
    if name not in METHODS:
        raise ConfigurationError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    common = {k: options[k] for k in ("seed", "precision", "memory_format", "batch_views") if k in options}
    if cls is GraTa:
        extra = {k: options[k] for k in ("aux_loss", "pseudo_loss", "optimizer", "lr", "align", "dynamic_lr")
                 if k in options}
    elif cls is Tent:
        extra = {k: options[k] for k in ("optimizer", "lr") if k in options}
    else:
        extra = {}
    return cls(model, **common, **extra)

