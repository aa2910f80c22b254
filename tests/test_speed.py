"""Issue 21's speed work: loader workers kept across epochs (same images, exact resume), the
calibration that reuses the last evaluation's logits, the automatic memory format and the automatic
bf16 autocast on CPUs with AMX."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_thread, tiny_digits_overrides  # noqa: F401 (autouse fixture)

from astrocli.checkpoint import load_checkpoint, read_tensors
from astrocli.data.loader import LoaderBatches
from astrocli.engine import TrainingInterrupted, train
from astrocli.recipe import load_recipe


def noisy(image: torch.Tensor) -> torch.Tensor:
    """A transform that draws from torch, numpy and ``random`` (as timm's augmentations do)."""
    return image + torch.rand(1) + float(np.random.rand()) + random.random()


def epochs_of(source: LoaderBatches, plan: list[tuple[int, int, int | None]]) -> list[torch.Tensor]:
    """The batches of ``(epoch, skip, stop_after)`` passes (a stop leaves prefetched work behind)."""
    seen = []
    for epoch, skip, stop in plan:
        source.set_epoch(epoch, skip_batches=skip)
        for i, (images, _) in enumerate(source):
            seen.append(images)
            if stop is not None and i + 1 == stop:
                break
    return seen


def test_persistent_workers_give_the_images_of_new_workers_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = [(torch.full((1, 2, 2), float(i)), i % 3) for i in range(24)]

    def source() -> LoaderBatches:
        return LoaderBatches(dataset, noisy, 4, torch.device("cpu"), train=True, seed=3, num_workers=2)

    # epoch 0 whole, epoch 1 stopped after 2 batches, epoch 2 resumed after 3 batches, epoch 0 again
    plan = [(0, 0, None), (1, 0, 2), (2, 3, None), (0, 0, None)]
    kept = source()
    persistent = epochs_of(kept, plan)
    workers = kept._kept_loader._iterator._workers  # kept alive across the four passes
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    kept.close()  # what train() does at the end of a run
    for w in workers:
        w.join(timeout=10)
    assert not any(w.is_alive() for w in workers)
    monkeypatch.setattr(LoaderBatches, "persistent_workers", False)
    fresh_source = source()
    fresh = epochs_of(fresh_source, plan)
    assert fresh_source._kept_loader is None
    assert len(persistent) == len(fresh) == 6 + 2 + 3 + 6
    for a, b in zip(persistent, fresh, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(persistent[0], persistent[6])  # epochs differ: the seeds do change
    assert torch.equal(persistent[0], persistent[-6])  # and the same epoch repeats exactly


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_tensors(path)[0]


def _same_weights(a: Path, b: Path) -> None:
    ta, tb = _weights(a), _weights(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_persistent_workers_train_the_same_weights_and_resume_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features = {
        "data.num_workers": 2,
        "augment.auto_augment": "rand-m9-mstd0.5",
        "augment.mixup": 0.8,
        "train.max_steps_per_epoch": 2,
    }

    def recipe(name: str):  # noqa: ANN202
        return load_recipe(None, tiny_digits_overrides(tmp_path, name, **features))

    kept = train(recipe("kept"))

    def stop_at_epoch_end(trainer, epoch: int, step: int) -> None:  # noqa: ANN001
        if (epoch, step) == (0, 1):
            import signal

            trainer.stop_signal = signal.SIGTERM

    with pytest.raises(TrainingInterrupted):
        train(recipe("split"), step_hook=stop_at_epoch_end)
    train(resume_dir=tmp_path / "split")
    monkeypatch.setattr(LoaderBatches, "persistent_workers", False)
    fresh = train(recipe("fresh"))
    for name in ("last.safetensors", "best.safetensors"):
        _same_weights(kept / name, fresh / name)
        _same_weights(kept / name, tmp_path / "split" / name)
    assert load_checkpoint(kept / "last.safetensors")[1].epoch == 2


def test_calibration_reuses_the_last_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No extra pass over the validation split after training: the calibration decides from the
    logits the last evaluations kept, exactly as from a fresh pass over the checkpoints' weights."""
    import json

    import astrocli.engine.calibrate as calibration
    from astrocli.calibration import calibrate_logits
    from astrocli.data import build_datasets
    from astrocli.data.pipeline import build_eval_batches
    from astrocli.engine.build import build_model

    passes = []
    collect = calibration.collect_logits
    monkeypatch.setattr(calibration, "collect_logits", lambda *a, **k: passes.append(1) or collect(*a, **k))
    overrides = tiny_digits_overrides(tmp_path, "cal", **{"train.calibrate": True, "data.val_fraction": 0.3})
    run = train(load_recipe(None, overrides))
    assert passes == []
    recipe = load_recipe(run / "recipe.yaml")
    bundle = build_datasets(recipe.data)
    batches = build_eval_batches(bundle.val, recipe, torch.device("cpu"), mean=bundle.mean, std=bundle.std)
    fresh = {}
    for name in ("best", "last"):
        state, meta = load_checkpoint(run / f"{name}.safetensors")
        model = build_model(recipe, bundle.num_classes, load_weights=False)
        model.load_state_dict(state)
        amp = torch.bfloat16 if recipe.train.amp == "bf16" else None  # what the run's passes used
        fresh[name] = calibrate_logits(*collect(model, batches, torch.device("cpu"), amp))
        assert meta.temperature == pytest.approx(fresh[name]["temperature"], rel=1e-6)
    stored = json.loads((run / "summary.json").read_text())["calibration"]
    assert fresh["best"]["num_images"] == len(bundle.val) > 0
    for key in ("fitted_temperature", "ece", "ece_calibrated", "mistakes", "num_images"):
        assert stored[key] == pytest.approx(fresh["best"][key], rel=1e-6), key


@pytest.mark.parametrize(
    ("setting", "model", "device", "expected"),
    [
        ("auto", "resnet20", "cpu", True),  # the table says faster
        ("auto", "cct_2_3x2_32", "cpu", False),  # the table says not faster
        ("auto", "vit_lite_2_4_32", "cpu", False),  # not in the table: as before
        ("auto", "resnet20", "cuda", False),  # not measured on a GPU
        ("auto", "resnet20", None, "auto"),  # device unknown: left for the run to decide
        (False, "resnet20", "cpu", False),  # a set value is kept
        (True, "cct_2_3x2_32", "cpu", True),
    ],
)
def test_channels_last_auto_follows_the_measured_table(
    monkeypatch: pytest.MonkeyPatch, setting: object, model: str, device: str | None, expected: object
) -> None:
    import astrocli.data.defaults as defaults

    monkeypatch.setattr(defaults, "CHANNELS_LAST_CPU", {"resnet": True, "cct_": False})
    recipe = load_recipe(None, [f"model.name={model}", f"train.channels_last={str(setting).lower()}"])
    resolved, line = defaults.resolve_channels_last(recipe, device)
    assert resolved.train.channels_last == expected
    assert (line is not None) == (setting == "auto" and device is not None)
    assert recipe.train.channels_last == setting  # the input recipe is left alone


def test_channels_last_auto_is_recorded_and_kept_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto trains the model and its batches channels-last where the table says so, writes the choice
    into recipe.yaml and summary.json, and a resumed run keeps it even if the table has changed."""
    import json
    import signal

    import astrocli.data.defaults as defaults

    monkeypatch.setattr(defaults, "CHANNELS_LAST_CPU", {"resnet": True})
    layouts = []

    def hook(trainer, epoch: int, step: int) -> None:  # noqa: ANN001
        conv = trainer.model.conv1.weight if hasattr(trainer.model, "conv1") else None
        layouts.append(conv is not None and conv.is_contiguous(memory_format=torch.channels_last))
        if (epoch, step) == (0, 2):
            trainer.stop_signal = signal.SIGTERM

    overrides = tiny_digits_overrides(tmp_path, "cl", **{"data.pipeline": "tensor"})
    with pytest.raises(TrainingInterrupted):
        train(load_recipe(None, overrides), step_hook=hook)
    assert "channels_last: true" in (tmp_path / "cl" / "recipe.yaml").read_text()
    monkeypatch.setattr(defaults, "CHANNELS_LAST_CPU", {"resnet": False})
    run = train(resume_dir=tmp_path / "cl", step_hook=hook)
    assert layouts and all(layouts)
    assert json.loads((run / "summary.json").read_text())["channels_last"] is True


@pytest.mark.parametrize(
    ("setting", "model", "device", "tiles", "resumed", "expected"),
    [
        ("auto", "resnet20", "cpu", True, False, "bf16"),  # AMX, and the table says faster
        ("auto", "cct_2_3x2_32", "cpu", True, False, "none"),  # the table says not faster
        ("auto", "vit_lite_2_4_32", "cpu", True, False, "none"),  # not in the table: as before
        ("auto", "resnet20", "cpu", False, False, "none"),  # no AMX: bf16 would be emulated
        ("auto", "resnet20", "cpu", True, True, "none"),  # a run begun before 0.5.0 stays fp32
        ("auto", "resnet20", "cuda", True, False, "auto"),  # a GPU decides at the start, as before
        ("auto", "resnet20", None, True, False, "auto"),  # device unknown: left for the run
        ("none", "resnet20", "cpu", True, False, "none"),  # a set value is kept
        ("bf16", "cct_2_3x2_32", "cpu", False, False, "bf16"),
    ],
)
def test_amp_auto_follows_the_measured_table_on_an_amx_cpu(
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    model: str,
    device: str | None,
    tiles: bool,
    resumed: bool,
    expected: str,
) -> None:
    import astrocli.data.defaults as defaults

    monkeypatch.setattr(defaults, "BF16_CPU", {"resnet": True, "cct_": False})
    monkeypatch.setattr(defaults, "cpu_has_bf16_tiles", lambda: tiles)
    recipe = load_recipe(None, [f"model.name={model}", f"train.amp={setting}"])
    resolved, line = defaults.resolve_amp(recipe, device, resumed=resumed)
    assert resolved.train.amp == expected
    assert (line is not None) == (setting == "auto" and device == "cpu")
    if line:
        assert line.startswith(f"train.amp auto -> {expected} (")
    assert recipe.train.amp == setting  # the input recipe is left alone


def test_amx_probe_matches_the_cpu_flags() -> None:
    """cpu_has_bf16_tiles reads torch's private probe; it must agree with what the kernel reports."""
    from astrocli.devices import cpu_has_bf16_tiles

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else None
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    assert cpu_has_bf16_tiles() == (" amx_tile" in flags and " amx_bf16" in flags)


def test_amp_auto_trains_in_bf16_records_it_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto trains under bf16 autocast where the table and the CPU say so, writes the choice into
    recipe.yaml and summary.json; a stopped and resumed run keeps it (the table changed meanwhile)
    and ends with the weights of an uninterrupted one."""
    import json
    import signal

    import astrocli.data.defaults as defaults

    monkeypatch.setattr(defaults, "BF16_CPU", {"resnet": True})
    monkeypatch.setattr(defaults, "cpu_has_bf16_tiles", lambda: True)
    dtypes = []

    def hook(trainer, epoch: int, step: int) -> None:  # noqa: ANN001
        dtypes.append(trainer.amp_dtype)
        if (epoch, step) == (1, 1) and trainer.run_dir.name == "stopped":
            trainer.stop_signal = signal.SIGTERM

    whole = train(load_recipe(None, tiny_digits_overrides(tmp_path, "whole")), step_hook=hook)
    with pytest.raises(TrainingInterrupted):
        train(load_recipe(None, tiny_digits_overrides(tmp_path, "stopped")), step_hook=hook)
    assert "amp: bf16" in (tmp_path / "stopped" / "recipe.yaml").read_text()
    monkeypatch.setattr(defaults, "BF16_CPU", {"resnet": False})
    resumed = train(resume_dir=tmp_path / "stopped", step_hook=hook)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert json.loads((resumed / "summary.json").read_text())["autocast"] == "bfloat16"
    a, _ = read_tensors(whole / "last.safetensors")
    b, _ = read_tensors(resumed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_begun_in_full_precision_resumes_in_full_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run started before 0.5.0 kept ``amp: auto`` in its recipe.yaml and resume state and trained
    in fp32 on the CPU: resuming it on an AMX CPU whose table says bf16 keeps fp32 rather than switching
    precision mid-run."""
    import signal

    import astrocli.data.defaults as defaults
    import astrocli.engine.launch as launch

    resolve_amp = launch.resolve_amp
    monkeypatch.setattr(launch, "resolve_amp", lambda recipe, device_type, resumed=False: (recipe, None))
    dtypes = []

    def hook(trainer, epoch: int, step: int) -> None:  # noqa: ANN001
        dtypes.append(trainer.amp_dtype)
        if (epoch, step) == (0, 2):
            trainer.stop_signal = signal.SIGTERM

    with pytest.raises(TrainingInterrupted):  # as 0.4.0 ran it: auto left unresolved, fp32 on the CPU
        train(load_recipe(None, tiny_digits_overrides(tmp_path, "old")), step_hook=hook)
    assert "amp: auto" in (tmp_path / "old" / "recipe.yaml").read_text()
    monkeypatch.setattr(launch, "resolve_amp", resolve_amp)
    monkeypatch.setattr(defaults, "BF16_CPU", {"resnet": True})
    monkeypatch.setattr(defaults, "cpu_has_bf16_tiles", lambda: True)
    train(resume_dir=tmp_path / "old", step_hook=hook)
    assert len(dtypes) > 3 and all(d is None for d in dtypes)
