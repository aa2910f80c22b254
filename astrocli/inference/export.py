"""Ship a trained model: ``astro export`` to ONNX, TorchScript or plain safetensors.

Every export is checked before anything is written: the exported model is run (onnxruntime,
or the reloaded TorchScript module) against the PyTorch model on a random batch and on real
images, and must agree within ``rtol=1e-3, atol=1e-4``; the largest difference is reported.
Files appear at ``--output`` only once complete (written through a temporary file).

ONNX: attention runs through the explicit softmax path (``set_fused_attn(model, False)``):
the exporters mishandle SDPA with a float mask (Astroformer's relative-position bias). The
torch.export-based exporter is tried first; when it fails, the TorchScript-based one
(``dynamo=False``). The file's ``metadata_props`` carry the checkpoint metadata, so
``astro predict``/``astro eval`` can run it with onnxruntime alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astrocli.checkpoint import CheckpointMeta, load_checkpoint, save_tensors
from astrocli.data import build_datasets, build_eval_transform
from astrocli.data.arrays import float_eval_io
from astrocli.errors import AstroError, first_line
from astrocli.files import atomic_write_bytes, atomic_write_text, check_writable
from astrocli.images.load import load_image
from astrocli.inference.predict import collect_inputs
from astrocli.models import set_fused_attn
from astrocli.models.loading import load_model_from_checkpoint
from astrocli.recipe import recipe_from_dict

FORMATS = ("onnx", "torchscript", "safetensors")
ONNX_EXPORTERS = ("auto", "dynamo", "torchscript")  # auto: dynamo, falling back to the TorchScript-based one
RTOL = 1e-3
ATOL = 1e-4
EXPORT_BATCH = 2  # traced example batch; verification uses another size to prove the batch axis is dynamic
VERIFY_BATCH = 3
REAL_SAMPLES = 4


class ExportError(AstroError):
    """An export failed or did not match the PyTorch model (exit status 1: nothing was written)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)


@dataclass
class Check:
    """One verification: which inputs, how many, and the largest absolute difference seen."""

    inputs: str
    batch: int
    max_abs_diff: float


@dataclass
class ExportResult:
    """What ``export_checkpoint`` wrote and how it was checked."""

    format: str
    path: Path
    extra_files: list[Path] = field(default_factory=list)
    exporter: str = ""
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def default_output(checkpoint: Path, fmt: str) -> Path:
    """``best.safetensors`` -> ``best.onnx``, ``best.torchscript.pt`` or ``best-safetensors/``."""
    stem = checkpoint.name.removesuffix(".safetensors")
    if fmt == "onnx":
        return checkpoint.with_name(f"{stem}.onnx")
    if fmt == "torchscript":
        return checkpoint.with_name(f"{stem}.torchscript.pt")
    return checkpoint.with_name(f"{stem}-safetensors") / "model.safetensors"


# --------------------------------------------------------------------------------------------
# Inputs for verification
# --------------------------------------------------------------------------------------------


def random_inputs(meta: CheckpointMeta, batch: int = VERIFY_BATCH, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal batch: the range of normalised images."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, meta.in_chans, meta.img_size, meta.img_size, generator=generator)


def real_inputs(
    meta: CheckpointMeta, images: Sequence[str] | None, limit: int = REAL_SAMPLES
) -> tuple[torch.Tensor | None, str]:
    """Up to ``limit`` real images, preprocessed like ``astro predict`` does, and where they came from.

    From ``images`` (files, directories, globs) when given, else from the held-out split of the
    checkpoint's recipe (never downloading). Returns ``(None, reason)`` when none can be had.
    """
    load, transform = _eval_io(meta)
    if images:
        tensors = []
        for path in collect_inputs(images).files:
            try:
                tensors.append(transform(load(path)))
            except Exception:  # an unreadable file is skipped; the next one may do
                continue
            if len(tensors) == limit:
                break
        if not tensors:
            raise AstroError(f"--images {' '.join(images)}: no readable image found")
        return torch.stack(tensors), f"{len(tensors)} images from --images"
    return _recipe_images(meta, transform, limit)


def _eval_io(meta: CheckpointMeta) -> tuple[Callable[[Any], Any], Callable[[Any], torch.Tensor]]:
    """(read a file, preprocess it) as ``astro predict`` does for this checkpoint."""
    if meta.pixels == "float":  # float arrays (FITS, 16-bit, N bands): the float path's reader
        return float_eval_io(meta)

    transform = build_eval_transform(
        meta.img_size, meta.crop_pct, meta.interpolation, meta.mean, meta.std, meta.in_chans
    )
    return (lambda path: load_image(path, meta.in_chans)), transform


def _recipe_images(
    meta: CheckpointMeta, transform: Callable[[Any], torch.Tensor], limit: int
) -> tuple[torch.Tensor | None, str]:
    try:
        recipe = recipe_from_dict(json.loads(json.dumps(meta.recipe)) if meta.recipe else {})
        recipe.data.download = False
        val = build_datasets(recipe.data).val
        count = min(limit, len(val))
        if count == 0:
            return None, "the recipe's held-out split is empty"
        # Spread over the split (not just its first class) so several classes are exercised.
        picks = np.linspace(0, len(val) - 1, count).round().astype(int)
        batch = torch.stack([transform(val[int(i)][0]) for i in picks])
    except Exception as exc:  # data not present here: verification falls back to random inputs only
        return None, f"the recipe's data is not readable here ({first_line(exc, limit=160)})"
    return batch, f"{count} images from {recipe.data.source} at {recipe.data.root}"


def compare(reference: torch.Tensor, candidate: Any, what: str) -> float:
    """Largest absolute difference; raise ExportError when outside ``rtol=1e-3, atol=1e-4``."""
    ref = reference.detach().float().cpu().numpy()
    got = np.asarray(
        candidate.detach().cpu().numpy() if hasattr(candidate, "detach") else candidate, dtype=np.float32
    )
    if ref.shape != got.shape:
        raise ExportError(
            f"{what}: exported model returns shape {got.shape}, PyTorch {ref.shape}; nothing written"
        )
    diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
    if not np.allclose(got, ref, rtol=RTOL, atol=ATOL) or not np.isfinite(got).all():
        raise ExportError(
            f"{what}: exported model differs from PyTorch "
            f"(max abs diff {diff:.3g}, tolerance rtol {RTOL} / atol {ATOL}); "
            "nothing written"
        )
    return diff


def reference_outputs(
    model: torch.nn.Module, batches: Sequence[tuple[str, torch.Tensor]]
) -> list[torch.Tensor]:
    """The PyTorch model's logits for each batch, as loaded (fused attention on), before any export change."""
    with torch.inference_mode():
        return [model(batch) for _, batch in batches]


def verify(
    references: Sequence[torch.Tensor],
    run_exported: Callable[[torch.Tensor], Any],
    batches: Sequence[tuple[str, torch.Tensor]],
) -> list[Check]:
    """Run each named batch through the exported model and compare with PyTorch (see :func:`compare`)."""
    checks = []
    for reference, (name, batch) in zip(references, batches, strict=True):
        diff = compare(reference, run_exported(batch), f"check on {name}")
        checks.append(Check(name, int(batch.shape[0]), diff))
    return checks


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def onnx_bytes(
    model: torch.nn.Module, example: torch.Tensor, opset: int | None, exporter: str = "auto"
) -> tuple[bytes, str]:
    """Export to ONNX with a dynamic batch axis: torch.export-based exporter first, then TorchScript-based.

    ``exporter`` limits this to one of them (``dynamo`` or ``torchscript``).
    """
    errors = []
    if exporter in ("auto", "dynamo"):
        try:
            return _onnx_dynamo(model, example, opset), "torch.export (dynamo)"
        except Exception as exc:
            errors.append(f"dynamo: {first_line(exc)}")
    if exporter in ("auto", "torchscript"):
        try:
            used = "TorchScript-based (dynamo=False)"
            if errors:  # say why the preferred exporter was not used
                used += f" after the dynamo exporter failed: {errors[0][len('dynamo: ') :][:160]}"
            return _onnx_torchscript(model, example, opset), used
        except Exception as exc:
            errors.append(f"torchscript: {first_line(exc)}")
    raise ExportError("ONNX export failed (" + "; ".join(e[:200] for e in errors) + ")")


def _onnx_dynamo(model: torch.nn.Module, example: torch.Tensor, opset: int | None) -> bytes:
    # The dynamo exporter prints progress ("[torch.onnx] ...") to stdout; keep the console clean.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            opset_version=opset,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def _onnx_torchscript(model: torch.nn.Module, example: torch.Tensor, opset: int | None) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    return buffer.getvalue()


def add_onnx_metadata(model_bytes: bytes, meta: CheckpointMeta) -> bytes:
    """Store the checkpoint metadata (labels, image size, mean/std, model name, ...) in ``metadata_props``."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    for key, value in meta.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"astro export of {meta.model} ({meta.num_classes} classes, {meta.img_size}px)"
    return proto.SerializeToString()


def export_onnx(
    model: torch.nn.Module,
    meta: CheckpointMeta,
    opset: int | None,
    batches: Sequence[tuple[str, torch.Tensor]],
    exporter: str = "auto",
) -> tuple[bytes, str, list[Check]]:
    """ONNX bytes with metadata, the exporter used, and the onnxruntime-vs-PyTorch checks."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise AstroError(
            "ONNX export needs onnx, onnxruntime and onnxscript: pip install 'astrocli[export]'"
        ) from None

    references = reference_outputs(model, batches)  # what users of the PyTorch model get
    set_fused_attn(model, False)
    raw, used = onnx_bytes(model, random_inputs(meta, EXPORT_BATCH, seed=1), opset, exporter)
    data = add_onnx_metadata(raw, meta)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(batch: torch.Tensor) -> np.ndarray:
        return session.run(None, {input_name: batch.numpy().astype(np.float32)})[0]

    return data, used, verify(references, run, batches)


def export_torchscript(
    model: torch.nn.Module, meta: CheckpointMeta, batches: Sequence[tuple[str, torch.Tensor]]
) -> tuple[bytes, list[Check]]:
    """A traced TorchScript module (metadata in the ``astro.json`` extra file), checked after reloading."""
    references = reference_outputs(model, batches)
    example = random_inputs(meta, EXPORT_BATCH, seed=1)
    extra = {"astro.json": json.dumps(meta.to_metadata())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:
            raise ExportError(f"TorchScript tracing failed: {first_line(exc, limit=200)}") from None
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files=extra)
        reloaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return reloaded(batch)

    return buffer.getvalue(), verify(references, run, batches)


def hf_config(meta: CheckpointMeta, model: torch.nn.Module) -> dict[str, Any]:
    """``config.json`` in timm's Hugging Face hub layout, plus flat fields (img_size, mean, std, ...)."""
    pretrained_cfg = {
        "input_size": [meta.in_chans, meta.img_size, meta.img_size],
        "interpolation": meta.interpolation,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "crop_pct": meta.crop_pct,
        "crop_mode": "center",
        "num_classes": meta.num_classes,
    }
    return {
        "architecture": meta.model,
        "num_classes": meta.num_classes,
        "num_features": int(getattr(model, "num_features", 0) or 0) or None,
        "img_size": meta.img_size,
        "in_chans": meta.in_chans,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "interpolation": meta.interpolation,
        "crop_pct": meta.crop_pct,
        "label_names": list(meta.class_names),
        "weights": meta.weights,
        "model_args": {"img_size": meta.img_size, "in_chans": meta.in_chans},
        "pretrained_cfg": pretrained_cfg,
    }


def safetensors_output_paths(output: Path) -> tuple[Path, Path]:
    """(weights file, config.json): ``DIR`` -> ``DIR/model.safetensors``; ``X.safetensors`` -> beside it."""
    if output.suffix == ".safetensors":
        return output, output.parent / "config.json"
    return output / "model.safetensors", output / "config.json"


# --------------------------------------------------------------------------------------------
# The whole export
# --------------------------------------------------------------------------------------------


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    output: str | Path | None = None,
    opset: int | None = None,
    images: Sequence[str] | None = None,
    exporter: str = "auto",
) -> ExportResult:
    """Export ``checkpoint`` to ``fmt`` (onnx | torchscript | safetensors), verified, written atomically.

    Raises:
        CheckpointError: the checkpoint is unreadable or does not fit its architecture (exit 2).
        ExportError: the export failed or the check against PyTorch failed (exit 1; nothing written).
    """
    checkpoint = Path(checkpoint)
    if fmt not in FORMATS:
        raise AstroError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
    if exporter not in ONNX_EXPORTERS:
        raise AstroError(f"--exporter '{exporter}' is not one of {', '.join(ONNX_EXPORTERS)}")
    model, meta = load_model_from_checkpoint(checkpoint, device="cpu")
    path = Path(output) if output is not None else default_output(checkpoint, fmt)
    if path.resolve() == checkpoint.resolve():
        raise AstroError(f"--output '{path}' is the checkpoint itself; choose another path")
    check_writable(safetensors_output_paths(path)[0] if fmt == "safetensors" else path)
    result = ExportResult(format=fmt, path=path)

    if fmt == "safetensors":
        state_dict, _ = load_checkpoint(checkpoint)
        weights_path, config_path = safetensors_output_paths(path)
        save_tensors(weights_path, state_dict, {"format": "pt"})
        atomic_write_text(config_path, json.dumps(hf_config(meta, model), indent=2) + "\n")
        result.path, result.extra_files = weights_path, [config_path]
        result.notes.append(f"{meta.weights} weights ({len(state_dict)} tensors)")
        return result

    batches = [(f"random N(0,1) batch of {VERIFY_BATCH}", random_inputs(meta))]
    real, where = real_inputs(meta, images)
    if real is not None:
        batches.append((f"real images ({where})", real))
    else:
        result.notes.append(f"no real images to check on: {where}; pass --images DIR to add them")
    if fmt == "onnx":
        data, result.exporter, result.checks = export_onnx(model, meta, opset, batches, exporter)
    else:
        data, result.checks = export_torchscript(model, meta, batches)
        result.exporter = "torch.jit.trace"
    atomic_write_bytes(path, data)
    return result
