"""astro: small-data image classifiers from the command line.

``import astrocli`` is light: it imports neither torch nor timm, so ``astro --help``,
``astro --version`` and ``astro recipes`` start in well under a second (loading torch and
timm took 5-6 s). The zoo registers itself with timm when :mod:`astrocli.models` is imported
(``import astrocli.models``, ``from astrocli.models import ...``, or the first access to the
``astrocli.models`` attribute); from then on ``timm.create_model(name)`` builds every astro
model too. Where PyTorch is not installed (an ONNX-only deployment) ``HAS_PYTORCH`` is False:
``astro predict --checkpoint model.onnx`` needs only onnxruntime.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__version__ = "0.5.0"

# The packages only the PyTorch side needs; an ONNX deployment may lack all of them.
PYTORCH_MODULES = frozenset({"torch", "torchvision", "timm"})


def is_missing_pytorch(exc: BaseException) -> bool:
    """Whether ``exc`` says torch, torchvision or timm (or a submodule of them) is not installed."""
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in PYTORCH_MODULES


def _pytorch_installed() -> bool:
    """Whether torch, torchvision and timm can be imported, found without importing them (~1 ms)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in sorted(PYTORCH_MODULES))
    except (ImportError, ValueError):  # a finder that refuses the name counts as not installed
        return False


HAS_PYTORCH = _pytorch_installed()


def __getattr__(name: str) -> ModuleType:
    # PEP 562: `astrocli.models` is imported (and the zoo registered with timm) on first use,
    # so that code written for the eager import (`import astrocli; astrocli.models.create_model`)
    # keeps working while the CLI's start-up stays free of torch.
    if name == "models":
        return importlib.import_module("astrocli.models")
    raise AttributeError(f"module 'astrocli' has no attribute {name!r}")
