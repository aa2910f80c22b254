"""MLflow works with its defaults, and no password leaves with a run.

* With ``output.loggers`` naming mlflow and no tracking URI, runs log to ``sqlite:///<output.dir>/mlflow.db``
  (MLflow 3 refuses its old file store); an explicit ``file://`` store works where the user allows it
  (``MLFLOW_ALLOW_FILE_STORE=true``) and is otherwise one line saying so.
* A tiny real run logs to a real ``mlflow server`` on 127.0.0.1 through a URL with a password: the
  password is in no file of the run directory, no checkpoint or ONNX metadata, no logged parameter and
  no console line; the stored recipe holds ``user:***@host``, and a resume asks for the URL again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SHORT_QUICKSTART, as_overrides, one_thread, run_astro  # noqa: F401 (autouse fixture)
from test_loggers import mlflow_server  # noqa: F401 (the module's real `mlflow server` fixture)

from astrocli.engine.loggers import mlflow_tracking_uri
from astrocli.errors import AstroError
from astrocli.recipe import load_recipe
from astrocli.redact import redact_url, scrub

SECRET = "s3cret-Pa55"


def train_args(out: Path, **extra: object) -> list[str]:
    values = {**SHORT_QUICKSTART, "output.dir": str(out), "output.log": "quiet", "output.name": "run"}
    return ["train", "--recipe", "quickstart", *as_overrides(values, **extra)]


def test_mlflow_defaults_to_a_sqlite_store_beside_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = tmp_path / "runs"
    code, stdout, err = run_astro(train_args(out, **{"output.loggers": "[csv,mlflow]"}), monkeypatch, capsys)
    assert code == 0, err
    assert "INFO" not in err  # MLflow's table-creation lines stay out of the console
    store = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    assert mlflow_tracking_uri(load_recipe(out / "run" / "recipe.yaml")) == store
    client = MlflowClient(tracking_uri=store)
    run = client.search_runs([client.get_experiment_by_name("astro").experiment_id])[0]
    assert run.data.metrics["val_top1"] >= 0 and run.info.status == "FINISHED"
    assert (out / "mlartifacts").is_dir() and list((tmp_path / "cwd").iterdir()) == []  # all beside the runs

    # An explicit file:// store: one line naming MLflow's switch, then it works once the user sets it.
    explicit = (tmp_path / "mlruns").as_uri()
    args = train_args(tmp_path / "runs2", **{"output.loggers": "[csv,mlflow]", "output.mlflow_uri": explicit})
    code, _, err = run_astro(args, monkeypatch, capsys)
    assert code == 1 and "MLFLOW_ALLOW_FILE_STORE=true" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    code, _, err = run_astro(args, monkeypatch, capsys)
    assert code == 0, err
    assert any((tmp_path / "mlruns").rglob("val_top1"))  # the file store's metric files


def test_no_password_in_run_files_metadata_logger_or_console(
    mlflow_server: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from mlflow.tracking import MlflowClient

    from astrocli.inference.export import export_checkpoint

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    url = mlflow_server.replace("http://", f"http://astro:{SECRET}@")
    out = tmp_path / "runs"
    extra = {"output.loggers": "[csv,tensorboard,mlflow]", "output.mlflow_uri": url}
    code, stdout, err = run_astro(train_args(out, **extra), monkeypatch, capsys)
    assert code == 0, err
    run = out / "run"
    onnx = export_checkpoint(run / "best.safetensors", "onnx", output=tmp_path / "best.onnx").path
    code, printed, _ = run_astro(train_args(out, **extra) + ["--print-recipe"], monkeypatch, capsys)
    assert code == 0
    for name in ("console", "print-recipe"):
        text = {"console": stdout + err, "print-recipe": printed}[name]
        assert SECRET not in text, name
    for path in [*run.rglob("*"), onnx]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    redacted = url.replace(SECRET, "***")
    assert load_recipe(run / "recipe.yaml").output.mlflow_uri == redacted
    assert "mlflow_uri: http://astro:***@" in printed
    client = MlflowClient(tracking_uri=mlflow_server)  # the run reached the server, with its params
    logged = client.search_runs([client.get_experiment_by_name("astro").experiment_id])
    params = [r.data.params for r in logged if r.data.tags.get("astro.run_dir") == str(run)]
    assert params and params[0]["output.mlflow_uri"] == redacted
    assert all(SECRET not in value for value in params[0].values())

    # A resume must be given the URL again: the run's files do not have it.
    resumed = load_recipe(run / "recipe.yaml")
    with pytest.raises(AstroError, match=r"password left out of the run's files; give it again"):
        mlflow_tracking_uri(resumed)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert mlflow_tracking_uri(resumed) == url


def test_redaction_of_urls_and_messages(tmp_path: Path) -> None:
    assert redact_url("postgresql://user:secret@db/mlflow") == "postgresql://user:***@db/mlflow"
    assert redact_url("postgresql://db/x?user=u&password=pw") == "postgresql://db/x?user=u&password=***"
    for plain in ("sqlite:///runs/mlflow.db", "http://127.0.0.1:5000", "file:///tmp/mlruns", None):
        assert redact_url(plain) == plain
    message = "could not connect to postgresql://user:secret@db/mlflow: password 'secret' refused"
    assert scrub(message, ["postgresql://user:secret@db/mlflow"]) == (
        "could not connect to postgresql://user:***@db/mlflow: password '***' refused"
    )
    pytest.importorskip("optuna")
    from astrocli.experiments.tune import make_storage

    with pytest.raises(AstroError) as error:  # a tune --storage URL that cannot be opened
        make_storage(f"postgresql://tuner:{SECRET}@127.0.0.1:1/study")
    assert SECRET not in str(error.value) and "tuner:***@127.0.0.1:1" in str(error.value)
