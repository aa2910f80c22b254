"""Fine-tuning from pretrained weights (issue 13), offline.

A tiny timm model with an ImageNet-sized (1000-class) head, randomly initialised and saved as
safetensors, stands in for downloaded weights; it is fine-tuned on the real 10-class galaxy sample
at 32 px. The Hugging Face Hub is a small stand-in served on 127.0.0.1 that answers the HEAD and GET
requests huggingface_hub's ``hf_hub_download`` makes (ETag, X-Repo-Commit, Content-Length headers).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import one_thread, run_astro  # noqa: F401 (autouse fixture)
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

from astrocli.engine import TrainingInterrupted, train
from astrocli.engine.build import build_model, build_optimizer, build_scheduler
from astrocli.errors import AstroError
from astrocli.models.pretrained import PretrainedError, load_pretrained
from astrocli.recipe import load_recipe

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_MEAN, HUB_STD = [0.41, 0.42, 0.43], [0.21, 0.22, 0.23]  # distinct from ImageNet's, to see them used


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm's test_resnet with 1000 classes, random weights, saved as a plain timm state dict."""
    torch.manual_seed(0)
    model = timm.create_model("test_resnet")
    for name, buffer in model.named_buffers():  # non-default statistics, so loading them is visible
        if "running_mean" in name:
            buffer.uniform_(-1, 1)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def recipe_for(galaxy_sample_dir: Path, out: Path, name: str = "run", **extra: object):
    values: dict[str, object] = {
        "data.source": "imagefolder",
        "data.root": str(galaxy_sample_dir),
        "data.img_size": 32,
        "data.num_workers": 0,
        "data.pipeline": "loader",
        "model.name": "timm/test_resnet",
        "train.epochs": 2,
        "train.batch_size": 8,
        "train.max_steps_per_epoch": 2,
        "train.device": "cpu",
        "train.lr": 1e-3,
        "train.warmup_epochs": 0,
        "output.dir": str(out),
        "output.name": name,
        "output.log": "quiet",
        "output.plots": False,
    }
    values.update(extra)
    return load_recipe(None, [f"{k}={v}" for k, v in values.items()])


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


def test_local_safetensors_reinitialises_only_the_classifier(
    resnet_file: Path, galaxy_sample_dir: Path, tmp_path: Path
) -> None:
    saved = load_file(str(resnet_file))
    recipe = recipe_for(galaxy_sample_dir, tmp_path, **{"model.pretrained": str(resnet_file)})
    lines: list[str] = []
    model = build_model(recipe, num_classes=10, log=lines.append)

    state = model.state_dict()
    assert state["fc.weight"].shape == (10, saved["fc.weight"].shape[1])
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(value, saved[key]), key
    assert len(lines) == 1
    assert lines[0] == (
        f"pretrained {resnet_file}: {len(state) - 2} tensors loaded, "
        "2 re-initialised (fc.weight, fc.bias), 0 resized"
    )


def test_one_channel_input_is_adapted(resnet_file: Path, galaxy_sample_dir: Path, tmp_path: Path) -> None:
    saved = load_file(str(resnet_file))
    recipe = recipe_for(
        galaxy_sample_dir, tmp_path, **{"model.pretrained": str(resnet_file), "data.in_chans": 1}
    )
    model = build_model(recipe, num_classes=10)
    stem = model.state_dict()["conv1.0.weight"]
    assert stem.shape[1] == 1
    # timm's adapt_input_conv for 3 -> 1 channels: the sum over the colour channels.
    torch.testing.assert_close(stem, saved["conv1.0.weight"].sum(dim=1, keepdim=True))
    report = load_pretrained(model, str(resnet_file), model_name="timm/test_resnet", in_chans=1)
    assert report.resized == {"conv1.0.weight": "16x3x3x3->16x1x3x3"}
    assert report.reinitialised == ["fc.weight", "fc.bias"]


def test_position_embeddings_resized_to_the_image_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("test_vit")  # 160 px, 1000 classes
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = timm.create_model("test_vit", img_size=32, num_classes=10)
    report = load_pretrained(model, str(path), model_name="timm/test_vit")
    assert report.reinitialised == ["head.weight", "head.bias"]
    assert list(report.resized) == ["pos_embed"]
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [2, 2], [10, 10], num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_bad_pretrained_paths_are_one_line(tmp_path: Path) -> None:
    model = timm.create_model("test_resnet", num_classes=10)
    with pytest.raises(PretrainedError, match="no such file or folder"):
        load_pretrained(model, str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(PretrainedError, match="not a readable safetensors file"):
        load_pretrained(model, str(junk))
    with pytest.raises(PretrainedError, match="needs a timm model"):
        load_pretrained(model, "timm", model_name="cct_2_3x2_32")
    other = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(3)}, str(other))
    with pytest.raises(PretrainedError, match="no tensor fits"):
        load_pretrained(model, str(other))


# ---------------------------------------------------------------------------------------------
# Optimizer groups
# ---------------------------------------------------------------------------------------------


def test_layer_decay_and_head_lr_groups(galaxy_sample_dir: Path, tmp_path: Path) -> None:
    recipe = recipe_for(
        galaxy_sample_dir, tmp_path, **{"train.layer_decay": 0.5, "train.head_lr_mult": 10, "train.lr": 0.1}
    )
    model = build_model(recipe, num_classes=10)
    optimizer = build_optimizer(model, recipe, torch.device("cpu"))
    build_scheduler(optimizer, recipe, updates_per_epoch=2)  # timm's scheduler applies each lr_scale

    # timm's ResNet layers (group_matcher): the stem, then each residual block, then the classifier.
    blocks = sorted(
        {".".join(n.split(".")[:2]) for n, _ in model.named_parameters() if n.startswith("layer")}
    )
    depth = len(blocks) + 2

    def expected(name: str) -> float:
        if name.startswith("fc."):
            return 0.1 * 10
        layer = 0 if not name.startswith("layer") else 1 + blocks.index(".".join(name.split(".")[:2]))
        return 0.1 * 0.5 ** (depth - 1 - layer)

    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert len(lr_of) == len(names)
    for name, param in names.items():
        assert lr_of[id(param)] == pytest.approx(expected(name)), name
    assert expected("conv1.0.weight") == pytest.approx(0.1 * 0.5 ** (depth - 1))
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(names["fc.bias"])] == 0 and decay[id(names["fc.weight"])] == recipe.train.weight_decay

    with pytest.raises(AstroError, match="train.layer_decay"):
        bad = recipe_for(galaxy_sample_dir, tmp_path, **{"train.layer_decay": 1.5})
        build_optimizer(model, bad, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# The Hub stand-in
# ---------------------------------------------------------------------------------------------


class HubStandIn(ThreadingHTTPServer):
    """``/<org>/<name>/resolve/<revision>/<file>`` for the files given, as the Hub answers them."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files = files
        self.requests: list[tuple[str, str]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(BaseHTTPRequestHandler):
    server: HubStandIn

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        repos = {"/".join(k.split("/")[:2]) for k in self.server.files}
        if len(parts) < 5 or parts[2] != "resolve" or "/".join(parts[:2]) not in repos:
            self._error(404, "RepoNotFound")
            return
        data = self.server.files.get("/".join(parts[:2] + parts[4:]))
        if data is None:
            self._error(404, "EntryNotFound")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()


def point_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path, offline: bool = False) -> None:
    """HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE, also in huggingface_hub.constants (read at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hub(resnet_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    weights = resnet_file.read_bytes()
    config = {
        "architecture": "test_resnet",
        "num_classes": 1000,
        "pretrained_cfg": {
            "input_size": [3, 160, 160],
            "mean": HUB_MEAN,
            "std": HUB_STD,
            "num_classes": 1000,
        },
    }
    files = {
        "someone/tiny-resnet/model.safetensors": weights,
        "someone/tiny-resnet/config.json": json.dumps(config).encode(),
        # what model.pretrained=timm fetches for timm/test_resnet (its default tag's Hub id)
        "timm/test_resnet.r160_in1k/model.safetensors": weights,
    }
    server = HubStandIn(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    point_hub_at(monkeypatch, server.endpoint, tmp_path / "hf")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_hf_hub_fine_tune_with_freeze_and_exact_resume(
    hub: HubStandIn,
    resnet_file: Path,
    galaxy_sample_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    saved = load_file(str(resnet_file))
    extra = {"model.pretrained": "hf-hub:someone/tiny-resnet", "train.freeze_epochs": 1}
    seen: dict[int, dict[str, object]] = {}

    def watch(trainer, epoch: int, step: int) -> None:
        if step == 0:
            model = trainer.model
            seen[epoch] = {
                "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
                "stem_unchanged": torch.equal(model.state_dict()["conv1.0.weight"], saved["conv1.0.weight"]),
            }

    straight = train(recipe_for(galaxy_sample_dir, tmp_path, "straight", **extra), step_hook=watch)
    assert seen[0]["trainable"] == ["fc.bias", "fc.weight"]  # epoch 1: the classifier only
    assert seen[1]["stem_unchanged"] is True  # the frozen epoch left the backbone as loaded
    assert len(seen[1]["trainable"]) == len(dict(timm.create_model("test_resnet").named_parameters()))

    # Normalisation came from the pretrained config.json; the files landed in the Hub cache.
    recipe_yaml = yaml.safe_load((straight / "recipe.yaml").read_text())
    assert recipe_yaml["data"]["mean"] == HUB_MEAN and recipe_yaml["data"]["std"] == HUB_STD
    assert ("GET", "/someone/tiny-resnet/resolve/main/model.safetensors") in hub.requests
    snapshot = tmp_path / "hf" / "hub" / "models--someone--tiny-resnet" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").read_bytes() == resnet_file.read_bytes()

    # Stopped inside the frozen epoch and resumed: the same weights as the straight run.
    def stop(trainer, epoch: int, step: int) -> None:
        if (epoch, step) == (0, 1):
            trainer.stop_signal = 15

    with pytest.raises(TrainingInterrupted):
        train(recipe_for(galaxy_sample_dir, tmp_path, "split", **extra), step_hook=stop)
    split = train(resume_dir=tmp_path / "split")
    a, b = load_file(str(straight / "last.safetensors")), load_file(str(split / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # model.pretrained=timm: the timm model's default tag, fetched from the (stand-in) Hub.
    recipe = recipe_for(galaxy_sample_dir, tmp_path, **{"model.pretrained": "timm"})
    lines: list[str] = []
    model = build_model(recipe, num_classes=10, log=lines.append)
    assert lines[0].startswith("pretrained timm/test_resnet.r160_in1k: ")
    assert torch.equal(model.state_dict()["conv1.0.weight"], saved["conv1.0.weight"])

    # HF_HUB_OFFLINE with the files cached: loaded from the cache, no request reaches the Hub.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    model = build_model(recipe_for(galaxy_sample_dir, tmp_path, **extra), num_classes=10)
    assert len(hub.requests) == requests
    assert torch.equal(model.state_dict()["conv1.0.weight"], saved["conv1.0.weight"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    # A config naming another architecture is caught before the weights are downloaded.
    with pytest.raises(PretrainedError, match="set model.name=timm/test_resnet"):
        build_model(recipe_for(galaxy_sample_dir, tmp_path, **{"model.name": "timm/test_vit", **extra}), 10)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "HF_HUB_OFFLINE"])
def test_unavailable_hub_is_one_line(
    offline: bool,
    galaxy_sample_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    import huggingface_hub.utils._http as hub_http

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    point_hub_at(monkeypatch, endpoint, tmp_path / "hf", offline=offline)
    # huggingface_hub retries a refused connection 5 times with 1-8 s pauses; skip the pauses here.
    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)
    recipe = tmp_path / "finetune.yaml"
    recipe.write_text("model:\n  name: timm/test_resnet\n  pretrained: hf-hub:someone/tiny-resnet\n")
    args = [
        "train",
        "--recipe",
        recipe,
        f"data.root={galaxy_sample_dir}",
        "data.img_size=32",
        f"output.dir={tmp_path / 'runs'}",
    ]
    code, out, err = run_astro(args, monkeypatch, capsys)
    message = (out + err).strip()
    assert code == 2 and len(message.splitlines()) == 1, message
    reason = "HF_HUB_OFFLINE is set" if offline else f"({endpoint}) is unreachable"
    assert reason in message
    assert f"{endpoint}/someone/tiny-resnet/resolve/main/model.safetensors" in message
    assert "model.pretrained=<that folder>" in message and str(tmp_path / "hf" / "hub") in message
    assert not (tmp_path / "runs").exists()  # failed before creating a run directory


def test_torch_files_load_only_through_weights_only(resnet_file: Path, tmp_path: Path) -> None:
    saved = load_file(str(resnet_file))
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}}, wrapped)  # a training script's
    model = timm.create_model("test_resnet", num_classes=10)
    report = load_pretrained(model, str(wrapped))  # timm unwraps state_dict and strips module.
    assert report.reinitialised == ["fc.weight", "fc.bias"] and len(report.loaded) == len(saved) - 2

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": saved, "config": Path("x")}, unsafe)  # an object torch.load would have to build
    with pytest.raises(PretrainedError, match=r"weights_only=True\) cannot read it"):
        load_pretrained(model, str(unsafe))


def test_shipped_finetune_recipe_takes_the_pretrained_statistics() -> None:
    from astrocli.models.pretrained import apply_pretrained_stats

    recipe = load_recipe("galaxy10_finetune")
    assert recipe.model.pretrained == "timm" and recipe.data.img_size == 256
    assert (recipe.train.freeze_epochs, recipe.train.layer_decay, recipe.train.head_lr_mult) == (1, 0.9, 10)
    assert apply_pretrained_stats(recipe)  # timm's own config: nothing is downloaded for it
    assert recipe.data.mean == [0.485, 0.456, 0.406] and recipe.data.std == [0.229, 0.224, 0.225]
    gray = load_recipe("galaxy10_finetune", ["data.in_chans=1", "data.mean=[0.5]", "data.std=[0.2]"])
    assert not apply_pretrained_stats(gray) and gray.data.mean == [0.5]  # the recipe's own win
