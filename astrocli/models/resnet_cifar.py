"""CIFAR ResNets of He et al. (2016), section 4.2: ResNet-20/32/44/56/110.

Three stages of 16/32/64 channels with n = (depth - 2) / 6 basic blocks each, a 3x3 stem, and
the paper's option A shortcut (stride-2 subsampling and zero-padded channels, no parameters),
which gives its parameter counts (ResNet-56 0.85M, ResNet-110 1.7M). Neither timm nor
torchvision builds these (their ResNets are the ImageNet ones), so they are written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from astrocli.models.registry import BuildArgs, Builder, NoOptions, register_model

PAPER_PARAMS: dict[int, float] = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.73}


class PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the new channels."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_path: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = PadShortcut(planes - in_planes) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.drop_path(out) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32 px images (runs at any size: global average pooling before the classifier)."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, not {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = 64
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        rates = iter(torch.linspace(0, drop_path_rate, 3 * blocks_per_stage, device="cpu").tolist())
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if index == 0 else 1, next(rates)))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(64, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(F.relu(self.bn1(self.conv1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(64, num_classes) if num_classes > 0 else nn.Identity()


def _make_builder(depth: int) -> Builder:
    def build(args: BuildArgs, options: NoOptions) -> CifarResNet:
        return CifarResNet(depth, args.num_classes, args.in_chans, args.drop_rate, args.drop_path_rate or 0.0)

    return build


for _depth, _params in PAPER_PARAMS.items():
    register_model(f"resnet{_depth}", "resnet_cifar", 32, _params)(_make_builder(_depth))
