"""Experiment loggers: TensorBoard event files, a real MLflow tracking server, W&B offline, missing extras.

One tiny run (resnet20 on 8-px digits, 2 epochs of 3 steps) logs to all three at once; the MLflow
server is started once for the module on 127.0.0.1 and stopped after.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import SHORT_QUICKSTART, as_overrides, one_thread, run_astro  # noqa: F401 (autouse fixture)

from astrocli.engine import train
from astrocli.engine.loggers import LoggerGroup, WandbLogger, build_loggers, flatten, parent_run
from astrocli.errors import AstroError
from astrocli.recipe import load_recipe

MLFLOW = Path(sys.executable).with_name("mlflow")


def tiny_overrides(out: Path, **extra: object) -> list[str]:
    return as_overrides({**SHORT_QUICKSTART, "output.dir": str(out), "output.log": "quiet"}, **extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts); its URL."""
    for extra in ("mlflow", "tensorboard", "wandb"):  # the [mlflow], [tensorboard], [wandb] extras
        pytest.importorskip(extra)
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopping it stops its web workers too
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # ~10 s idle; far more on a busy CI box
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_one_run_logs_to_tensorboard_mlflow_and_wandb(
    tmp_path: Path, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = load_recipe(
        "quickstart",
        tiny_overrides(
            tmp_path, **{"output.loggers": "[csv, tensorboard, mlflow, wandb]", "output.name": "logged"}
        ),
    )
    with parent_run(recipe, "logged-study", kind="tune") as parent:
        run_dir = train(recipe)
        parent.log_metrics({"best_val_top1": 50.0})
    assert parent.mlflow_run_id

    # TensorBoard: the epoch metrics at epochs 1 and 2, per-step loss and lr, the recipe as hparams.
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("val/top1", "val/loss", "epoch/train_loss", "train/loss", "train/lr"):
        assert tag in scalars, scalars
    top1 = [(e.step, e.value) for e in events.Scalars("val/top1")]
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [s for s, _ in top1] == [1, 2]
    assert [round(v, 4) for _, v in top1] == [round(float(r["val_top1"]), 4) for r in rows]
    hparams = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    hparams.Reload()
    assert any("hparams" in tag for tag in hparams.summary_metadata), hparams.summary_metadata.keys()

    # MLflow: params, metrics per epoch (step = epoch), artifacts, nested under the parent.
    client = MlflowClient(tracking_uri=mlflow_server)
    child_id = json.loads((run_dir / "loggers.json").read_text())["mlflow_run_id"]
    child = client.get_run(child_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.mlflow_run_id
    assert child.data.params["train.lr"] == str(recipe.train.lr)
    assert child.data.params["model.name"] == "resnet20"
    assert len(child.data.params) == len(flatten(recipe.to_dict()))
    history = client.get_metric_history(child_id, "val_top1")
    assert sorted(m.step for m in history) == [1, 2]
    assert [round(m.value, 4) for m in sorted(history, key=lambda m: m.step)] == [
        round(float(r["val_top1"]), 4) for r in rows
    ]
    assert child.data.metrics["best_top1"] == pytest.approx(
        json.loads((run_dir / "summary.json").read_text())["best_top1"]
    )
    artifacts = {a.path for a in client.list_artifacts(child_id)}
    assert {"best.safetensors", "summary.json", "curves.png"} <= artifacts
    parent_info = client.get_run(parent.mlflow_run_id)
    assert parent_info.info.status == "FINISHED"
    assert parent_info.data.metrics["best_val_top1"] == 50.0

    # W&B: offline (no API key), the run folder with its history file, inside the run directory.
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert list(offline[0].glob("*.wandb")), list(offline[0].iterdir())
    assert "wandb_id" in json.loads((run_dir / "loggers.json").read_text())


def test_default_loggers_are_csv_only_and_group_closes_on_failure(tmp_path: Path) -> None:
    recipe = load_recipe("quickstart", tiny_overrides(tmp_path))
    assert recipe.output.loggers == ["csv"]
    assert build_loggers(recipe) == []

    calls: list[tuple[str, str]] = []

    class Recorder:
        def start(self, recipe, run_dir):
            calls.append(("start", ""))

        def log_step(self, step, values):
            pass

        def log_epoch(self, epoch, row):
            raise RuntimeError("boom")

        def log_artifacts(self, run_dir):
            calls.append(("artifacts", ""))

        def finish(self, summary, status="finished"):
            calls.append(("finish", status))

    group = LoggerGroup([Recorder()])
    with pytest.raises(RuntimeError, match="boom"), group.session(recipe, tmp_path):
        group.log_epoch(1, {"val_top1": 1.0})
    assert calls == [("start", ""), ("finish", "failed")]


def test_a_logger_that_failed_stays_off_for_the_rest_of_the_run() -> None:
    # A flaky backend: every call raises. The first error warns and turns the logger off; the later
    # calls must neither reach the backend again nor end training (the second error used to).
    calls: list[str] = []

    class FlakyRun:
        def log(self, values: dict) -> None:
            calls.append("log")
            raise OSError("connection reset")

    warnings: list[str] = []
    logger = WandbLogger(warn=warnings.append)
    logger.run = FlakyRun()
    logger.log_step(10, {"loss": 1.0})
    logger.log_step(20, {"loss": 0.9})
    logger.log_epoch(1, {"val_top1": 50.0})
    assert calls == ["log"]
    assert warnings == ["wandb logging stopped (step: OSError: connection reset); training goes on"]


def test_local_mlflow_store_is_under_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from astrocli.engine.loggers import mlflow_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = load_recipe("quickstart", tiny_overrides(tmp_path))
    assert mlflow_tracking_uri(recipe) == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    recipe.output.mlflow_uri = "http://127.0.0.1:1"
    assert mlflow_tracking_uri(recipe) == "http://127.0.0.1:1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:2")
    assert mlflow_tracking_uri(recipe) == "http://127.0.0.1:2"


@pytest.mark.parametrize("extra", ["tensorboard", "mlflow", "wandb"])
def test_missing_extra_is_one_line_naming_the_pip_install(
    extra: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, extra, None)  # as if not installed
    with pytest.raises(AstroError, match=rf"pip install 'astrocli\[{extra}\]'"):
        build_loggers(load_recipe("quickstart", tiny_overrides(tmp_path, **{"output.loggers": f"[{extra}]"})))
    code, out, err = run_astro(
        [
            "train",
            "--recipe",
            "quickstart",
            *tiny_overrides(tmp_path, **{"output.loggers": f"[csv,{extra}]"}),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 2
    # The brackets survive rich's markup: the message names the extra.
    assert f"pip install 'astrocli[{extra}]'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "quickstart").exists()  # nothing trained


def test_export_missing_extra_keeps_the_extra_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The same rich-markup bug the issue names for `astro export`: the extra's name is printed."""
    from helpers import make_checkpoint

    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
    checkpoint = make_checkpoint(tmp_path / "model.safetensors", "resnet20", 8, data)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    code, _, err = run_astro(["export", checkpoint, "--format", "onnx"], monkeypatch, capsys)
    assert code == 2
    assert "pip install 'astrocli[export]'" in err
