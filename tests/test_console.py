"""The console and start-up: torch-free start-up, the training console, piped output that is never
wrapped (the listing commands' `--format`), skipped images in one line. The output formats of
`astro predict`, `eval` and `bench --runs` are tested with their commands (test_predict.py, ...).

Training runs here are tiny (resnet20 at 8 px, a few steps) on real images (the Galaxy10 sample,
the scikit-learn digits).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import one_thread, run_astro, tiny_digits_overrides  # noqa: F401 (autouse fixture)
from rich.console import Console

from astrocli.engine import TrainingInterrupted, train
from astrocli.engine.console import TrainConsole
from astrocli.engine.run_dir import RESUME_FILE
from astrocli.engine.state import Progress, load_resume_state
from astrocli.notices import SkipLog, SkippedImagesWarning, install_warning_printer, skipped_images_line
from astrocli.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
PYTORCH = ("torch", "torchvision", "timm")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ---------------------------------------------------------------------------------------------
# Start-up without torch
# ---------------------------------------------------------------------------------------------


def imported_modules(args: list[str]) -> set[str]:
    """Modules ``python -X importtime -m astrocli ARGS`` imported (importtime lists each on stderr)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "astrocli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {
        line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["recipes"]], ids=["help", "version", "recipes"])
def test_help_version_and_recipes_do_not_import_torch(args: list[str]) -> None:
    modules = imported_modules(args)
    assert "astrocli.cli" in modules and "typer" in modules  # the listing is real
    assert not {m for m in modules if m.split(".")[0] in PYTORCH}


def test_lazy_models_attribute_and_timm_registration() -> None:
    """``astrocli.models`` still works as an attribute (PEP 562) and the zoo is in timm once imported.

    (That ``import astrocli`` itself leaves torch alone is what the start-up tests above check.)
    """
    import importlib

    import timm

    package = importlib.import_module("astrocli")
    assert package.HAS_PYTORCH is True
    assert package.__getattr__("models") is importlib.import_module("astrocli.models")
    assert timm.is_model("cct_2_3x2_32")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.__getattr__("nope")


# ---------------------------------------------------------------------------------------------
# The training console
# ---------------------------------------------------------------------------------------------


def recording_console(mode: str = "rich", terminal: bool = False) -> tuple[TrainConsole, io.StringIO]:
    """A TrainConsole whose stdout and stderr both go to one buffer."""
    console = TrainConsole(mode)
    buffer = io.StringIO()
    console.out = Console(file=buffer, width=120, force_terminal=terminal, highlight=False)
    console.err = console.out
    return console, buffer


def epoch_row(epoch: int) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 2.0 / epoch,
        "val_loss": 2.1 / epoch,
        "val_top1": 10.0 * epoch,
        "val_top5": 50.0,
        "lr": 1e-3,
        "img_per_s": 123.4,
        "seconds": 1.5,
    }


def test_epoch_table_header_is_printed_once_and_rows_line_up() -> None:
    console, buffer = recording_console()
    for epoch in (1, 2, 3, 10):
        console.epoch_end(epoch_row(epoch), is_best=epoch == 10)
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    assert sum("train loss" in line for line in lines) == 1
    rows = [line for line in lines if re.match(r"\s+\d+ │", line)]
    assert [int(r.split("│")[0]) for r in rows] == [1, 2, 3, 10]
    # Every row's column separators sit where the header's do.
    header = next(line for line in lines if "train loss" in line)
    columns = [i for i, ch in enumerate(header) if ch == "┃"]
    for row in rows:
        assert [i for i, ch in enumerate(row) if ch == "│"] == columns


def test_piped_epochs_are_consecutive_lines_without_bars() -> None:
    """Into a log file the bars draw nothing; rich's transient bar used to leave an empty line each
    time it stopped, one between every two epoch rows."""
    console, buffer = recording_console(terminal=False)
    for epoch in (1, 2, 3):
        console.epoch_start(epoch, 3, steps=4)
        console.step(2, 1.0, 1e-3, 100.0)
        console.task_begin("validating", 5)
        console.task_update(5)
        console.task_end()
        console.epoch_end(epoch_row(epoch), is_best=False)
    console.close()
    lines = buffer.getvalue().splitlines()
    assert "" not in lines and console._live() is None
    assert [int(r.split("│")[0]) for r in lines if re.match(r"\s+\d+ │", r)] == [1, 2, 3]


def test_signal_notice_and_errors_start_their_own_line() -> None:
    console, buffer = recording_console(terminal=True)
    console.epoch_start(1, 3, steps=50)
    console.step(10, 1.2345, 1e-3, 99.0)
    console.task_begin("validating", 5)
    console.task_update(2)
    console.warn("SIGINT received: finishing this step, then saving")
    console.close()
    assert console._live() is None
    segments = [ANSI.sub("", s) for s in re.split(r"[\r\n]", buffer.getvalue())]
    assert any(s.startswith("warning: SIGINT received") for s in segments)
    assert not any("━" in s and "warning:" in s for s in segments)  # never glued to a bar


def test_validation_and_cache_tasks_show_their_own_bar() -> None:
    console, buffer = recording_console(terminal=True)
    console.task_begin("decoding 30 val images into the tensor cache", 30)  # no epoch bar yet
    console.task_update(30)
    console.task_end()
    console.epoch_start(1, 1, steps=4)
    console.task_begin("validating", 5)
    for done in range(1, 6):
        console.task_update(done)
    console._live().refresh()  # the bar redraws on a timer; draw now
    text = ANSI.sub("", buffer.getvalue())
    assert "decoding 30 val images into the tensor cache" in text
    assert "validating" in text and "5/5" in text
    console.task_end()
    assert console._progress is not None and console._aux_task is None  # the epoch bar stays
    console.close()


def test_position_words_are_shared() -> None:
    assert Progress(epoch=1, step_in_epoch=3).position(5) == "epoch 2, after step 3 of 5"
    assert Progress(epoch=2).position(5) == "the end of epoch 2"
    assert Progress().position() == "the start"
    # Resume files written before the epoch-loss fields existed still load.
    old = {"epoch": 1, "step_in_epoch": 2, "global_step": 2, "best_top1": -1.0, "best_epoch": 0, "extra": {}}
    assert Progress(**old).epoch_loss_sum == 0.0 and Progress(**old).epoch_images == 0


def digits_overrides(out: Path, name: str, **extra: object) -> list[str]:
    return tiny_digits_overrides(out, name, **extra)


def jsonl_events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_resume_banner_matches_stop_message_and_epoch_loss_is_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    straight = train(load_recipe(None, digits_overrides(tmp_path, "straight")))

    def stop_mid_epoch_2(trainer, epoch: int, step: int) -> None:
        if (epoch, step) == (1, 1):
            trainer.stop_signal = signal.SIGTERM

    with pytest.raises(TrainingInterrupted) as stopped:
        train(load_recipe(None, digits_overrides(tmp_path, "split")), step_hook=stop_mid_epoch_2)
    where = re.search(r"stopped at (.+?) and saved", str(stopped.value)).group(1)
    assert where == "epoch 2, after step 2 of 3"
    progress = load_resume_state(tmp_path / "split" / RESUME_FILE).progress
    assert progress.epoch_images == 16 and progress.epoch_loss_sum > 0  # 2 steps of 8 images

    capsys.readouterr()
    train(resume_dir=tmp_path / "split", log="jsonl")
    start = next(e for e in jsonl_events(capsys.readouterr().out) if e["event"] == "start")
    assert start["resumed"] == f"at {where}"

    def losses(run: Path) -> list[float]:
        with (run / "metrics.csv").open() as handle:
            return [float(row["train_loss"]) for row in csv.DictReader(handle)]

    # The resumed epoch's loss covers all 3 steps (the straight run trained the same batches).
    assert losses(tmp_path / "split") == pytest.approx(losses(straight), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Skipped images in one line, progress while decoding and validating
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def galaxy_with_bad_files(galaxy_sample_dir: Path, tmp_path: Path) -> Path:
    """train/ and val/ class folders from the real sample, plus a non-image and a truncated JPEG."""
    root = tmp_path / "galaxy"
    for cls in sorted(p for p in galaxy_sample_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(cls.glob("*.jpg"))
        for split, chosen in (("train", images[:7]), ("val", images[7:])):
            (root / split / cls.name).mkdir(parents=True)
            for image in chosen:
                shutil.copy(image, root / split / cls.name / image.name)
    first_class = sorted(p.name for p in (root / "val").iterdir())[0]
    (root / "train" / first_class / "corrupt.jpg").write_bytes(b"this is not an image")
    data = next((root / "val" / first_class).glob("*.jpg")).read_bytes()
    (root / "val" / first_class / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return root


@pytest.mark.parametrize("pipeline", ["loader", "tensor"])
def test_skipped_images_are_one_line_and_long_steps_show_progress(
    galaxy_with_bad_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture, pipeline: str
) -> None:
    overrides = digits_overrides(
        tmp_path,
        "run",
        **{
            "data.source": "imagefolder",
            "data.root": galaxy_with_bad_files,
            "data.cache_dir": tmp_path / "cache",
            "data.pipeline": pipeline,
            "data.num_workers": 1 if pipeline == "loader" else 0,  # a skip inside a DataLoader worker
            "train.max_steps_per_epoch": 2,
        },
    )
    run_dir = train(load_recipe(None, overrides), log="jsonl")
    captured = capsys.readouterr()
    # Printed directly, not through the warnings filter (PYTHONWARNINGS=ignore cannot hide it).
    assert re.search(r"warning: 1 unreadable image under .* skipped: .*corrupt\.jpg", captured.err)
    events = jsonl_events(captured.out)
    skipped = [e["text"] for e in events if e["event"] == "warning" and "unreadable" in e["text"]]
    assert len(skipped) == 1, skipped  # once, although every epoch reads the file again
    assert skipped[0].startswith("1 unreadable image skipped: ") and "truncated.jpg" in skipped[0]
    assert "truncated.jpg" in (run_dir / "skipped-images.txt").read_text()
    tasks = [e["text"] for e in events if e["event"] == "task"]
    assert tasks.count("validating") == 2  # once per epoch
    decoding = [t for t in tasks if t.startswith("decoding")]
    if pipeline == "tensor":
        assert decoding == [
            "decoding 70 train images into the tensor cache",  # corrupt.jpg was left out when indexed
            "decoding 31 eval images into the tensor cache",
        ]
    else:
        assert decoding == []


def test_skip_log_gathers_paths_once_across_processes(tmp_path: Path) -> None:
    log = SkipLog(tmp_path / "skipped.txt")
    log.add("/data/a.jpg", "broken\ndata")
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read()).add('/data/b.jpg', 'cut')"
    import pickle

    child = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(log), cwd=REPO, capture_output=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    log.add("/data/a.jpg", "again")
    assert log.new_paths() == ["/data/a.jpg", "/data/b.jpg"]
    assert log.new_paths() == []
    assert skipped_images_line([f"{i}.jpg" for i in range(8)]) == (
        "8 unreadable images skipped: 0.jpg, 1.jpg, 2.jpg, 3.jpg, 4.jpg and 3 more"
    )


def test_cli_prints_astro_warnings_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    stream = io.StringIO()
    install_warning_printer(stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = warnings.showwarning  # catch_warnings restores it; keep ours inside
        warnings.warn(SkippedImagesWarning("2 unreadable images skipped: a.jpg, b.jpg"), stacklevel=1)
    assert stream.getvalue() == "warning: 2 unreadable images skipped: a.jpg, b.jpg\n"


# ---------------------------------------------------------------------------------------------
# Piped output is never wrapped; --format table|json|csv
# ---------------------------------------------------------------------------------------------


def test_piped_recipes_are_not_wrapped_at_narrow_columns() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "astrocli", "recipes"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "COLUMNS": "30"},
    )
    assert proc.returncode == 0, proc.stderr
    for path in sorted((REPO / "astrocli" / "recipes").glob("*.yaml")):
        assert re.search(rf"│ {path.stem}\s+│", proc.stdout), path.stem
    assert "CCT paper: CIFAR-10 top-1 96.53% (CCT-7/3x1, 300 epochs)" in proc.stdout


def test_every_command_prints_through_the_unwrapping_console() -> None:
    """Commands build their consoles with astrocli.output.make_console (never wraps when piped); a bare
    rich Console in a command wrapped `astro tune`'s best.yaml path mid-line when piped."""
    offenders = [
        path.name
        for path in sorted((REPO / "astrocli" / "commands").glob("*.py"))
        if re.search(r"\bConsole\(", path.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_recipes_and_models_formats(fmt: str, monkeypatch, capsys) -> None:
    code, out, _ = run_astro(["recipes", "--format", fmt], monkeypatch, capsys)
    assert code == 0
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(io.StringIO(out)))
    assert "quickstart" in {r["name"] for r in rows}
    code, out, _ = run_astro(
        ["models", "--family", "resnet_cifar", "--no-macs", "--format", fmt], monkeypatch, capsys
    )
    assert code == 0
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(io.StringIO(out)))
    assert "resnet20" in {r["model"] for r in rows}


def test_training_console_does_not_wrap_the_run_dir_when_piped(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    long_dir = "/tmp/" + "a-rather-long-folder-name/" * 4 + "run"
    TrainConsole("rich").start({"run dir": long_dir, "model": "resnet20 (0.27M params)"})
    assert long_dir in capsys.readouterr().out
