"""Defaults chosen from the data: what ``augment.preset`` fills into the keys a recipe leaves out.

A recipe that names only a model, the data and maybe the epochs should train well. The fixed
dataclass defaults are ImageNet's (random-resized crop down to 8% of the image, horizontal flips),
which wreck a 32-px image or a digit. So, once the data is known (image size, channels, number of
images and classes), :func:`resolve_defaults` fills every key the recipe did not set
(:func:`astrocli.recipe.given_keys`) by these rules, and says what it chose and why:

- ``augment.preset``: ``auto`` is ``strong`` for runs of 100 epochs or more, else ``light``;
  ``none`` fills nothing (the paper recipes, which spell out their own settings).
- crop: images of 64 px or less: pad-and-crop with ``img_size // 8`` pixels of padding (the
  CIFAR recipe); larger ones: a gentle random-resized crop (scale 0.35-1).
- flips: the data's symmetry cannot be known, so a fixed rule, printed with how to change it:
  galaxies (``galaxy10_*`` sources) and scientific float data (FITS, 16-bit, float, N bands) flip
  both ways; single-channel 8-bit images (digits, text, documents, where a mirrored 2 is no 2) do
  not flip; other colour images flip horizontally.
- ``strong`` adds RandAugment (colour images), Mixup 0.8 / CutMix 1.0, label smoothing 0.1 and
  random erasing 0.25: what the long paper schedules use; they slow short runs down.
- learning rate: AdamW ``2e-3 * sqrt(global_batch / 128)`` (square-root scaling suits adaptive
  optimizers; short runs from scratch on small data want more than the paper recipes' 5e-4 over 300
  epochs: 2e-3 was the best rate of benchmarks/defaults.py's grid on CIFAR-10 and on digits, and is
  the quick start's rate for CCT-2), SGD ``0.1 * global_batch / 256`` (the linear rule of Goyal et al.).
- batch size: 128, or for small sets the largest power of two giving 8 steps an epoch (at least 8).
- warmup: 5% of the epochs (at least 1 from 5 epochs on, at most 10).
- epochs: about two million images seen, rounded to tens, between 20 and 200.

:func:`fit_warmup_cooldown` makes ``train.epochs`` the whole run: warmup and cooldown are counted
inside it and shrunk, with one warning, when they would take more than half of it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from timm.models.maxxvit import MaxxVit

from astrocli.data import build_datasets
from astrocli.devices import cpu_has_bf16_tiles, resolve_device
from astrocli.errors import AstroError, first_line
from astrocli.recipe import Recipe, given_keys, mark_given

SMALL_IMAGE = 64  # up to this size: pad-and-crop; above: random-resized crop
GENTLE_SCALE = [0.35, 1.0]
STRONG_FROM_EPOCHS = 100
IMAGES_SEEN = 2_000_000  # the epoch rule's target
EPOCH_RANGE = (20, 200)
ADAMW_BASE_LR, ADAMW_BASE_BATCH = 2e-3, 128
SGD_BASE_LR, SGD_BASE_BATCH = 0.1, 256
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
MIN_ATTENTION_TOKENS = 4


@dataclass
class DataFacts:
    """What the defaults are chosen from (cheap to gather: no image is augmented or trained on)."""

    img_size: int
    in_chans: int
    num_images: int
    num_classes: int
    grayscale: bool  # the source images are single-channel (or equal in all channels)
    source: str
    class_counts: list[int] = field(default_factory=list)
    world_size: int = 1
    scientific: bool = False  # the float path: FITS, 16-bit, float TIFF, .npy, N bands


@dataclass
class Choice:
    """One key filled in: its dotted name, the value and why."""

    key: str
    value: Any
    why: str

    def line(self) -> str:
        return f"{self.key}={_show(self.value)} ({self.why})"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# -------------------------------------------------------------------------------------------------
# Facts
# -------------------------------------------------------------------------------------------------


def data_facts(bundle: Any, recipe: Recipe, world_size: int = 1) -> DataFacts:
    """The facts of ``bundle`` (from :func:`astrocli.data.build_datasets`, which set
    ``recipe.data.pixels``) for ``recipe``."""
    targets = np.asarray(bundle.train.targets, dtype=np.int64)
    counts = np.bincount(targets, minlength=bundle.num_classes).tolist() if len(targets) else []
    return DataFacts(
        img_size=recipe.data.img_size,
        in_chans=recipe.data.in_chans,
        num_images=len(bundle.train),
        num_classes=bundle.num_classes,
        grayscale=recipe.data.in_chans == 1 or is_grayscale(bundle.train),
        source=recipe.data.source,
        scientific=recipe.data.pixels == "float",
        class_counts=counts,
        world_size=world_size,
    )


def is_grayscale(dataset: Any, probe: int = 8) -> bool:
    """Whether the first ``probe`` images of ``dataset`` are single-channel at the source.

    Array datasets: the stored rows' channel count (or identical channels). Image files: the
    file's mode from its header, else whether the decoded channels are identical.
    """
    from PIL import Image

    store, indices = getattr(dataset, "store", None), getattr(dataset, "indices", None)
    if store is not None and indices is not None and len(indices):
        rows = np.asarray(store.read(np.sort(np.asarray(indices[:probe]))))
        return rows.ndim == 3 or rows.shape[-1] == 1 or _equal_channels(rows)
    samples = getattr(dataset, "samples", None)
    looked = 0  # files PIL could read: FITS or .npy are none of them, and say nothing of their colour
    for path, _ in (samples or [])[:probe]:
        try:
            with Image.open(path) as img:
                looked += 1
                if img.mode in GRAY_MODES:
                    continue
                if not _equal_channels(np.asarray(img.convert("RGB"))):
                    return False
        except OSError:
            continue
    return looked > 0


def _equal_channels(pixels: np.ndarray) -> bool:
    if pixels.shape[-1] < 3:
        return True
    return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


# -------------------------------------------------------------------------------------------------
# Rules
# -------------------------------------------------------------------------------------------------


def auto_epochs(num_images: int) -> int:
    """About :data:`IMAGES_SEEN` images seen, rounded to tens, within :data:`EPOCH_RANGE`."""
    raw = IMAGES_SEEN / max(num_images, 1)
    return int(min(max(round(raw / 10) * 10, EPOCH_RANGE[0]), EPOCH_RANGE[1]))


def auto_batch_size(num_images: int) -> int:
    """128, or the largest power of two that still gives 8 steps an epoch (at least 8)."""
    if num_images >= 128 * 8:
        return 128
    return max(8, 2 ** int(math.log2(max(num_images // 8, 1))))


def auto_lr(optimizer: str, global_batch: int) -> tuple[float, str]:
    """The learning rate for ``global_batch`` and why."""
    if optimizer == "sgd":
        return SGD_BASE_LR * global_batch / SGD_BASE_BATCH, f"SGD: 0.1 x batch {global_batch}/256"
    lr = ADAMW_BASE_LR * math.sqrt(global_batch / ADAMW_BASE_BATCH)
    return lr, f"AdamW: 2e-3 x sqrt(batch {global_batch}/128)"


def auto_warmup(epochs: int) -> int:
    """5% of the run, at least 1 epoch from 5 epochs on, at most 10."""
    return 0 if epochs < 5 else min(10, max(1, round(epochs * 0.05)))


def flip_rule(facts: DataFacts) -> tuple[float, float, str]:
    """(hflip, vflip, the sentence the console prints)."""
    off = "off with augment.hflip=0 augment.vflip=0"
    if facts.source.startswith("galaxy10"):
        return 0.5, 0.5, f"galaxies have no preferred orientation; {off}"
    if facts.scientific:  # sky cutouts, microscopy, spectra-as-images: no up, no left
        return (
            0.5,
            0.5,
            f"scientific images (FITS, 16-bit, float, N bands) have no preferred orientation; {off}",
        )
    if facts.grayscale:
        why = "single-channel 8-bit images (digits, text) may not survive a mirror; on with augment.hflip=0.5"
        return 0.0, 0.0, why
    return 0.5, 0.0, "colour images, mirrored left-right; off with augment.hflip=0"


def resolve_preset(preset: str, epochs: int) -> str:
    """``auto`` -> ``strong`` for :data:`STRONG_FROM_EPOCHS`+ epochs, else ``light``."""
    if preset != "auto":
        return preset
    return "strong" if epochs >= STRONG_FROM_EPOCHS else "light"


def resolve_defaults(recipe: Recipe, facts: DataFacts) -> tuple[Recipe, list[Choice]]:
    """A copy of ``recipe`` with the keys it left out filled from ``facts``, and what was chosen.

    A key the recipe sets is never changed. With ``augment.preset: none`` nothing is filled.
    The copy records every key as set, so resolving it again changes nothing.
    """
    resolved = copy.deepcopy(recipe)
    # Set = named in the YAML/overrides, or changed from the default in code (a tuner's trial).
    given = set(given_keys(recipe)) | _changed_keys(recipe)
    choices: list[Choice] = []
    if recipe.augment.preset != "none":
        _fill(resolved, facts, given, choices)
    mark_given(resolved, _all_keys(resolved))
    return resolved, choices


def _fill(r: Recipe, facts: DataFacts, given: set[str], choices: list[Choice]) -> None:
    def put(key: str, value: Any, why: str) -> None:
        if key in given:
            return
        section, name = key.split(".")
        setattr(getattr(r, section), name, value)
        choices.append(Choice(key, value, why))

    a, t = r.augment, r.train
    put("train.epochs", auto_epochs(facts.num_images), f"~2M images seen over {facts.num_images} images")
    level = resolve_preset(a.preset, t.epochs)
    why_level = f"{t.epochs} epochs" + (" >= 100" if level == "strong" else " < 100")
    why_level = why_level if a.preset == "auto" else "set in the recipe"
    choices.append(Choice("augment.preset", f"{a.preset} -> {level}", why_level))

    size = facts.img_size
    if size <= SMALL_IMAGE:
        put("augment.crop", "pad_crop", f"{size}-px images: shifts, not crops down to 8%")
    else:
        put("augment.crop", "random_resized_crop", f"{size}-px images")
    if a.crop == "pad_crop":
        put("augment.padding", max(1, size // 8), "img_size / 8")
    if a.crop == "random_resized_crop":
        put("augment.scale", list(GENTLE_SCALE), "gentle: keeps most of the object")
    hflip, vflip, why_flip = flip_rule(facts)
    put("augment.hflip", hflip, why_flip)
    put("augment.vflip", vflip, why_flip)

    if level == "strong":
        if not facts.grayscale and facts.in_chans == 3:
            put("augment.auto_augment", "rand-m9-mstd0.5-inc1", "strong preset")
        if t.batch_size % 2 == 0:  # batch Mixup pairs images
            put("augment.mixup", 0.8, "strong preset")
            put("augment.cutmix", 1.0, "strong preset")
        put("augment.label_smoothing", 0.1, "strong preset")
        put("augment.re_prob", 0.25, "strong preset")

    put(
        "train.batch_size",
        auto_batch_size(facts.num_images),
        f"at least 8 steps over {facts.num_images} images",
    )
    global_batch = t.batch_size * t.accum_steps * facts.world_size
    lr, why_lr = auto_lr(t.optimizer, global_batch)
    put("train.lr", lr, why_lr)
    put("train.warmup_epochs", auto_warmup(t.epochs), f"5% of {t.epochs} epochs")
    if all(c.key == "augment.preset" for c in choices):  # nothing left out: nothing to say
        choices.clear()


def _changed_keys(recipe: Recipe) -> set[str]:
    """Keys whose value differs from a fresh :class:`Recipe`'s."""
    fresh = Recipe()
    changed = set()
    for key in _all_keys(recipe):
        section, _, name = key.partition(".")
        if name and getattr(getattr(recipe, section), name) != getattr(getattr(fresh, section), name):
            changed.add(key)
    return changed


def _all_keys(recipe: Recipe) -> set[str]:
    keys = set()
    for section in dataclasses.fields(recipe):
        value = getattr(recipe, section.name)
        if dataclasses.is_dataclass(value):
            keys.update(f"{section.name}.{f.name}" for f in dataclasses.fields(value))
        else:
            keys.add(section.name)
    return keys


def describe(choices: list[Choice], recipe: Recipe | None = None) -> list[str]:
    """Console lines: the preset first, then the flips (as ``recipe`` has them when given), then
    every other choice on one line."""
    if not choices:
        return []
    preset = [c for c in choices if c.key == "augment.preset"]
    flips = [c for c in choices if c.key in ("augment.hflip", "augment.vflip")]
    rest = [c for c in choices if c not in preset and c not in flips]
    lines = []
    if preset:
        lines.append(f"augment.preset {preset[0].value} ({preset[0].why}); keys the recipe sets are kept")
    if flips:
        names = (("horizontal", "augment.hflip"), ("vertical", "augment.vflip"))
        if recipe is not None:  # the flips in force, whether filled or set by the recipe
            on = [n for n, c in names if getattr(recipe.augment, c.split(".")[1]) > 0]
        else:
            on = [n for n, c in names if _value(flips, c)]
        lines.append(f"flips: {' and '.join(on) if on else 'none'} ({flips[0].why})")
    if rest:
        lines.append("filled from the data: " + "; ".join(c.line() for c in rest))
    return lines


def _value(choices: list[Choice], key: str) -> Any:
    return next((c.value for c in choices if c.key == key), 0)


# -------------------------------------------------------------------------------------------------
# The schedule: train.epochs is the whole run
# -------------------------------------------------------------------------------------------------


@dataclass
class ScheduleFit:
    """Warmup and cooldown in optimizer updates, inside ``epochs * updates_per_epoch``."""

    total_updates: int
    warmup_updates: int
    cooldown_updates: int
    warning: str | None = None


def fit_warmup_cooldown(
    epochs: int, warmup_epochs: float, cooldown_epochs: float, updates_per_epoch: int
) -> ScheduleFit:
    """Count warmup and cooldown inside ``epochs``; when together they take more than half the run,
    scale both down by the same factor so they take half, and say so.

    (timm's ``create_scheduler_v2`` adds the cooldown after ``num_epochs``; the paper recipes'
    300 + 10 is kept by their own numbers, and ``train.epochs=5`` now means five epochs.)
    """
    total = epochs * updates_per_epoch
    warmup, cooldown = warmup_epochs * updates_per_epoch, cooldown_epochs * updates_per_epoch
    warning = None
    if warmup + cooldown > total / 2:
        factor = (total / 2) / (warmup + cooldown)
        warmup, cooldown = warmup * factor, cooldown * factor
        warning = (
            f"warmup {warmup_epochs:g} + cooldown {cooldown_epochs:g} epochs do not fit in "
            f"train.epochs={epochs}: "
            f"scaled to {warmup / updates_per_epoch:.2g} + {cooldown / updates_per_epoch:.2g} epochs "
            "(half the run); set train.warmup_epochs / train.cooldown_epochs to choose"
        )
    return ScheduleFit(total, int(round(warmup)), int(round(cooldown)), warning)


# -------------------------------------------------------------------------------------------------
# Attention that sees too few tokens
# -------------------------------------------------------------------------------------------------


def attention_tokens(model: Any, img_size: int) -> int | None:
    """How many tokens the model's attention sees at ``img_size`` (its last attention stage), or
    None for a model without attention."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "sequence_length"):
        return int(tokenizer.sequence_length(img_size))

    if isinstance(model, MaxxVit):
        # The transformer stage is the last one (C-C-C-T); its feature map is img_size / reduction.
        reduction = int(model.feature_info[-1]["reduction"])
        side = img_size // reduction
        return side * side
    return None


def attention_warning(model: Any, img_size: int, name: str) -> str | None:
    """One line when the attention stage would see fewer than :data:`MIN_ATTENTION_TOKENS` tokens."""
    tokens = attention_tokens(model, img_size)
    if tokens is None or tokens >= MIN_ATTENTION_TOKENS:
        return None
    return (
        f"{name} at {img_size} px: its attention stage sees {tokens} token(s), so attention does "
        f"almost nothing; train at a larger data.img_size (the Astroformer paper used 224)"
    )


# ``train.channels_last: auto`` on the CPU: the model families whose training step is faster in
# channels-last memory format, by the model-name prefix. benchmarks/memory_format.py measures it
# and says whether this table still holds (docs/performance.md has the figures). A family not
# listed, and every model on a GPU (not measured yet), trains contiguous, as before 0.4.0.
CHANNELS_LAST_CPU: dict[str, bool] = {
    "resnet": True,  # the CIFAR ResNets and ResNet-18/34: convolutions only (resnet20: 1.24x)
    "cct_": True,  # the convolutional tokenizer is most of the work at 32 px (cct_2_3x2_32: 1.34x)
    "mobilenetv2": True,  # depthwise convolutions (mobilenetv2_050: 1.8x)
    "cvt_": False,  # a patch embedding, then transformer blocks: no difference (cvt_2_4_32)
    "vit_lite_": False,  # the same (vit_lite_2_4_32)
}


def table_entry(table: dict[str, bool], model_name: str) -> bool | None:
    """What a measured table (:data:`CHANNELS_LAST_CPU`, :data:`BF16_CPU`) says of ``model_name``: the
    entry of its longest matching prefix, or None when no prefix matches (no figure)."""
    prefixes = [p for p in table if model_name.startswith(p)]
    return table[max(prefixes, key=len)] if prefixes else None


def channels_last_on_cpu(model_name: str) -> bool:
    """Whether :data:`CHANNELS_LAST_CPU` says ``model_name`` trains faster channels-last on a CPU."""
    return table_entry(CHANNELS_LAST_CPU, model_name) is True


def resolve_channels_last(recipe: Recipe, device_type: str | None) -> tuple[Recipe, str | None]:
    """``train.channels_last: auto`` made true or false for this model on ``device_type`` ("cpu",
    "cuda"; None: not known, left auto), and the line saying so; a set value is kept. The recipe
    records the choice, so a resumed run keeps it."""
    if recipe.train.channels_last != "auto" or device_type is None:
        return recipe, None
    resolved = copy.deepcopy(recipe)
    on = device_type == "cpu" and channels_last_on_cpu(recipe.model.name)
    resolved.train.channels_last = on
    where = "on the CPU" if device_type == "cpu" else f"on {device_type} (not measured there yet)"
    why = (
        "faster"
        if on
        else "not faster"
        if device_type == "cpu" and table_entry(CHANNELS_LAST_CPU, recipe.model.name) is not None
        else "no figure"
    )
    line = (
        f"train.channels_last auto -> {str(on).lower()} ({recipe.model.name} {where}: {why}, "
        "benchmarks/memory_format.py)"
    )
    return resolved, line


# ``train.amp: auto`` on the CPU: bf16 autocast for the model families whose training step is faster
# with it on a CPU with AMX tiles (:func:`astrocli.devices.cpu_has_bf16_tiles`) and that reach the same
# top-1. benchmarks/memory_format.py (``--amp``) measures the speed and says whether this table still
# holds, benchmarks/bf16_accuracy.py the top-1 (docs/performance.md has both). A family not listed,
# and every model on a CPU without AMX, trains in full precision, as before 0.5.0.
BF16_CPU: dict[str, bool] = {
    "resnet": True,  # resnet20: 1.98x per step, the same top-1 over three seeds
    "cct_": True,  # cct_2_3x2_32: 1.92x, the same top-1 over three seeds
    "cvt_": True,  # cvt_2_4_32: 1.51x, top-1 -0.2 points, within the seed-to-seed spread
    "vit_lite_": True,  # vit_lite_2_4_32: 1.46x, top-1 +0.3 points, within the seed-to-seed spread
    "mobilenetv2": False,  # depthwise convolutions run slower in bf16 (mobilenetv2_050: 0.5x)
    # Not listed: astroformer (astroformer_0 at 32 px, batch 64: 0.90x, not faster; its recipes train
    # at 224 px, not measured on a CPU), vit_ and the rest (not measured).
}


def bf16_on_cpu(model_name: str) -> bool:
    """Whether :data:`BF16_CPU` says ``model_name`` trains faster, as accurately, with bf16 autocast."""
    return table_entry(BF16_CPU, model_name) is True


def resolve_amp(recipe: Recipe, device_type: str | None, resumed: bool = False) -> tuple[Recipe, str | None]:
    """``train.amp: auto`` made ``bf16`` or ``none`` on the CPU, and the line saying so; a set value,
    and auto on a GPU (bf16 where the GPU has it, decided when the run starts), are kept. The recipe
    records the choice, so a resumed run keeps it; a resumed run whose recipe still says auto began
    before 0.5.0, in full precision, and stays there."""
    if recipe.train.amp != "auto" or device_type != "cpu":
        return recipe, None
    resolved = copy.deepcopy(recipe)
    name = recipe.model.name
    if resumed:
        on, why = False, "the run began in full precision (before 0.5.0)"
    elif not cpu_has_bf16_tiles():
        on, why = False, "this CPU has no AMX bf16 units"
    else:
        entry = table_entry(BF16_CPU, name)
        on = entry is True
        why = (
            "its family measured faster at the same top-1"
            if on
            else "its family measured not faster"
            if entry is False
            else "no figure for its family"
        )
        why = f"{name} on this AMX CPU: {why}"
    resolved.train.amp = "bf16" if on else "none"
    line = f"train.amp auto -> {resolved.train.amp} ({why}; docs/performance.md)"
    return resolved, line


def resolve_for_print(recipe: Recipe) -> tuple[Recipe, list[str]]:
    """What ``astro train --print-recipe`` shows: the recipe with its data defaults filled, and the
    lines saying what was chosen (YAML comments). Reading the data is cheap (file lists, array
    headers; nothing is downloaded); when it is not readable here, the recipe is shown as written.
    ``train.channels_last: auto`` and ``train.amp: auto`` are resolved for the device the run would use.
    """
    resolved, lines = _data_defaults_for_print(recipe)
    device_type = _device_type(recipe.train.device)
    resolved, layout_line = resolve_channels_last(resolved, device_type)
    resolved, amp_line = resolve_amp(resolved, device_type)
    return resolved, [*lines, *(line for line in (layout_line, amp_line) if line)]


def _device_type(spec: str) -> str | None:
    """``cpu``/``cuda`` for ``train.device`` here, or None when it cannot be resolved here."""
    try:
        return resolve_device(spec, option="train.device").type
    except AstroError:
        return None


def _data_defaults_for_print(recipe: Recipe) -> tuple[Recipe, list[str]]:
    if recipe.augment.preset == "none":
        return recipe, ["augment.preset none: keys the recipe leaves out keep their fixed defaults"]
    probe = copy.deepcopy(recipe)
    probe.data.download = False
    try:
        bundle = build_datasets(probe.data, follow_bands="data.in_chans" not in given_keys(recipe))
    except (AstroError, OSError, ValueError) as exc:
        return recipe, [
            f"augment.preset {recipe.augment.preset}: the data is not readable here "
            f"({first_line(exc, limit=160)}); "
            "keys the recipe leaves out are chosen from the data when training starts"
        ]
    resolved, choices = resolve_defaults(recipe, data_facts(bundle, probe))
    resolved.data.mean, resolved.data.std = probe.data.mean, probe.data.std
    resolved.data.in_chans = probe.data.in_chans  # the images' band count when it was left unset
    return resolved, describe(choices, resolved)
