"""Will an input fit in memory? A cheap estimate before the work, and advice that fits.

Segmenting a large picture is bounded by host memory, not by the network (it sees the
model's input size): the image as read, its float copy, the probabilities resampled to
full resolution, the masks and the files being written. Measured peaks grow linearly
with the pixels: about 58-62 bytes per pixel for an RGB picture and a two-class model, 59-116
with ``--probabilities --uncertainty`` (``benchmarks/memory_estimate.py``; peaks vary by some
tens of MiB between runs). The estimate is meant to catch inputs that cannot fit by far, not to
budget the last megabyte. An input whose estimate exceeds the memory available now is refused
before any step, with the largest size that would fit, instead of running out of memory late
(or being killed by the system).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import OutOfMemory

FIXED_BYTES = 640 << 20  # the interpreter, torch and the bundled model


def bytes_per_pixel(channels: int, classes: int, probabilities: bool, uncertainty: bool) -> int:
    """Peak bytes per input pixel (or voxel), a little above the measured ones."""
    return 8 * channels + 18 * classes + (8 * classes if probabilities else 0) + (4 if uncertainty else 0)


def estimate_bytes(pixels: int, channels: int, classes: int, probabilities: bool = False,
                   uncertainty: bool = False) -> int:
    return FIXED_BYTES + pixels * bytes_per_pixel(channels, classes, probabilities, uncertainty)


def available_bytes() -> int | None:
    """Memory a process can take now without swapping: Linux's MemAvailable, else the free
    physical pages; None where neither can be read (then nothing is refused)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def image_extent(path: Path) -> tuple[tuple[int, ...], int] | None:
    """(size, components) from a file's header without reading its pixels; None when the
    header cannot be read that way (then the reader's own errors speak)."""
    import SimpleITK as sitk

    if not path.is_file():
        return None
    from .imageio import reader_warnings

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with reader_warnings([]):  # the same warnings come again, as one line, when the image is read
            reader.ReadImageInformation()
    except RuntimeError:
        return None
    return tuple(int(s) for s in reader.GetSize()), int(reader.GetNumberOfComponents())


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def check_fits(path: Path, classes: int, probabilities: bool, uncertainty: bool,
               available: int | None = None) -> None:
    """Refuse an input that would not fit in the memory available, saying what size would."""
    extent = image_extent(path)
    available = available_bytes() if available is None else available
    if extent is None or available is None:
        return
    size, components = extent
    pixels = math.prod(size)
    need = estimate_bytes(pixels, components, classes, probabilities, uncertainty)
    if need <= available:
        return
    per_pixel = bytes_per_pixel(components, classes, probabilities, uncertainty)
    fitting = max(0, available - FIXED_BYTES) // per_pixel
    scale = (fitting / pixels) ** (1 / len(size)) if pixels else 0.0
    shown = " x ".join(str(s) for s in size)
    fits = " x ".join(str(max(1, int(s * scale))) for s in size)
    extra = ", or leave out --probabilities/--uncertainty" if probabilities or uncertainty else ""
    raise OutOfMemory(f"{path.name} is {shown}: segmenting it needs about {_gib(need)} of memory and "
                      f"{_gib(available)} is available; downsample it to about {fits} ({scale:.0%} per axis) "
                      f"or less{extra}, close other programs, or use a machine with more memory")


# -- an adaptation step of a 3D model: bounded by the network's activations, not by the image --------------

#: a step's peak above the memory in use before it, in multiples of the activations one forward keeps
#: for the backward pass (the forward's transient outputs, the views, the augmentation, the allocator's
#: slack on top), with one consistency view per pass. Measured by benchmarks/step_memory.py and
#: step_cost.py on the phantom nnU-Net model: CPU, fp32, 119 MiB kept, TENT's step 1.4-1.9x, GraTa's
#: 2.7-3.0x; an H200 (benchmarks/gpu_figures.py) holds less: GraTa 1.2-1.3x, TENT 1.2-1.3x.
STEP_PEAK = {"tent": 2.0, "grata": 3.0}
#: what each further consistency view in GraTa's pseudo-label pass adds, in the same multiples (a
#: no-grad forward of one more window). Measured on an H200: seven views per pass held 3.6x (phantom
#: model) and 3.9x (nnU-Net's default 3d_fullres network, 3.4 GiB kept) against 1.2-1.3x with one,
#: about 0.4x per added view.
VIEW_PEAK = 0.5


def step_bytes(method: str, saved: int, views_per_pass: int = 1) -> int:
    """The memory one step of ``method`` takes beyond what is in use, from :func:`saved_activation_bytes`,
    with GraTa's consistency views ``views_per_pass`` to a forward pass."""
    factor = STEP_PEAK.get(method, 0.0)
    if method == "grata":
        factor += VIEW_PEAK * (max(1, views_per_pass) - 1)
    return int(saved * factor)


def saved_activation_bytes(model, x) -> int:
    """Bytes autograd keeps for the backward pass of one forward of ``x`` (the parameters that
    adapt, and only they, require gradients), counted on the meta device: no memory, no compute."""
    return activation_counter(model)(tuple(x.shape), x.dtype)[0]


def activation_counter(model):
    """``count(shape, dtype) -> (bytes kept for the backward pass, output shape)`` for batches of
    ``shape``, on one meta copy of ``model`` (copied once, however many shapes are counted)."""
    import copy

    import torch

    meta = copy.deepcopy(model).to("meta")

    def count(shape: tuple[int, ...], dtype=torch.float32) -> tuple[int, tuple[int, ...]]:
        kept: list[torch.Tensor] = []  # held so that ids stay unique while counting
        seen: set[int] = set()
        total = 0

        def pack(t):
            nonlocal total
            if id(t) not in seen:
                seen.add(id(t))
                kept.append(t)
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
            out = meta(torch.empty(shape, dtype=dtype, device="meta"))
        out = out[0] if isinstance(out, (list, tuple)) else out
        return total, tuple(out.shape)

    return count


#: the adaptation steps crop the model's windows to no less than this fraction of each axis: a
#: smaller crop's instance statistics stand less for what the network sees when it predicts
MIN_CROP_FRACTION = 0.5


def adaptation_crop(patch: tuple[int, ...], multiple: tuple[int, ...], need, available: int) -> tuple[int, ...] | None:
    """The largest crop of the ``patch``-sized windows whose step fits in ``available`` bytes: each
    axis a multiple of ``multiple`` (the network's total stride there) and at least
    :data:`MIN_CROP_FRACTION` of the window; ``need(shape)`` is a step's bytes on ``shape`` (None
    where the network cannot take it). The axes shrink together, in steps of 5 %. None where even
    the smallest crop does not fit: then the step is refused (:func:`check_step_fits`)."""
    smallest = tuple(max(m, math.ceil(p * MIN_CROP_FRACTION / m) * m) for p, m in zip(patch, multiple))
    tried: set[tuple[int, ...]] = {tuple(patch)}
    for k in range(1, 20):
        scale = 1.0 - 0.05 * k
        shape = tuple(min(p, max(lo, int(p * scale) // m * m)) for p, m, lo in zip(patch, multiple, smallest))
        if shape in tried:
            continue
        tried.add(shape)
        bytes_needed = need(shape)
        if bytes_needed is not None and bytes_needed <= available:
            return shape
        if shape == smallest:
            break
    return None


def centre_crop(x, shape: tuple[int, ...]):
    """The centre ``shape`` of the spatial axes of a (B, C, *spatial) batch."""
    starts = [(size - want) // 2 for size, want in zip(x.shape[2:], shape)]
    return x[(slice(None), slice(None), *(slice(a, a + want) for a, want in zip(starts, shape)))]


def views_per_pass(views: int, available: int | None, method: str, saved: int, default: int) -> int:
    """How many consistency views a pseudo-label pass can take at once on a GPU: the most whose step
    (:func:`step_bytes`) fits the free memory, ``views`` at most; ``default`` where the free memory is
    unknown. Batched views fill a large GPU better (an H200: a GraTa step of nnU-Net's default
    3d_fullres network 0.18 s with all seven views per pass, 0.21 s with one, in fp32); the result
    does not change with the batching (per-view statistics, :mod:`.adaptation.norm`)."""
    if available is None or saved <= 0:
        return max(1, min(default, views))
    more = (available - step_bytes(method, saved)) // max(1, int(VIEW_PEAK * saved))
    return int(max(1, min(views, 1 + more)))


def device_available_bytes(device) -> int | None:
    """Free memory of a CUDA device, or the host's for the CPU and other devices."""
    import torch

    if getattr(device, "type", device) == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_bytes()


def check_step_fits(need: int, available: int | None, patch: tuple[int, ...], device_text: str,
                    cropped: bool = False) -> None:
    """Refuse adaptation steps that cannot fit, before the first one, saying what to do (``cropped``:
    no crop of the windows fits either, :func:`adaptation_crop`)."""
    if available is None or need <= available:
        return
    crops = (f" (and crops of them down to {MIN_CROP_FRACTION:.0%} of each axis do not fit either)" if cropped
             else "")
    raise OutOfMemory(f"an adaptation step of this model on its {' x '.join(map(str, patch))} windows needs about "
                      f"{_gib(need)} of memory{crops} and {_gib(available)} is free on {device_text}; use --method none "
                      f"(no steps: the model's own prediction), --precision bf16 where the device has it, close "
                      f"other programs, or use a device with more memory")
