"""ResUnet: the network of the GraTa authors' reference code, rebuilt so that
their checkpoints load by key.

The module and parameter names (``res.layer1.0.bn1.weight``, ``up1.tr_conv``,
``recon1.bn`` ...) are exactly those of the reference state dicts, so a
distributed ``last-Res_Unet.pth`` loads with ``strict=True`` and our
``state_dict()`` keeps its names. ``model(x)`` returns the segmentation logits
only; the auxiliary heads that some self-supervised losses need are reached
through :meth:`ResUnet.forward_with_head`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

AUX_HEADS = ("recon", "denoise", "supres", "rotate")

# Blocks per stage of the ResNet encoders of the reference code.
BACKBONES = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet trunk returning the deepest map and the five skip features
    (after relu, layer1, layer2, layer3, layer4), as the reference does.

    ``fc`` and the parameter-free ``in1`` exist only so that the reference
    checkpoints, which carry them, load strictly; they are never run.
    """

    def __init__(self, block: str, layers: Sequence[int], in_channels: int = 3, with_fc: bool = True):
        super().__init__()
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.in1 = nn.InstanceNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block_cls, 64, layers[0], 1)
        self.layer2 = self._make_layer(block_cls, 128, layers[1], 2)
        self.layer3 = self._make_layer(block_cls, 256, layers[2], 2)
        self.layer4 = self._make_layer(block_cls, 512, layers[3], 2)
        self.fc = nn.Linear(512 * block_cls.expansion, 1000) if with_fc else None
        self.feature_channels = [64, 64 * block_cls.expansion, 128 * block_cls.expansion,
                                 256 * block_cls.expansion, 512 * block_cls.expansion]

    def _make_layer(self, block_cls, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block_cls.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block_cls.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block_cls.expansion),
            )
        layers = [block_cls(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block_cls.expansion
        layers += [block_cls(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.relu(self.bn1(self.conv1(x)))
        skips = [x]
        x = self.layer1(self.maxpool(x))
        skips.append(x)
        x = self.layer2(x)
        skips.append(x)
        x = self.layer3(x)
        skips.append(x)
        x = self.layer4(x)
        skips.append(x)
        return x, skips


class UnetBlock(nn.Module):
    """Decoder stage: upsample the deep input, project the skip, concatenate,
    relu, BatchNorm (the reference order)."""

    def __init__(self, up_in: int, x_in: int, n_out: int):
        super().__init__()
        self.x_conv = nn.Conv2d(x_in, n_out // 2, 1)
        self.tr_conv = nn.ConvTranspose2d(up_in, n_out // 2, 2, stride=2)
        self.bn = nn.BatchNorm2d(n_out)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(torch.cat([self.tr_conv(up), self.x_conv(skip)], dim=1)))


class UpsampleBlock(nn.Module):
    """Auxiliary-branch stage: bilinear x2, 1x1 conv, relu, BatchNorm."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Conv2d(c_in, c_out, 1)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.conv(self.up(x))))


def _image_branch(prefix: str, module: nn.Module, c_in: int, base: int) -> None:
    """Attach the four upsampling stages of a reconstruction-like branch."""
    widths = [c_in, base, base // 2, base // 4, base // 8]
    for i in range(4):
        setattr(module, f"{prefix}{i + 1}", UpsampleBlock(widths[i], widths[i + 1]))
    setattr(module, f"{prefix}5", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))


class ResUnet(nn.Module):
    """U-Net with a ResNet encoder and the reference's optional auxiliary heads.

    Args:
        backbone: one of :data:`BACKBONES`.
        num_classes: segmentation channels (2 for the reference: disc, cup).
        in_channels: image channels (3 for colour fundus photographs).
        heads: auxiliary heads to build, a subset of :data:`AUX_HEADS`.
        with_fc: keep the (unused) ImageNet classifier of the encoder, as the
            reference checkpoints do.
    """

    def __init__(self, backbone: str = "resnet34", num_classes: int = 2, in_channels: int = 3,
                 heads: Sequence[str] = AUX_HEADS, with_fc: bool = True):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown ResUnet backbone {backbone!r}; use one of {sorted(BACKBONES)}")
        unknown = set(heads) - set(AUX_HEADS)
        if unknown:
            raise ValueError(f"unknown auxiliary heads {sorted(unknown)}; use a subset of {list(AUX_HEADS)}")
        block, layers = BACKBONES[backbone]
        self.backbone = backbone
        self.spatial_dims = 2
        self.size_multiple = 32  # five stride-2 stages
        self.heads = tuple(h for h in AUX_HEADS if h in heads)
        self.num_classes = num_classes
        self.res = ResNetEncoder(block, layers, in_channels, with_fc)
        fc = self.res.feature_channels
        self.up1 = UnetBlock(fc[4], fc[3], 256)
        self.up2 = UnetBlock(256, fc[2], 256)
        self.up3 = UnetBlock(256, fc[1], 256)
        self.up4 = UnetBlock(256, fc[0], 256)
        self.up5 = nn.ConvTranspose2d(256, 32, 2, stride=2)
        self.bnout = nn.BatchNorm2d(32)
        self.seg_head = nn.Conv2d(32, num_classes, 1)

        base = 256
        if "recon" in self.heads:
            _image_branch("recon", self, fc[4], base)
            self.recon_head = nn.Conv2d(base // 8, in_channels, 1)
        if "denoise" in self.heads:
            _image_branch("denoise", self, fc[4], base)
            self.denoise_head = nn.Conv2d(base // 8, in_channels, 1)
        if "rotate" in self.heads:
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.rotate_head = nn.Sequential(
                nn.Linear(fc[4], base), nn.LeakyReLU(0.2),
                nn.Linear(base, base // 4), nn.LeakyReLU(0.2),
                nn.Linear(base // 4, 6),
            )
        if "supres" in self.heads:
            _image_branch("supres", self, fc[4], base)
            c = base // 8
            self.supres_head = nn.Sequential(
                nn.Conv2d(c, c, 5, 1, 2), nn.Tanh(),
                nn.Conv2d(c, c, 3, 1, 1), nn.Tanh(),
                nn.Conv2d(c, in_channels * 4, 3, 1, 1), nn.PixelShuffle(2),
            )

    def _decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.up1(x, skips[3])
        x = self.up2(x, skips[2])
        x = self.up3(x, skips[1])
        x = self.up4(x, skips[0])
        x = self.up5(x)
        return self.seg_head(F.relu(self.bnout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep, skips = self.res(x)
        return self._decode(F.relu(deep), skips)

    def forward_with_head(self, x: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network and one auxiliary head; returns (head output, logits)."""
        if head not in self.heads:
            raise ValueError(f"this ResUnet has no {head!r} head (it has {list(self.heads) or 'none'})")
        deep, skips = self.res(x)
        deep = F.relu(deep)
        if head == "rotate":
            out = self.rotate_head(self.pool(deep).flatten(1))
        else:
            y = deep
            for i in range(1, 5):
                y = getattr(self, f"{head}{i}")(y)
            out = getattr(self, f"{head}_head")(getattr(self, f"{head}5")(y))
        return out, self._decode(deep, skips)


def resunet_config_from_keys(state_dict: dict[str, torch.Tensor]) -> dict:
    """Recognise a ResUnet's constructor arguments from its state-dict keys.

    Raises ValueError when the keys are not those of a ResUnet.
    """
    keys = set(state_dict)
    for required in ("res.conv1.weight", "seg_head.weight", "up1.tr_conv.weight"):
        if required not in keys:
            raise ValueError(f"not a ResUnet state dict (no {required!r})")
    bottleneck = "res.layer1.0.conv3.weight" in keys
    counts = []
    for stage in range(1, 5):
        prefix = f"res.layer{stage}."
        blocks = {k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)}
        counts.append(len(blocks))
    wanted = ("bottleneck" if bottleneck else "basic", tuple(counts))
    backbone = next((name for name, spec in BACKBONES.items() if spec == wanted), None)
    if backbone is None:
        raise ValueError(f"ResUnet encoder with {wanted[0]} blocks {counts} is not a known ResNet")
    heads = [h for h in AUX_HEADS if f"{h}_head.0.weight" in keys or f"{h}_head.weight" in keys
             or f"{h}1.conv.weight" in keys]
    return {
        "backbone": backbone,
        "num_classes": int(state_dict["seg_head.weight"].shape[0]),
        "in_channels": int(state_dict["res.conv1.weight"].shape[1]),
        "heads": heads,
        "with_fc": "res.fc.weight" in keys,
    }
