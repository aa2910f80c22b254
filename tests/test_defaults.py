"""Defaults chosen from the data (``augment.preset: auto``), epochs that count the whole run, the
Astroformer recipes at 224 px, and one-line errors for the new keys. Class weights and the balanced
sampler: test_balance.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_astro

from astrocli.data.defaults import (
    DataFacts,
    attention_warning,
    data_facts,
    fit_warmup_cooldown,
    is_grayscale,
    resolve_defaults,
)
from astrocli.engine.build import build_scheduler
from astrocli.errors import RecipeError
from astrocli.recipe import Recipe, given_keys, load_recipe


def facts(img_size: int = 32, in_chans: int = 3, grayscale: bool = False, source: str = "imagefolder"):
    return DataFacts(img_size, in_chans, 5000, 10, grayscale, source, [500] * 10)


def resolved(overrides: list[str], **fact_args) -> tuple[Recipe, list]:
    return resolve_defaults(load_recipe(None, overrides), facts(**fact_args))


# -- what auto picks ------------------------------------------------------------------------------


def test_small_colour_images_get_pad_crop_and_horizontal_flips() -> None:
    recipe, choices = resolved(["train.epochs=15", "train.batch_size=64"], img_size=32)
    a, t = recipe.augment, recipe.train
    assert (a.crop, a.padding, a.hflip, a.vflip) == ("pad_crop", 4, 0.5, 0.0)
    assert a.auto_augment is None and a.mixup == 0.0  # light: 15 epochs < 100
    assert t.epochs == 15  # set by the recipe: kept
    assert t.lr == pytest.approx(2e-3 * (64 / 128) ** 0.5) and t.warmup_epochs == 1
    keys = {c.key for c in choices}
    assert {"augment.crop", "augment.hflip", "train.lr"} <= keys and "train.epochs" not in keys


def test_single_channel_images_do_not_flip_and_large_images_get_a_gentle_crop() -> None:
    gray, _ = resolved([], img_size=32, in_chans=1, grayscale=True)
    assert (gray.augment.hflip, gray.augment.vflip) == (0.0, 0.0)
    large, _ = resolved([], img_size=224)
    assert large.augment.crop == "random_resized_crop" and large.augment.scale == [0.35, 1.0]
    assert large.augment.hflip == 0.5
    galaxy, _ = resolved([], img_size=64, source="galaxy10_decals")
    assert (galaxy.augment.crop, galaxy.augment.padding) == ("pad_crop", 8)
    assert (galaxy.augment.hflip, galaxy.augment.vflip) == (0.5, 0.5)


def test_epochs_when_unset_and_strong_preset_for_long_runs() -> None:
    recipe, _ = resolved([])  # 5,000 images, no epochs given: 2M images seen, capped at 200
    assert recipe.train.epochs == 200 and recipe.train.warmup_epochs == 10
    a = recipe.augment
    assert a.auto_augment == "rand-m9-mstd0.5-inc1" and a.mixup == 0.8 and a.label_smoothing == 0.1
    sgd, _ = resolved(["train.optimizer=sgd", "train.batch_size=512", "train.epochs=10"])
    assert sgd.train.lr == pytest.approx(0.2)
    assert recipe.train.batch_size == 128
    tiny, _ = resolve_defaults(load_recipe(None, []), DataFacts(64, 3, 80, 10, False, "imagefolder"))
    assert tiny.train.batch_size == 8 and tiny.train.lr == pytest.approx(2e-3 * (8 / 128) ** 0.5)


def test_keys_the_recipe_sets_are_kept_and_preset_none_fills_nothing() -> None:
    recipe, _ = resolved(["augment.crop=resize", "augment.hflip=0.25", "train.lr=0.01", "train.epochs=3"])
    assert (recipe.augment.crop, recipe.augment.hflip, recipe.train.lr) == ("resize", 0.25, 0.01)
    plain, choices = resolved(["augment.preset=none"])
    assert choices == [] and plain.augment == Recipe().augment.__class__(preset="none")
    assert plain.train == Recipe().train
    # Resolving twice changes nothing (resumed runs, checkpoints' recipes).
    again, more = resolve_defaults(recipe, facts(img_size=224))
    assert again.to_dict() == recipe.to_dict() and more == []


def test_a_value_changed_in_code_counts_as_set() -> None:
    recipe = load_recipe(None, ["train.epochs=4"])
    recipe.train.lr = 0.123  # what a tuner's trial does
    out, _ = resolve_defaults(recipe, facts())
    assert out.train.lr == 0.123
    assert given_keys(load_recipe(None, ["augment.crop=resize"])) == {"augment.crop"}


def test_facts_from_real_data(galaxy_sample_dir: Path) -> None:
    from astrocli.data import build_datasets

    digits = load_recipe(None, ["data.source=digits", "data.img_size=8"])
    bundle = build_datasets(digits.data)
    found = data_facts(bundle, digits)
    assert found.grayscale and found.num_classes == 10 and sum(found.class_counts) == found.num_images
    galaxies = load_recipe(None, [f"data.root={galaxy_sample_dir}", "data.val_fraction=0.2"])
    assert not is_grayscale(build_datasets(galaxies.data).train)


def test_print_recipe_shows_what_auto_chose(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = tmp_path / "short.yaml"
    recipe.write_text("model:\n  name: resnet20\ndata:\n  source: digits\ntrain:\n  epochs: 12\n")
    code, out, _ = run_astro(["train", "--recipe", recipe, "--print-recipe"], monkeypatch, capsys)
    assert code == 0
    assert "# augment.preset auto -> light (12 epochs < 100)" in out
    assert "# flips: none (single-channel" in out and "crop: pad_crop" in out and "epochs: 12" in out
    code, out, _ = run_astro(
        ["train", "--recipe", recipe, "--print-recipe", "augment.hflip=0.5"], monkeypatch, capsys
    )
    assert code == 0 and "# flips: horizontal (" in out  # what is in force, set or filled


def test_print_recipe_shows_the_precision_auto_chose(tmp_path: Path, monkeypatch, capsys) -> None:
    import astrocli.data.defaults as defaults

    monkeypatch.setattr(defaults, "cpu_has_bf16_tiles", lambda: True)
    recipe = tmp_path / "short.yaml"
    recipe.write_text("model:\n  name: resnet20\ndata:\n  source: digits\ntrain:\n  device: cpu\n")
    code, out, _ = run_astro(["train", "--recipe", recipe, "--print-recipe"], monkeypatch, capsys)
    assert code == 0 and "amp: bf16" in out
    assert (
        "# train.amp auto -> bf16 (resnet20 on this AMX CPU: its family measured faster at the same top-1"
        in out
    )
    monkeypatch.setattr(defaults, "cpu_has_bf16_tiles", lambda: False)
    code, out, _ = run_astro(["train", "--recipe", recipe, "--print-recipe"], monkeypatch, capsys)
    assert code == 0 and "amp: none" in out and "(this CPU has no AMX bf16 units;" in out


# -- train.epochs=N means N epochs ----------------------------------------------------------------


def test_scheduler_counts_warmup_and_cooldown_inside_epochs() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    recipe = load_recipe("cifar10_cct_7_3x1", [])  # 10 warmup + 10 cooldown epochs
    warnings: list[str] = []
    scheduler, total = build_scheduler(optimizer, recipe, updates_per_epoch=4, warn=warnings.append)
    assert total == recipe.train.epochs == 310 and warnings == []
    recipe.train.epochs = 5
    scheduler, total = build_scheduler(optimizer, recipe, updates_per_epoch=4, warn=warnings.append)
    assert total == 5 and len(warnings) == 1 and "do not fit in train.epochs=5" in warnings[0]
    lrs = []
    for step in range(1, 5 * 4 + 1):
        scheduler.step_update(num_updates=step)
        lrs.append(optimizer.param_groups[0]["lr"])
    # The warmup rises inside the run (timm overlays it on the cosine, so it peaks below 1e-3) ...
    peak = int(np.argmax(lrs))
    assert 0 < peak < 8 and lrs[0] < lrs[peak] and lrs[peak] > 5e-4
    assert lrs[-1] == pytest.approx(recipe.train.min_lr)  # ... and the cooldown ended it
    fit = fit_warmup_cooldown(5, 10, 10, 4)
    assert fit.warmup_updates + fit.cooldown_updates == 10 and fit.total_updates == 20


# -- Astroformer at the papers' size --------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10_astroformer", "cifar100_astroformer", "tiny_imagenet_astroformer"])
def test_astroformer_recipes_train_at_224(name: str) -> None:
    recipe = load_recipe(name, [])
    assert recipe.data.img_size == 224 and recipe.augment.preset == "none"


def test_attention_over_too_few_tokens_is_warned() -> None:
    from astrocli.models import create_model

    small = create_model("astroformer_0", num_classes=10, img_size=32)
    assert "sees 1 token(s)" in attention_warning(small, 32, "astroformer_0")
    assert attention_warning(small, 224, "astroformer_0") is None  # 7x7 = 49 tokens
    cct = create_model("cct_2_3x2_32", num_classes=10, img_size=32)
    assert attention_warning(cct, 32, "cct_2_3x2_32") is None
    assert attention_warning(create_model("resnet20", num_classes=10, img_size=32), 32, "resnet20") is None


# -- bad values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    ["augment.preset=medium", "train.class_weights=yes", "data.sampler=weighted", "train.calibrate=maybe"],
)
def test_bad_values_of_the_new_keys_are_one_line(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(RecipeError, match=f"recipe key '{key}' must be") as info:
        load_recipe(None, [override])
    assert "\n" not in str(info.value)
