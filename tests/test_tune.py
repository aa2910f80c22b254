"""`astro tune`: search-space validation, a resumed study, pruning, two processes on one SQLite study,
an interrupted trial.

Trials train resnet20 on 8-px digits (scikit-learn's bundled scans, offline) for 2 epochs of 3 steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SHORT_QUICKSTART, as_overrides, one_thread, run_astro  # noqa: F401 (autouse fixture)

from astrocli.errors import AstroError
from astrocli.experiments.tune import parse_space, run_tune
from astrocli.recipe import load_recipe

optuna = pytest.importorskip("optuna")  # the [tune] extra

REPO = Path(__file__).resolve().parents[1]
SPACE = "train.lr: {low: 1e-3, high: 1e-2, log: true}\ntrain.weight_decay: {low: 0.01, high: 0.1}\n"


def tiny_overrides(out: Path, **extra: object) -> list[str]:
    where = {"output.dir": str(out), "output.plots": False}
    return as_overrides(
        {**SHORT_QUICKSTART, "train.lr": 3e-3, "train.select_metric": "loss", **where}, **extra
    )


def write_space(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# -- the search space ------------------------------------------------------------------------------


def test_space_kinds_follow_the_values_and_the_recipe_schema() -> None:
    import yaml

    base = load_recipe("quickstart").to_dict()
    space = yaml.safe_load(
        "train.lr: {low: 1e-4, high: 3e-3, log: true}\n"
        "train.weight_decay: {low: 0.01, high: 0.1}\n"
        "train.warmup_epochs: {low: 0, high: 3}\n"
        "train.epochs: {low: 4.0, high: 8.0, step: 2}\n"  # an int key: whole floats become ints
        "augment.hflip: {low: 0, high: 1}\n"  # a float key: ints stay a float range
        "train.optimizer: [adamw, sgd]\n"
    )
    params = {p.key: p for p in parse_space(space, base)}
    assert (params["train.lr"].kind, params["train.lr"].log, params["train.lr"].low) == ("float", True, 1e-4)
    assert params["train.warmup_epochs"].kind == "int"
    assert (params["train.epochs"].kind, params["train.epochs"].low, params["train.epochs"].step) == (
        "int",
        4,
        2,
    )
    assert params["augment.hflip"].kind == "float"
    assert params["train.optimizer"].choices == ("adamw", "sgd")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train.lrr: {low: 1e-4, high: 1e-2}", "unknown recipe key 'train.lrr'; did you mean train.lr"),
        ("trian.lr: {low: 1e-4, high: 1e-2}", "unknown recipe key 'trian'"),
        ("train.lr: {low: 1e-2, high: 1e-4}", "low must be below high"),
        ("train.lr: {low: 0, high: 1e-2, log: true}", "a log range needs low > 0"),
        ("train.lr: {low: 1e-4}", "a range needs low and high"),
        ("train.lr: {low: 1e-4, high: 1e-2, steps: 2}", "unknown field steps"),
        ("train.lr: {low: 0.1, high: 0.2, step: 0.5}", "step must be > 0 and at most high - low"),
        ("train.epochs: {low: 1.5, high: 5}", "must be whole numbers"),
        ("train.optimizer: []", "nothing to choose from"),
        ("train.optimizer: [adamw, lion]", "recipe key 'train.optimizer' must be one of"),
        ("train.lr: 0.1", "give a range"),
        ("model: {low: 0, high: 1}", "'model' must be a mapping"),
        ("[1, 2]", "a search space is a YAML mapping"),
    ],
)
def test_bad_space_is_one_clear_line(text: str, message: str) -> None:
    import yaml

    with pytest.raises(AstroError, match=message.replace("[", r"\[")) as info:
        parse_space(yaml.safe_load(text), load_recipe("quickstart").to_dict(), "space.yaml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("space.yaml")


def test_cli_rejects_a_bad_space_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    space = write_space(tmp_path, "train.lrr: {low: 1e-4, high: 1e-2}\n")
    code, _, err = run_astro(
        ["tune", "--recipe", "quickstart", "--space", space, *tiny_overrides(tmp_path)], monkeypatch, capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "did you mean train.lr" in err
    assert not (tmp_path / "quickstart-tune").exists()


def test_missing_optuna_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    code, _, err = run_astro(
        ["tune", "--recipe", "quickstart", "--space", write_space(tmp_path)], monkeypatch, capsys
    )
    assert code == 2
    assert "pip install 'astrocli[tune]'" in err


# -- studies ---------------------------------------------------------------------------------------


def test_tune_finishes_resumes_and_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    space = write_space(tmp_path)
    args = ["tune", "--recipe", "quickstart", "--space", space, *tiny_overrides(tmp_path)]
    code, out, err = run_astro([*args, "--trials", "3"], monkeypatch, capsys)
    assert code == 0, err
    tune_dir = tmp_path / "quickstart-tune"
    storage = f"sqlite:///{tune_dir / 'study.db'}"
    study = optuna.load_study(study_name="quickstart", storage=storage)
    assert len(study.trials) == 3
    # Trial 0 is the recipe's own values; every trial is an ordinary run directory.
    assert study.trials[0].params == {"train.lr": 3e-3, "train.weight_decay": 0.05}
    for trial in study.trials:
        assert (tune_dir / f"trial{trial.number}" / "metrics.csv").is_file()
        assert (tune_dir / f"trial{trial.number}" / "recipe.yaml").is_file()
    assert "top trials" in out and "val_loss" in out
    assert (tune_dir / "history.png").stat().st_size > 1000

    # best.yaml: the best trial's full recipe, loadable by `astro train --recipe`.
    best = load_recipe(tune_dir / "best.yaml")
    assert best.train.lr == pytest.approx(study.best_params["train.lr"])
    assert best.train.weight_decay == pytest.approx(study.best_params["train.weight_decay"])
    assert best.model.name == "resnet20" and best.output.name == "quickstart-best"

    # Re-running resumes the study; a clearly worse trial queued first (lr 1.0: the validation loss
    # explodes to ~1e10 yet stays finite) is pruned after its first epoch.
    study.enqueue_trial({"train.lr": 1.0, "train.weight_decay": 0.05})
    code, out, err = run_astro([*args, "--trials", "2"], monkeypatch, capsys)
    assert code == 0, err
    study = optuna.load_study(study_name="quickstart", storage=storage)
    assert len(study.trials) == 5
    worse = study.trials[3]
    assert worse.params["train.lr"] == 1.0
    assert worse.state == optuna.trial.TrialState.PRUNED, [
        (t.number, t.state, t.intermediate_values) for t in study.trials
    ]
    assert list(worse.intermediate_values) == [1]  # stopped after its first epoch
    assert len((tune_dir / "trial3" / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1
    assert "trial 3 pruned" in out


def test_two_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    space = write_space(tmp_path)
    command = [
        sys.executable,
        "-m",
        "astrocli.cli",
        "tune",
        "--recipe",
        "quickstart",
        "--space",
        str(space),
        "--storage",
        storage,
        "--study",
        "shared",
        "--trials",
        "2",
        "--pruner",
        "none",  # every trial runs to the end, so all four are COMPLETE
        *tiny_overrides(tmp_path, **{"train.epochs": 1}),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = sorted(t.number for t in study.trials)
    assert numbers == [0, 1, 2, 3]  # each process added 2, none lost or doubled
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    run_dirs = sorted(t.user_attrs["run_dir"] for t in study.trials)
    assert len(set(run_dirs)) == 4
    trial_dirs = sorted(
        p.name for p in (tmp_path / "quickstart-tune").iterdir() if p.name.startswith("trial")
    )
    assert trial_dirs == ["trial0", "trial1", "trial2", "trial3"]


def test_an_interrupted_trial_is_marked_failed_and_the_study_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal

    import astrocli.engine
    from astrocli.engine import train

    def stop_first_trial(recipe, **kwargs):
        def hook(trainer, epoch: int, step: int) -> None:
            if recipe.output.name == "trial0" and (epoch, step) == (0, 1):
                trainer.stop_signal = signal.SIGINT  # what the SIGINT handler does

        return train(recipe, step_hook=hook, **kwargs)

    monkeypatch.setattr(astrocli.engine, "train", stop_first_trial)
    space = write_space(tmp_path)
    overrides = tiny_overrides(tmp_path, **{"train.epochs": 1})
    with pytest.raises(
        AstroError, match="marked failed in study 'quickstart'.*run the same astro tune command"
    ):
        run_tune("quickstart", space, overrides, trials=2)
    storage = f"sqlite:///{tmp_path / 'quickstart-tune' / 'study.db'}"
    study = optuna.load_study(study_name="quickstart", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
    assert (tmp_path / "quickstart-tune" / "trial0" / "resume.safetensors").is_file()  # nothing lost

    result = run_tune("quickstart", space, overrides, trials=1)
    states = [t.state for t in result.study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert result.best_yaml is not None and result.best_yaml.is_file()
    assert any("importance.png skipped" in note for note in result.notes)  # one finished trial


def test_a_trial_keeps_the_keys_the_user_set_so_auto_fills_the_rest() -> None:
    from astrocli.data.defaults import DataFacts, resolve_defaults
    from astrocli.experiments.tune import recipe_for_trial
    from astrocli.recipe import given_keys

    base = load_recipe(None, ["model.name=cct_2_3x2_32", "data.source=digits", "train.epochs=3"])
    trial = recipe_for_trial(base, {"train.lr": 3e-3})
    assert given_keys(trial) == given_keys(base) | {"train.lr"}
    facts = DataFacts(img_size=32, in_chans=1, num_images=50, num_classes=10, grayscale=True, source="digits")
    resolved, _ = resolve_defaults(trial, facts)
    assert resolved.train.lr == 3e-3  # the trial's value is kept
    assert resolved.train.batch_size == 8 and resolved.augment.crop == "pad_crop"  # the rest from the data
