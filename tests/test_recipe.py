"""Recipe schema: strict validation, type coercion, overrides, and the shipped recipes."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import timm

from astrocli.errors import RecipeError
from astrocli.recipe import PACKAGED_RECIPES, load_recipe, recipe_from_dict

SHIPPED = sorted(PACKAGED_RECIPES.glob("*.yaml"))
REQUIRED = {
    "quickstart",
    "galaxy10",
    "cifar10_cct_7_3x1",
    "cifar100_cct_7_3x1",
    "cifar10_astroformer",
    "cifar100_astroformer",
    "tiny_imagenet_astroformer",
    "flowers102_cct_7_7x2",
    "fashion_mnist_cct",
    "cifar10_resnet56",
    "cifar10_vit_lite_7_4",
    "cifar10_cvt_7_4",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_path_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "train:\n  epoch: 5\n"))
    assert "'train.epoch'" in str(err.value) and "train.epochs" in str(err.value)
    with pytest.raises(RecipeError, match="did you mean train"):
        load_recipe(None, ["trian.epochs=3"])


def test_source_names_in_the_recipe_are_the_registered_sources() -> None:
    # The recipe names the sources in its type (so its own coercion refuses a misspelt one without
    # importing astrocli.data); the registry in data/sources.py must name the same ones, in order.
    from astrocli.data.sources import SOURCES
    from astrocli.recipe import DataConfig

    hint = typing.get_type_hints(DataConfig)["source"]
    assert typing.get_args(hint) == tuple(SOURCES)


def test_wrong_type_names_key_and_expected_type(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, "train:\n  epochs: many\n"))
    assert "'train.epochs'" in str(err.value) and "int" in str(err.value)
    with pytest.raises(RecipeError, match="'data.source' must be one of .*'imagefolder'"):
        load_recipe(None, ["data.source=imagenette"])
    with pytest.raises(RecipeError, match="'augment.scale\\[1\\]' must be float"):
        load_recipe(None, ["augment.scale=[0.5, big]"])
    with pytest.raises(RecipeError, match="finite"):
        load_recipe(None, ["train.lr=.nan"])


def test_yaml_exponent_without_dot_is_coerced_to_float(tmp_path: Path) -> None:
    # PyYAML 1.1 reads 55e-5 as a *string*: the official CCT configs fall into this.
    recipe = load_recipe(write(tmp_path, "train:\n  lr: 55e-5\n  weight_decay: 6e-2\n"))
    assert isinstance(recipe.train.lr, float) and recipe.train.lr == pytest.approx(5.5e-4)
    assert recipe.train.weight_decay == pytest.approx(0.06)


def test_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: 300\naugment:\n")
    recipe = load_recipe(
        path, ["train.epochs=5", "data.root=/data/x", "augment.scale=[0.5, 1.0]", "model.drop_path_rate=null"]
    )
    assert recipe.train.epochs == 5
    assert recipe.data.root == "/data/x"
    assert recipe.augment.scale == [0.5, 1.0]
    assert recipe.model.drop_path_rate is None
    assert recipe.output.name == "r"  # defaults to the recipe file's stem
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(RecipeError, match="is a value, not a section"):
        load_recipe(path, ["train.epochs.x=1"])


def test_round_trip_through_yaml_is_identical() -> None:
    recipe = load_recipe("cifar10_cct_7_3x1")
    import yaml

    again = recipe_from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe


def test_every_required_recipe_is_shipped() -> None:
    assert REQUIRED <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_recipe_loads_and_names_a_zoo_model(path: Path) -> None:
    from astrocli.data import SOURCES
    from astrocli.models import get_model_info, list_models

    recipe = load_recipe(path)
    name = recipe.model.name
    if name.startswith("timm/"):  # a timm model: timm must know the architecture (no download here)
        assert timm.is_model(name.removeprefix("timm/").split(".")[0]), name
    else:
        assert name in list_models()
    assert recipe.data.source in SOURCES
    assert recipe.description and recipe.target
    assert path.read_text().startswith("#"), "each recipe opens with a comment naming its paper result"
    assert recipe.output.name == path.stem
    info = get_model_info(recipe.model.name)
    assert info.name == recipe.model.name


def test_recipes_command_lists_every_recipe() -> None:
    from typer.testing import CliRunner

    from astrocli.cli import app

    result = CliRunner().invoke(app, ["recipes", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert {r["name"] for r in rows} == {p.stem for p in SHIPPED}
    galaxy = next(r for r in rows if r["name"] == "galaxy10")
    assert galaxy["dataset"] == "galaxy10_decals" and "94.86" in galaxy["target"]


def test_string_keys_keep_the_override_text() -> None:
    # YAML would read these as numbers; a str key must keep exactly what was typed.
    recipe = load_recipe(None, ["data.sha256=0123456789", "output.name=1e3", "data.url=null"])
    assert recipe.data.sha256 == "0123456789"
    assert recipe.output.name == "1e3"
    assert recipe.data.url is None
