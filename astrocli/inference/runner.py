"""One way to run a trained model, whatever file it lives in.

``astro eval`` and ``astro predict`` accept an astro checkpoint (``.safetensors``) or an
exported ``.onnx`` file. :func:`load_runner` opens either and returns a :class:`Runner`:
the model's :class:`~astrocli.checkpoint.CheckpointMeta` (labels, image size, normalisation),
its evaluation transform, ``stack(items)`` and ``logits(batch)``.

An exported ONNX file carries the same metadata as the checkpoint (``metadata_props`` hold
the :meth:`CheckpointMeta.to_metadata` strings), so it runs through onnxruntime alone, with
no PyTorch model built; its transform is :class:`astrocli.images.pil.EvalPreprocess` (numpy + Pillow),
so the ONNX path imports neither torch nor torchvision.

    runner = load_runner("runs/galaxy10/best.safetensors")
    batch = runner.stack([runner.transform(img) for img in images])
    probs = softmax(runner.logits(batch))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astrocli import HAS_PYTORCH
from astrocli.checkpoint import CheckpointMeta
from astrocli.devices import resolve_device
from astrocli.errors import AstroError, CheckpointError, DataError, first_line
from astrocli.images.arrays import preprocess_for, reader_for
from astrocli.images.load import load_image
from astrocli.images.pil import EvalPreprocess


class Runner:
    """A loaded model plus everything needed to feed it.

    Attributes:
        meta: the checkpoint metadata (for ONNX: read back from the file's metadata).
        source: the file the model came from.
        kind: ``"pytorch"`` or ``"onnx"``.
    """

    kind = "?"

    def __init__(self, meta: CheckpointMeta, source: Path) -> None:
        self.meta = meta
        self.source = source
        self._transform: Callable[[Any], Any] | None = None
        self._reader: Any = None

    @property
    def class_names(self) -> list[str]:
        """Class labels in output order (``class_<i>`` when the checkpoint has none)."""
        names = list(self.meta.class_names)
        if len(names) != self.meta.num_classes:
            names = [f"class_{i}" for i in range(self.meta.num_classes)]
        return names

    @property
    def transform(self) -> Callable[[Any], Any]:
        """The checkpoint's evaluation transform: PIL image -> normalised float ``[C, H, W]``."""
        if self._transform is None:
            self._transform = self._build_transform()
        return self._transform

    def _build_transform(self) -> Callable[[Any], Any]:
        """numpy + Pillow preprocessing (float32 arrays); needs no PyTorch."""
        m = self.meta
        if m.pixels == "float":  # scaled float arrays in, the same numbers for checkpoint and ONNX
            return preprocess_for(m)
        return EvalPreprocess(m.img_size, m.crop_pct, m.interpolation, m.mean, m.std, m.in_chans)

    def load_input(self, path: str | Path) -> Any:
        """Read one file as :attr:`transform` takes it: a PIL image, or (float path) a scaled array.

        Raises ValueError/OSError for a file that cannot be used (the caller reports it by row).
        """
        if self.meta.pixels != "float":
            return load_image(Path(path), self.meta.in_chans)
        if self._reader is None:
            self._reader = reader_for(self.meta)
        try:
            return self._reader.read(path)
        except DataError as exc:  # one file's fault (NaN pixels, wrong bands): its row, not the run
            raise ValueError(str(exc)) from None

    def stack(self, items: Sequence[Any]) -> Any:
        """Stack transformed images into the batch :meth:`logits` takes."""
        return np.stack(items)

    def logits(self, batch: Any) -> np.ndarray:
        """Logits ``[B, num_classes]`` (float32 numpy) for a normalised batch ``[B, C, H, W]``."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line naming the model and the file, for the console."""
        m = self.meta
        return f"{m.model} ({self.kind}, {m.num_classes} classes, {m.img_size}px) from {self.source}"


class TorchRunner(Runner):
    """A PyTorch model built from an astro checkpoint."""

    kind = "pytorch"

    def __init__(self, model: Any, meta: CheckpointMeta, source: Path, device: Any) -> None:
        super().__init__(meta, source)
        self.model = model
        self.device = device

    def _build_transform(self) -> Callable[[Any], Any]:
        """timm/torchvision's eval transform (torch tensors), the one the model was validated with."""
        from astrocli.data import build_eval_transform  # lazy: ONNX predict runs without torch

        m = self.meta
        if m.pixels == "float":
            return super()._build_transform()
        return build_eval_transform(m.img_size, m.crop_pct, m.interpolation, m.mean, m.std, m.in_chans)

    def stack(self, items: Sequence[Any]) -> Any:
        """Stack transformed images (tensors) into one batch tensor."""
        import torch  # lazy: keeps start-up torch-free

        return torch.stack([torch.as_tensor(item) for item in items])

    def logits(self, batch: Any) -> np.ndarray:
        import torch  # lazy: keeps start-up torch-free

        if not isinstance(batch, torch.Tensor):
            batch = torch.from_numpy(np.ascontiguousarray(batch))
        with torch.inference_mode():
            out = self.model(batch.to(self.device, dtype=torch.float32))
        return out.float().cpu().numpy()


class OnnxRunner(Runner):
    """An onnxruntime session over an ``astro export --format onnx`` file."""

    kind = "onnx"

    def __init__(self, session: Any, meta: CheckpointMeta, source: Path) -> None:
        super().__init__(meta, source)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def logits(self, batch: Any) -> np.ndarray:
        if hasattr(batch, "detach"):
            batch = batch.detach().cpu().numpy()
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)


def load_runner(path: str | Path, device: str = "auto") -> Runner:
    """Open an astro checkpoint (``.safetensors``) or exported ``.onnx`` model for inference.

    Raises:
        CheckpointError: missing file, not safetensors/ONNX, truncated, not an astro model,
            or weights that do not fit the named architecture (one line each).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file '{path}' does not exist")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    return _load_torch(path, device)


def _load_torch(path: Path, device: str) -> TorchRunner:
    from astrocli.models.loading import load_model_from_checkpoint  # lazy: ONNX predict runs without torch

    if not HAS_PYTORCH:
        raise AstroError(
            f"'{path}' is a PyTorch checkpoint and PyTorch is not installed here: pip install torch "
            "torchvision timm, or export it with `astro export CHECKPOINT --format onnx` and predict "
            "with the .onnx file"
        )
    resolved = resolve_device(device, allow_mps=True)
    try:
        model, meta = load_model_from_checkpoint(path, device=resolved)
    except AstroError:
        raise
    except (ValueError, KeyError, TypeError) as exc:  # e.g. an architecture name this version lacks
        raise CheckpointError(f"{path}: cannot build the model it names ({exc})") from None
    return TorchRunner(model, meta, path, resolved)


def _load_onnx(path: Path) -> OnnxRunner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise AstroError("running .onnx models needs onnxruntime: pip install 'astrocli[export]'") from None
    try:
        session = ort.InferenceSession(str(path), providers=_onnx_providers(ort))
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf types
        raise CheckpointError(
            f"'{path}' is not a loadable ONNX model ({first_line(exc, limit=200)})"
        ) from None
    props = session.get_modelmeta().custom_metadata_map
    if not props.get("format"):
        raise CheckpointError(
            f"'{path}' has no astro metadata (labels, image size, normalisation); "
            "export it with `astro export CHECKPOINT --format onnx`"
        )
    meta = CheckpointMeta.from_metadata(props, source=str(path))
    return OnnxRunner(session, meta, path)


def _onnx_providers(ort: Any) -> list[str]:
    """CUDA when this onnxruntime build has it, always with the CPU as the fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
