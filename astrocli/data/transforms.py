"""Per-image train and eval transforms (PIL in, normalised tensor out), built from timm and torchvision.

``augment.crop`` picks the geometry:

* ``random_resized_crop``: timm's ImageNet training transform (``timm.data.create_transform``).
* ``pad_crop``: the CIFAR recipe of the CCT / ResNet papers: resize to ``img_size``, pad
  ``augment.padding`` pixels and random-crop back, flip, then the same timm augmentation,
  normalisation and random erasing.
* ``resize``: resize to ``img_size`` (no crop), flip, augmentation.

``augment.auto_augment`` takes timm's strings (``rand-m9-mstd0.5-inc1``, ``augmix-m5-w4-d2``,
``v0``/``original``/``3a``) and ``trivialaugment`` (torchvision's TrivialAugmentWide, which timm
does not implement).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from timm.data import Mixup, create_transform
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import str_to_pil_interp
from timm.data.transforms_factory import transforms_imagenet_eval
from torchvision import transforms

from astrocli.data.pil_compat import patch_timm_posterize
from astrocli.recipe import Recipe

TRIVIAL_AUGMENT = ("trivialaugment", "trivial_augment", "ta_wide")


def _is_trivial(auto_augment: str | None) -> bool:
    return bool(auto_augment) and auto_augment.lower() in TRIVIAL_AUGMENT


def _needs_own_stage(recipe: Recipe) -> bool:
    """Whether the augmentation stage must be built here rather than by timm's factory."""
    aa = recipe.augment.auto_augment
    return _is_trivial(aa) or (bool(aa) and aa.startswith("augmix") and recipe.data.in_chans == 1)


class _ViaRGB:
    """Apply a transform to the RGB version of a grayscale image, then convert back to ``L``.

    timm's AugMix sizes its mixing buffer from ``img.getbands()`` and fails on single-band images.
    """

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, img):
        if img.mode != "L":
            return self.transform(img)
        return self.transform(img.convert("RGB")).convert("L")

    def __repr__(self) -> str:
        return f"ViaRGB({self.transform!r})"


def _stats(recipe: Recipe, mean: Sequence[float] | None, std: Sequence[float] | None):
    """Normalisation: explicit arguments, else ``data.mean``/``data.std`` (filled by build_datasets)."""
    mean = mean if mean is not None else recipe.data.mean
    std = std if std is not None else recipe.data.std
    if mean is None or std is None:
        raise ValueError(
            "normalisation unknown: pass mean/std (DatasetBundle.mean/std) or call build_datasets first, "
            "which fills recipe.data.mean/std with the source's statistics"
        )
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def augmentation_ops(recipe: Recipe, mean: Sequence[float]) -> list[Callable]:
    """The augmentation stage for ``pad_crop`` and ``resize``, configured as timm's factory does."""
    aug, size = recipe.augment, recipe.data.img_size
    if _is_trivial(aug.auto_augment):
        fill = [round(255 * m) for m in mean]
        return [transforms.TrivialAugmentWide(interpolation=_tv_interp(recipe.data.interpolation), fill=fill)]
    if aug.auto_augment:
        # Same hyper-parameters as timm.data.transforms_imagenet_train.
        params = {
            "translate_const": int(size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in mean),
            "interpolation": str_to_pil_interp(recipe.data.interpolation),
        }
        if aug.auto_augment.startswith("rand"):
            return [rand_augment_transform(aug.auto_augment, params)]
        if aug.auto_augment.startswith("augmix"):
            params["img_mean"] = tuple(params["img_mean"]) * (3 if len(mean) == 1 else 1)
            return [_ViaRGB(augment_and_mix_transform(aug.auto_augment, {**params, "translate_pct": 0.3}))]
        return [auto_augment_transform(aug.auto_augment, params)]
    if aug.color_jitter:
        return [transforms.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter)]
    return []


def _tv_interp(name: str) -> transforms.InterpolationMode:
    return transforms.InterpolationMode(name)


def _flips(recipe: Recipe) -> list[Callable]:
    ops: list[Callable] = []
    if recipe.augment.hflip > 0:
        ops.append(transforms.RandomHorizontalFlip(recipe.augment.hflip))
    if recipe.augment.vflip > 0:
        ops.append(transforms.RandomVerticalFlip(recipe.augment.vflip))
    return ops


def _normalise_and_erase(recipe: Recipe, mean: tuple[float, ...], std: tuple[float, ...]) -> list[Callable]:
    ops: list[Callable] = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    aug = recipe.augment
    if aug.re_prob > 0:
        ops.append(RandomErasing(aug.re_prob, mode=aug.re_mode, max_count=aug.re_count, device="cpu"))
    return ops


def build_train_transform(
    recipe: Recipe, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Callable:
    """The training transform for ``recipe`` (PIL image in ``RGB``/``L`` -> normalised float tensor).

    Args:
        recipe: the resolved recipe (``augment`` and ``data`` sections are used).
        mean, std: normalisation; default ``recipe.data.mean/std`` (``build_datasets`` fills them).
    """
    mean, std = _stats(recipe, mean, std)
    aug, data = recipe.augment, recipe.data
    size = data.img_size
    patch_timm_posterize()  # Pillow 13 rejects the 0 bits timm's PosterizeIncreasing asks for
    if aug.crop == "random_resized_crop":
        own_stage = _needs_own_stage(recipe)
        primary, secondary, final = create_transform(
            input_size=(data.in_chans, size, size),
            is_training=True,
            scale=tuple(aug.scale),
            ratio=tuple(aug.ratio),
            hflip=aug.hflip,
            vflip=aug.vflip,
            color_jitter=None if own_stage else aug.color_jitter,
            auto_augment=None if own_stage else aug.auto_augment,
            interpolation=data.interpolation,
            mean=mean,
            std=std,
            re_prob=aug.re_prob,
            re_mode=aug.re_mode,
            re_count=aug.re_count,
            separate=True,
        )
        extra = augmentation_ops(recipe, mean) if own_stage else []
        return transforms.Compose([*primary.transforms, *extra, *secondary.transforms, *final.transforms])
    geometry: list[Callable] = [transforms.Resize((size, size), interpolation=_tv_interp(data.interpolation))]
    if aug.crop == "pad_crop":
        geometry.append(transforms.RandomCrop(size, padding=aug.padding))
    return transforms.Compose(
        [
            *geometry,
            *_flips(recipe),
            *augmentation_ops(recipe, mean),
            *_normalise_and_erase(recipe, mean, std),
        ]
    )


def build_eval_transform(
    img_size: int,
    crop_pct: float,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    in_chans: int = 3,
) -> Callable:
    """Evaluation: resize the short side to ``img_size / crop_pct``, centre-crop ``img_size``, normalise.

    ``in_chans`` is implied by the images (``L`` or ``RGB``, as the datasets yield them); it is checked
    against ``mean``/``std`` so a mismatch fails here rather than inside a batch.
    """
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(
            f"mean/std need {in_chans} values for in_chans={in_chans}, got {len(mean)}/{len(std)}"
        )
    return transforms_imagenet_eval(
        img_size=img_size,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )


def build_mixup(recipe: Recipe, num_classes: int) -> Any:
    """timm's Mixup/CutMix (with label smoothing folded into its soft targets), or None when off."""
    aug = recipe.augment
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None

    return Mixup(
        mixup_alpha=aug.mixup,
        cutmix_alpha=aug.cutmix,
        prob=aug.mixup_prob,
        switch_prob=aug.mixup_switch_prob,
        mode="batch",
        label_smoothing=aug.label_smoothing,
        num_classes=num_classes,
    )
