"""Starting a model from pretrained weights: local files, the Hugging Face Hub, timm's default tags.

    model = create_model("timm/resnet18.a1_in1k", num_classes=10, img_size=256)
    report = load_pretrained(model, "timm", model_name="timm/resnet18.a1_in1k")
    print(report.line())  # pretrained timm/resnet18.a1_in1k: 100 tensors loaded, 2 re-initialised ...

``model.pretrained`` takes one of:

- a local file: ``.safetensors`` (an astro checkpoint, or any timm-shaped state dict), or ``.pth`` /
  ``.pt`` / ``.bin`` read by timm's ``load_state_dict`` with ``torch.load(weights_only=True)``; a
  ``config.json`` beside it (the Hub layout, what ``astro export`` writes) supplies mean/std;
- a folder holding ``model.safetensors`` (or ``pytorch_model.bin``) and optionally ``config.json``;
- ``hf-hub:<org>/<name>[@revision]``: ``config.json`` and ``model.safetensors`` (else
  ``pytorch_model.bin``) through huggingface_hub into its usual cache (``HF_HOME``, ``HF_HUB_OFFLINE``
  and ``HF_ENDPOINT`` are honoured);
- ``timm``: the default (or named: ``timm/resnet18.a1_in1k``) pretrained tag of a ``timm/<name>`` model,
  from its Hub id (nearly all timm weights), else its URL through torch.hub's cache.

Adaptation mirrors timm's ``load_pretrained`` and is counted for the one-line report: the model
module's ``checkpoint_filter_fn`` for timm models; position embeddings and relative-position tables
resized to the model's image size (:func:`astrocli.models.adapt_state_dict`); another input channel
count adapted by timm's ``adapt_input_conv``; a classifier (or any tensor) of another shape left as
initialised. An unreachable Hub is one line naming the file to place and where.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import timm.models
import torch
from timm.models import adapt_input_conv, clean_state_dict, load_state_dict

from astrocli import __version__
from astrocli.checkpoint import FORMAT, CheckpointMeta
from astrocli.errors import AstroError, first_line
from astrocli.images.channels import adapt_channels
from astrocli.models import adapt_state_dict, list_models
from astrocli.models.adapt import REL_POS_INDEX

if TYPE_CHECKING:
    import torch
    from torch import nn

    from astrocli.recipe import Recipe

HF_HUB_PREFIX = "hf-hub:"
TIMM_DEFAULT = "timm"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the Hub's safe file first, as timm does
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
_SHOWN = 3  # tensor names listed per kind in the report line


class PretrainedError(AstroError):
    """``model.pretrained`` cannot be read, fetched or fitted to the model."""


@dataclass
class PretrainedWeights:
    """A state dict and what is known about it (timm's pretrained-cfg keys: mean, std, ...)."""

    label: str
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadReport:
    """What loading did: tensor names loaded, resized (subset of loaded), re-initialised and unused."""

    label: str
    loaded: list[str] = field(default_factory=list)
    resized: dict[str, str] = field(default_factory=dict)  # name -> "old shape -> new shape"
    reinitialised: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The one console line: counts, with the first few names of each kind."""
        parts = [f"{len(self.loaded)} tensors loaded"]
        parts.append(f"{len(self.reinitialised)} re-initialised{_names(self.reinitialised)}")
        resized = [f"{k} {v}" for k, v in self.resized.items()]
        parts.append(f"{len(self.resized)} resized{_names(resized)}")
        if self.unused:
            parts.append(f"{len(self.unused)} unused{_names(self.unused)}")
        return f"pretrained {self.label}: " + ", ".join(parts)


def _names(names: list[str]) -> str:
    if not names:
        return ""
    more = f", +{len(names) - _SHOWN}" if len(names) > _SHOWN else ""
    return f" ({', '.join(names[:_SHOWN])}{more})"


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def load_pretrained(
    model: nn.Module, spec: str, *, model_name: str | None = None, in_chans: int | None = None
) -> LoadReport:
    """Fetch ``spec`` (see the module docstring), adapt it to ``model`` and load it.

    Args:
        model: the freshly built model (its classifier sized for the new data).
        spec: a file or folder path, ``hf-hub:<org>/<name>[@rev]``, or ``timm``.
        model_name: the zoo name ``model`` was built from (``timm`` needs ``timm/<name>``).
        in_chans: the model's input channels (default: read from its ``pretrained_cfg``).

    Raises:
        PretrainedError: unreadable file, unreachable Hub (one line naming what to place where),
            or no tensor that fits the model.
    """
    weights = fetch_weights(spec, model_name)
    if in_chans is None:
        in_chans = int(getattr(model, "pretrained_cfg", {}).get("input_size", (3,))[0])
    return adapt_and_load(model, weights, in_chans)


def pretrained_stats(
    spec: str, model_name: str | None, in_chans: int
) -> tuple[list[float], list[float]] | None:
    """The normalisation mean/std the pretrained weights were trained with, per input channel, if known."""
    config = fetch_config(spec, model_name)
    mean, std = config.get("mean"), config.get("std")
    if not mean or not std:
        return None
    try:
        return list(adapt_channels(tuple(mean), in_chans)), list(adapt_channels(tuple(std), in_chans))
    except AstroError:
        return None


def apply_pretrained_stats(recipe: Recipe) -> bool:
    """Set ``data.mean``/``data.std`` from the pretrained config unless the recipe sets them.

    Returns True when the recipe's statistics now come from the pretrained weights.
    """
    m, d = recipe.model, recipe.data
    if not m.pretrained or d.mean is not None or d.std is not None:
        return False
    stats = pretrained_stats(m.pretrained, m.name, d.in_chans)
    if stats is None:
        return False
    d.mean, d.std = stats
    return True


def fetch_config(spec: str, model_name: str | None) -> dict[str, Any]:
    """Only the pretrained config (mean, std, architecture, ...): no weights are downloaded."""
    if spec == TIMM_DEFAULT:
        return _timm_cfg(model_name)
    if spec.startswith(HF_HUB_PREFIX):
        repo_id, revision = _split_hub_id(spec)
        return _hub_config(spec, repo_id, revision, model_name)
    path = _local_path(spec)
    folder = path if path.is_dir() else path.parent
    config = _read_config_json(folder / "config.json")
    if path.is_file() and path.suffix == ".safetensors":
        config = {**config, **_astro_config(path)}
    if not config.get("mean") and model_name and model_name.startswith("timm/"):
        # A bare timm-shaped state dict: the statistics timm itself would use for that model.
        config = {**_timm_cfg_or_empty(model_name), **config}
    return config


def fetch_weights(spec: str, model_name: str | None) -> PretrainedWeights:
    """The state dict and config of ``spec`` (downloading into the Hub / torch.hub cache if needed)."""
    if spec == TIMM_DEFAULT:
        return _timm_weights(model_name)
    if spec.startswith(HF_HUB_PREFIX):
        repo_id, revision = _split_hub_id(spec)
        config = _hub_config(spec, repo_id, revision, model_name)
        return PretrainedWeights(spec, _hub_state_dict(spec, repo_id, revision), config)
    return _local_weights(spec, model_name)


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


def _local_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise PretrainedError(
            f"model.pretrained '{spec}': no such file or folder; give a .safetensors/.pth/.bin file, a "
            f"folder with model.safetensors, {HF_HUB_PREFIX}<org>/<name>, or {TIMM_DEFAULT} "
            "for a timm model's own weights"
        )
    return path


def _local_weights(spec: str, model_name: str | None) -> PretrainedWeights:
    path = _local_path(spec)
    if path.is_dir():
        found = [path / name for name in HF_WEIGHTS if (path / name).is_file()]
        if not found:
            raise PretrainedError(f"model.pretrained '{spec}': the folder holds no {' or '.join(HF_WEIGHTS)}")
        path = found[0]
    return PretrainedWeights(spec, _read_state_dict(path, spec), fetch_config(spec, model_name))


def _read_state_dict(path: Path, spec: str) -> dict[str, torch.Tensor]:
    """safetensors directly; other formats only through ``torch.load(weights_only=True)`` (timm's helper)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return clean_state_dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError) as exc:
            raise PretrainedError(
                f"model.pretrained '{spec}': not a readable safetensors file ({exc})"
            ) from None
    if path.suffix not in TORCH_SUFFIXES:
        raise PretrainedError(
            f"model.pretrained '{spec}': unknown weights format '{path.suffix}'; use .safetensors "
            f"(or {'/'.join(TORCH_SUFFIXES)}, read with torch.load(weights_only=True))"
        )
    try:
        state_dict = load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code; a damaged file fails in many ways
        first = first_line(exc, limit=160)
        raise PretrainedError(
            f"model.pretrained '{spec}': torch.load(weights_only=True) cannot read it ({first}); "
            "convert it to .safetensors where it was made"
        ) from None
    return {k: v for k, v in state_dict.items() if hasattr(v, "shape")}


def _astro_config(path: Path) -> dict[str, Any]:
    """An astro checkpoint's metadata as pretrained-cfg keys (empty for other safetensors files)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:
        return {}  # unreadable: _read_state_dict reports it
    if metadata.get("format") != FORMAT:
        return {}
    meta = CheckpointMeta.from_metadata(metadata, str(path))
    return {
        "architecture": meta.model,
        "num_classes": meta.num_classes,
        "input_size": (meta.in_chans, meta.img_size, meta.img_size),
        "mean": list(meta.mean),
        "std": list(meta.std),
    }


def _read_config_json(path: Path) -> dict[str, Any]:
    """timm's Hub ``config.json`` (``{"architecture", "num_classes", "pretrained_cfg": {...}}`` or flat)."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        return {}
    config = dict(raw.get("pretrained_cfg") or raw)
    for key in ("architecture", "num_classes", "mean", "std"):
        if key in raw and key not in config:
            config[key] = raw[key]
    return config


# ---------------------------------------------------------------------------------------------
# timm's default tags
# ---------------------------------------------------------------------------------------------


def _timm_name(model_name: str | None) -> str:
    if not model_name or not model_name.startswith("timm/"):
        raise PretrainedError(
            f"model.pretrained={TIMM_DEFAULT} needs a timm model (model.name=timm/<name>), got model.name="
            f"'{model_name}'; astro's own models have no ImageNet weights: give a checkpoint file instead"
        )
    return model_name.removeprefix("timm/")


def _timm_cfg_or_empty(model_name: str) -> dict[str, Any]:
    try:
        return _timm_cfg(model_name)
    except PretrainedError:
        return {}


def _timm_cfg(model_name: str | None) -> dict[str, Any]:
    """timm's pretrained cfg of ``timm/<name>[.<tag>]`` (the default tag when none is given)."""
    name = _timm_name(model_name)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown tag
        pattern = name.split(".")[0] + "*"
        raise PretrainedError(
            f"model.name timm/{name}: {exc} See timm.list_pretrained('{pattern}')"
        ) from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise PretrainedError(
            f"timm has no pretrained weights for '{name}'; pick one of timm.list_pretrained()"
        )
    return cfg.to_dict()


def _timm_weights(model_name: str | None) -> PretrainedWeights:
    cfg = _timm_cfg(model_name)
    label = f"timm/{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else str(model_name)
    if cfg.get("hf_hub_id"):
        repo_id, revision = _split_hub_id(HF_HUB_PREFIX + cfg["hf_hub_id"])
        filename = cfg.get("hf_hub_filename")
        return PretrainedWeights(label, _hub_state_dict(label, repo_id, revision, filename), cfg)
    return PretrainedWeights(label, _url_state_dict(label, cfg["url"]), cfg)


def _url_state_dict(label: str, url: str) -> dict[str, torch.Tensor]:
    """Weights only published at a URL: torch.hub's cache (what timm uses for them)."""
    from huggingface_hub import constants

    filename = os.path.basename(url.split("?")[0])
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache / filename
    if not cached.is_file():
        place = f"download {url} on a connected machine and place it as {cached}"
        if constants.is_offline_mode():
            raise PretrainedError(f"model.pretrained {label}: HF_HUB_OFFLINE is set and {place}")
        try:
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except Exception as exc:  # URLError, timeouts, HTTP errors: all mean "not reachable from here"
            raise PretrainedError(
                f"model.pretrained {label}: {url} is unreachable ({exc}); {place}"
            ) from None
    return _read_state_dict(cached, label)


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub
# ---------------------------------------------------------------------------------------------


def _split_hub_id(spec: str) -> tuple[str, str | None]:
    """``hf-hub:org/name@rev`` -> (``org/name``, ``rev``), as timm's ``hf_split``."""
    hub_id = spec.removeprefix(HF_HUB_PREFIX)
    repo_id, _, revision = hub_id.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PretrainedError(
            f"model.pretrained '{spec}': expected {HF_HUB_PREFIX}<org>/<name>[@revision], "
            f"e.g. {HF_HUB_PREFIX}timm/resnet18.a1_in1k"
        )
    return repo_id, revision or None


def _hub_config(spec: str, repo_id: str, revision: str | None, model_name: str | None) -> dict[str, Any]:
    path = _hub_download(spec, repo_id, revision, "config.json", required=False)
    config = _read_config_json(Path(path)) if path else {}
    architecture = config.get("architecture")
    if architecture and model_name and _arch_base(architecture) != _arch_base(model_name):
        suggestion = architecture if "/" in architecture else _zoo_or_timm(architecture)
        raise PretrainedError(
            f"model.pretrained {spec} holds a '{architecture}' model but model.name is '{model_name}'; "
            f"set model.name={suggestion}"
        )
    return config


def _arch_base(name: str) -> str:
    """``timm/resnet18.a1_in1k`` and ``resnet18`` name the same architecture."""
    return name.removeprefix("timm/").split(".")[0]


def _zoo_or_timm(architecture: str) -> str:
    return architecture if architecture in list_models() else f"timm/{architecture}"


def _hub_state_dict(
    label: str, repo_id: str, revision: str | None, filename: str | None = None
) -> dict[str, torch.Tensor]:
    for name in [filename] if filename else HF_WEIGHTS:
        path = _hub_download(label, repo_id, revision, name, required=name == (filename or HF_WEIGHTS[-1]))
        if path:
            return _read_state_dict(Path(path), label)
    raise PretrainedError(f"model.pretrained {label}: the repository has none of {', '.join(HF_WEIGHTS)}")


def _hub_download(
    label: str, repo_id: str, revision: str | None, filename: str, required: bool
) -> str | None:
    """``hf_hub_download`` with its errors as one line; None for a missing optional file."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        with _quiet_hub_retries():
            return hf_hub_download(
                repo_id, filename, revision=revision, library_name="astro", library_version=__version__
            )
    except LocalEntryNotFoundError:
        # Offline, or the Hub did not answer, and the file is not cached: say what to place where
        # (unless the file is optional and the weights file that matters is cached).
        others = tuple(f for f in HF_WEIGHTS if f != filename)
        if not required and _hub_cached(repo_id, revision, others):
            return None
        raise PretrainedError(_unavailable_message(label, repo_id, revision, filename)) from None
    except RemoteEntryNotFoundError:
        if not required:
            return None
        raise PretrainedError(f"model.pretrained {label}: {repo_id} has no file {filename}") from None
    except GatedRepoError:
        raise PretrainedError(
            f"model.pretrained {label}: {repo_id} is gated; accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise PretrainedError(
            f"model.pretrained {label}: no repository {repo_id} on {constants.ENDPOINT} "
            "(or it is private: set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise PretrainedError(f"model.pretrained {label}: {repo_id} has no revision '{revision}'") from None
    except HfHubHTTPError as exc:
        raise PretrainedError(
            f"model.pretrained {label}: the Hub refused {filename} ({first_line(exc, limit=160)})"
        ) from None


@contextlib.contextmanager
def _quiet_hub_retries() -> Iterator[None]:
    """huggingface_hub retries an unanswered request 5 times (about 23 s) when nothing is cached,
    logging a warning per retry; keep its retries but not the warnings, so the outcome is one line."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def _hub_cached(repo_id: str, revision: str | None, filenames: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f, revision=revision), str) for f in filenames)


def _unavailable_message(label: str, repo_id: str, revision: str | None, filename: str) -> str:
    from huggingface_hub import constants

    reason = (
        "HF_HUB_OFFLINE is set"
        if constants.is_offline_mode()
        else f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable"
    )
    # Name the weights file even when config.json was the first request to fail: it is what matters.
    weights = HF_WEIGHTS[0] if filename == "config.json" else filename
    url = f"{constants.ENDPOINT}/{repo_id}/resolve/{revision or 'main'}/{weights}"
    cache, cache_folder = constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--")
    return (
        f"model.pretrained {label}: {reason} and {weights} is not in the Hub cache {cache}; "
        f"on a connected machine download {url} (and config.json) into a folder and set "
        f"model.pretrained=<that folder>, or copy that machine's {cache_folder} into {cache}"
    )


# ---------------------------------------------------------------------------------------------
# Adaptation
# ---------------------------------------------------------------------------------------------


def adapt_and_load(model: nn.Module, weights: PretrainedWeights, in_chans: int) -> LoadReport:
    """Adapt ``weights`` to ``model`` (timm's filter, sizes, input channels), load what fits, report."""
    original = {k: tuple(v.shape) for k, v in weights.state_dict.items()}
    state_dict = _timm_filter(model, dict(weights.state_dict))
    state_dict = _adapt_sizes(model, state_dict)
    state_dict = _adapt_input_convs(model, state_dict, in_chans)

    own = model.state_dict()
    usable = {k: v for k, v in state_dict.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not usable:
        arch = weights.config.get("architecture")
        held = f" (it holds a '{arch}' model)" if arch else ""
        raise PretrainedError(
            f"model.pretrained {weights.label}: no tensor fits model '{type(model).__name__}'{held}; "
            "check model.name"
        )
    model.load_state_dict(usable, strict=False)
    return LoadReport(
        label=weights.label,
        loaded=list(usable),
        resized={
            k: f"{_shape(original[k])}->{_shape(tuple(v.shape))}"
            for k, v in usable.items()
            if k in original and original[k] != tuple(v.shape)
        },
        # Derived buffers (relative-position indices) are rebuilt by the model, not re-initialised.
        reinitialised=[k for k in own if k not in usable and not k.endswith(REL_POS_INDEX)],
        # Checkpoint tensors the model has no place for (a mismatched classifier counts as re-initialised).
        unused=[k for k in state_dict if k not in own and not k.endswith(REL_POS_INDEX)],
        config=weights.config,
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def _timm_filter(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm model's own ``checkpoint_filter_fn`` (what timm's ``load_pretrained`` applies).

    It converts original-format checkpoints and resamples what timm knows how to resample
    (ViT patch and position embeddings, Swin tables). Skipped when it fails: the generic steps
    below and the report still say what loaded.
    """
    module = sys.modules.get(type(model).__module__)
    if module is None or not module.__name__.startswith("timm.models."):
        return state_dict
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state_dict
    try:
        return dict(filter_fn(state_dict, model))
    except Exception:  # filters assume their own checkpoint layouts; fall back to the generic path
        return state_dict


def _adapt_sizes(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Absolute position embeddings and relative-position tables resized to the model's image size."""
    try:
        return adapt_state_dict(model, state_dict)
    except ValueError:  # a non-square grid: leave those tensors to be reported as not loaded
        return state_dict


def _adapt_input_convs(
    model: nn.Module, state_dict: dict[str, torch.Tensor], in_chans: int
) -> dict[str, torch.Tensor]:
    """timm's ``adapt_input_conv`` for convolutions that differ only in their input channels.

    The stem is named by the model's ``pretrained_cfg['first_conv']`` when it has one (timm models);
    otherwise any 4-D weight that differs only in dimension 1 and has ``in_chans`` there.
    """
    own = model.state_dict()
    first = getattr(model, "pretrained_cfg", {}).get("first_conv")
    names = {f"{n}.weight" for n in ([first] if isinstance(first, str) else first or [])}
    adapted = dict(state_dict)
    for key, tensor in state_dict.items():
        target = own.get(key)
        if target is None or tensor.ndim != 4 or target.ndim != 4 or target.shape == tensor.shape:
            continue
        if names and key not in names:
            continue
        same_elsewhere = target.shape[0] == tensor.shape[0] and target.shape[2:] == tensor.shape[2:]
        if same_elsewhere and target.shape[1] == in_chans:
            try:
                adapted[key] = adapt_input_conv(in_chans, tensor).to(tensor.dtype)
            except (NotImplementedError, AssertionError):
                pass  # e.g. 1 -> 3 channels: left as initialised and reported
    return adapted
