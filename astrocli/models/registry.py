"""The zoo's registry: names, metadata, construction, and timm registration.

Each architecture file registers its builders with :func:`register_model`. A builder is called
as ``builder(args, options)``: ``args`` is a :class:`BuildArgs` (``num_classes``, ``img_size``,
``in_chans``, ``drop_rate``, ``drop_path_rate``, the keywords every model takes) and ``options``
a frozen dataclass of the model's own keywords, declared with their defaults at registration
(``register_model(..., options=CompactOptions())``). :func:`create_model` checks every other
keyword against those fields, so a misspelt option is an error instead of being silently
swallowed (the official CCT code accepts and ignores unknown keywords, which hid its own bugs).
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from astrocli.errors import AstroError

FAMILIES = (
    "astroformer",
    "cct",
    "cvt",
    "vit_lite",
    "vit",
    "resnet_cifar",
    "resnet",
    "mobilenet",
    "efficientnet",
    "timm",
)
TIMM_PREFIX = "timm/"
# Arguments timm.create_model passes to every entrypoint; no pretrained astro weights exist.
_TIMM_ONLY_ARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
_COMMON_ARGS = ("num_classes", "img_size", "in_chans", "drop_rate", "drop_path_rate")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(AstroError, ValueError):
    """An unknown model name or construction keyword (a ``ValueError`` too, for library callers)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about one model name.

    Attributes:
        name: the zoo name (``cct_7_3x1_32``).
        family: one of :data:`FAMILIES`.
        default_img_size: the input size the model is built for when ``img_size`` is not given.
        paper_params: parameter count in millions as published (see the builder for the
            number of classes and the image size it refers to), or None when not published.
        paper_num_classes: the number of classes ``paper_params`` refers to.
        paper_img_size: the image size ``paper_params`` refers to.
    """

    name: str
    family: str
    default_img_size: int
    paper_params: float | None = None
    paper_num_classes: int = 10
    paper_img_size: int | None = None


@dataclass(frozen=True)
class BuildArgs:
    """The keywords every zoo builder takes (``img_size`` already resolved to the model's default).

    ``drop_path_rate`` None keeps the model's own default.
    """

    num_classes: int
    img_size: int
    in_chans: int
    drop_rate: float
    drop_path_rate: float | None


@dataclass(frozen=True)
class NoOptions:
    """The options of a builder that takes only the :class:`BuildArgs` keywords."""


@dataclass(frozen=True)
class AttentionOptions:
    """The options of a transformer built by timm: dropout of the attention weights."""

    attn_drop_rate: float = 0.0


Builder = Callable[[BuildArgs, Any], nn.Module]


@dataclass(frozen=True)
class _ZooEntry:
    """A registered builder and its options' defaults (a frozen dataclass instance)."""

    builder: Builder
    options: Any


_ENTRIES: dict[str, _ZooEntry] = {}
_INFOS: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    family: str,
    default_img_size: int,
    paper_params: float | None = None,
    paper_num_classes: int = 10,
    paper_img_size: int | None = None,
    *,
    options: Any = NoOptions(),
    register_with_timm: bool = True,
) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to the zoo (and, unless timm already has the name, to timm).

    ``options``: a frozen dataclass instance holding the model's own keywords and their defaults;
    :func:`create_model` accepts exactly these besides the :class:`BuildArgs` ones.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if not (dataclasses.is_dataclass(options) and not isinstance(options, type)):
        raise ValueError(f"{name}: options must be a dataclass instance, not {options!r}")

    def decorator(builder: Builder) -> Builder:
        if name in _ENTRIES:
            raise ValueError(f"model {name!r} is registered twice")
        _ENTRIES[name] = _ZooEntry(builder, options)
        _INFOS[name] = ModelInfo(
            name,
            family,
            default_img_size,
            paper_params,
            paper_num_classes,
            paper_img_size or default_img_size,
        )
        if register_with_timm:
            _register_with_timm(name)
        return builder

    return decorator


def _register_with_timm(name: str) -> None:
    """Make ``timm.create_model(name, num_classes=...)`` build the zoo model."""

    def entrypoint(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> nn.Module:
        if pretrained:
            warnings.warn(
                f"no pretrained weights exist for {name}; building it randomly initialised", stacklevel=2
            )
        return create_model(name, **kwargs)

    # timm names a model after its entrypoint function.
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    timm.models.register_model(entrypoint)


def list_models(family: str | None = None) -> list[str]:
    """All zoo names (optionally of one family), grouped by family in :data:`FAMILIES` order."""
    names = [name for name, info in _INFOS.items() if family is None or info.family == family]
    return sorted(names, key=lambda name: FAMILIES.index(_INFOS[name].family))


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a zoo name, or of ``timm/<name>`` (family ``timm``)."""
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
        _check_timm_name(timm_name)
        cfg = timm.models.get_pretrained_cfg(timm_name)
        size = int(cfg.input_size[-1]) if cfg is not None else 224
        return ModelInfo(name, "timm", size, None, 1000, size)
    if name not in _INFOS:
        raise ModelError(_unknown_name_message(name))
    return _INFOS[name]


def _unknown_name_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(_INFOS), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    listing = "run `astro models` to list the zoo, or use timm/<name> for any timm model"
    return f"unknown model {name!r}: {hint}{listing}"


def _check_timm_name(timm_name: str) -> None:
    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm/' + c for c in close)}?)" if close else ""
        raise ModelError(f"timm has no model {timm_name!r}{hint}")


def _options(name: str, defaults: Any, kw: dict[str, Any]) -> Any:
    """``defaults`` (the registered options) with ``kw`` applied; an unknown keyword is a ModelError."""
    declared = [field.name for field in dataclasses.fields(defaults)]
    unknown = sorted(set(kw) - set(declared))
    if unknown:
        valid = ", ".join([*_COMMON_ARGS, *declared])
        raise ModelError(f"{name} got unknown keyword(s) {', '.join(unknown)}; valid keywords are: {valid}")
    return dataclasses.replace(defaults, **kw)


def create_model(
    name: str,
    num_classes: int = 1000,
    img_size: int | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
    device: str | torch.device | None = None,
    **kw: Any,
) -> nn.Module:
    """Build a zoo model (or ``timm/<name>``), randomly initialised.

    Args:
        name: a name from :func:`list_models`, or ``timm/<any timm model>``.
        num_classes: size of the classifier output.
        img_size: square input size the model is built for (None: the model's default).
            Convolutional networks accept any size; transformers are built for this one.
        in_chans: input channels (1 for grayscale).
        drop_rate: dropout before the classifier (and in the MLPs of the compact transformers,
            as the official code does).
        drop_path_rate: stochastic depth rate; None keeps the model's own default.
        device: allocate every tensor directly there (``meta``: no memory, no init cost);
            None: torch's default device.
        **kw: model-specific options (the ``options`` it was registered with); unknown ones
            raise ``ValueError``.

    Returns:
        The model, with a timm-style ``pretrained_cfg``/``default_cfg`` dict.
    """
    if device is not None:
        with torch.device(device):
            return create_model(name, num_classes, img_size, in_chans, drop_rate, drop_path_rate, **kw)
    if name.startswith(TIMM_PREFIX):
        return _create_timm_model(
            name[len(TIMM_PREFIX) :], num_classes, img_size, in_chans, drop_rate, drop_path_rate, kw
        )
    if name not in _ENTRIES:
        raise ModelError(_unknown_name_message(name))
    entry = _ENTRIES[name]
    options = _options(name, entry.options, kw)
    img_size = int(img_size or _INFOS[name].default_img_size)
    if in_chans < 1 or num_classes < 0 or img_size < 1:
        raise ModelError(f"{name}: in_chans, img_size must be positive and num_classes >= 0")
    model = entry.builder(BuildArgs(num_classes, img_size, in_chans, drop_rate, drop_path_rate), options)
    _attach_cfg(model, name, num_classes, img_size, in_chans)
    return model


def _attach_cfg(model: nn.Module, name: str, num_classes: int, img_size: int, in_chans: int) -> None:
    """A timm-style cfg so timm helpers (resolve_data_config, ...) work; the recipe decides normalisation."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if in_chans != 3:
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    cfg = {
        "architecture": name,
        "input_size": (in_chans, img_size, img_size),
        "mean": mean,
        "std": std,
        "crop_pct": 1.0 if img_size <= 64 else 0.95,
        "interpolation": "bicubic",
        "num_classes": num_classes,
    }
    model.pretrained_cfg = cfg
    model.default_cfg = cfg


def _create_timm_model(
    timm_name: str,
    num_classes: int,
    img_size: int | None,
    in_chans: int,
    drop_rate: float,
    drop_path_rate: float | None,
    kw: dict[str, Any],
) -> nn.Module:
    _check_timm_name(timm_name)
    args: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, **kw)
    if drop_path_rate is not None:
        args["drop_path_rate"] = drop_path_rate
    if img_size is not None:
        args["img_size"] = img_size
    try:
        return timm.create_model(timm_name, **args)
    except TypeError as exc:
        # Convolutional timm models take no img_size (they run at any size); retry without it.
        if "img_size" in args and "img_size" in str(exc):
            args.pop("img_size")
            try:
                return timm.create_model(timm_name, **args)
            except TypeError as exc2:
                exc = exc2
        raise ModelError(f"timm/{timm_name}: {exc}") from None


def set_fused_attn(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch every attention module between SDPA (True) and explicit softmax attention (False).

    The explicit path is the same math; ONNX export and FLOP counting use it. Returns ``model``.
    """
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = enabled
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def meta_param_count(name: str, **kwargs: Any) -> int:
    """Parameter count of a zoo model built on the meta device (no memory, no init cost)."""
    return count_params(create_model(name, device="meta", **kwargs))
