"""ImageNet-style baselines of both papers' tables, built by timm exactly as published.

timm already registers these names (except ``mobilenetv2_200``), so they are not registered
again (that would shadow timm's own entrypoints); ``timm.create_model(name)`` builds the same
network. ``mobilenetv2_200`` is timm's MobileNet-V2 generator at channel multiplier 2.0.
"""

from __future__ import annotations

import timm
from timm.models.efficientnet import _gen_mobilenet_v2
from torch import nn

from astrocli.models.registry import BuildArgs, Builder, NoOptions, register_model

# name -> (family, published params in millions at 10 classes or None)
BASELINES: dict[str, tuple[str, float | None]] = {
    "resnet18": ("resnet", 11.18),
    "resnet34": ("resnet", 21.29),
    "mobilenetv2_050": ("mobilenet", 0.70),
    "mobilenetv2_200": ("mobilenet", 8.72),
    "efficientnet_b0": ("efficientnet", None),
}


def _make_builder(name: str) -> Builder:
    def build(args: BuildArgs, options: NoOptions) -> nn.Module:
        # img_size is not a constructor argument of convolutional nets: they run at any size.
        extra = {} if args.drop_path_rate is None else {"drop_path_rate": args.drop_path_rate}
        kwargs = dict(num_classes=args.num_classes, in_chans=args.in_chans, drop_rate=args.drop_rate, **extra)
        if name == "mobilenetv2_200":
            # timm has the generator but no registered 2.0 width; its cfg is given so timm does not warn.
            size = (args.in_chans, args.img_size, args.img_size)
            cfg = dict(architecture=name, input_size=size, num_classes=args.num_classes)
            return _gen_mobilenet_v2(name, 2.0, pretrained_cfg=cfg, **kwargs)
        return timm.create_model(name, **kwargs)

    return build


for _name, (_family, _params) in BASELINES.items():
    # The CCT paper compares these on CIFAR, at 32 px.
    _size = 224 if _family == "efficientnet" else 32
    register_model(_name, _family, _size, _params, register_with_timm=not timm.is_model(_name))(
        _make_builder(_name)
    )
