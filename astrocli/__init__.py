"""astro: small-data image classifiers from the command line.

Importing :mod:`astrocli` registers the zoo with timm (through :mod:`astrocli.models`), so that
both ``astrocli.models.create_model(name)`` and ``timm.create_model(name)`` build every astro
model. Where PyTorch is not installed (an ONNX-only deployment) the import still works and
``HAS_PYTORCH`` is False: ``astro predict --checkpoint model.onnx`` needs only onnxruntime.
"""

__version__ = "0.2.0"

# The packages only the PyTorch side needs; an ONNX deployment may lack all of them.
PYTORCH_MODULES = frozenset({"torch", "torchvision", "timm"})


def is_missing_pytorch(exc: BaseException) -> bool:
    """Whether ``exc`` says torch, torchvision or timm (or a submodule of them) is not installed."""
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in PYTORCH_MODULES


try:
    from astrocli import models as models  # registers the zoo with timm
except ModuleNotFoundError as _exc:
    # Only a missing torch/torchvision/timm is tolerated (the ONNX predict path runs without them);
    # any other missing module is a real bug and must surface.
    if not is_missing_pytorch(_exc):
        raise
    HAS_PYTORCH = False
else:
    HAS_PYTORCH = True
