"""Intensity scaling of scientific images (``data.scaling`` + ``data.scaling_params``), torch-free.

Train, eval, ``astro predict`` on a checkpoint and on an ``.onnx`` file all call :func:`scale_image`
on the float32 ``[C, H, W]`` array a reader returned, with the parameters stored in the checkpoint,
so every path feeds the model the same numbers. The intervals and stretches are astropy's
(``astropy.visualization``), imported only when a scaling other than ``none`` is used.

- ``none``: values as read (integer images divided by their type's maximum, so 8 and 16-bit
  images land in 0..1; float images keep their physical units).
- ``minmax``: each channel of each image mapped linearly from its min..max to 0..1.
- ``percentile``: the same between two percentiles (``percent``: central percentage kept, 99.5;
  or ``lower``/``upper`` percentiles), clipped to 0..1.
- ``zscale``: IRAF's zscale limits (``contrast``: 0.25), clipped to 0..1.
- ``asinh``: a percentile interval (``percent``, default 99.5) then the asinh stretch
  (``a``: 0.1), the usual display of faint extended sources next to bright cores.

Every scaling other than ``none`` works per channel (bands of a cube differ by orders of magnitude).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from astrocli.errors import RecipeError

SCALINGS = ("none", "minmax", "percentile", "asinh", "zscale")

# The parameters each scaling accepts, with their defaults (astropy's where it has one).
SCALING_DEFAULTS: dict[str, dict[str, float]] = {
    "none": {},
    "minmax": {},
    "percentile": {"percent": 99.5},
    "asinh": {"percent": 99.5, "a": 0.1},
    "zscale": {"contrast": 0.25},
}
_OPTIONAL = {"percentile": ("lower", "upper"), "asinh": ("lower", "upper")}


def check_scaling(method: str, params: Mapping[str, Any] | None) -> dict[str, float]:
    """Validate ``data.scaling``/``data.scaling_params``; return the full parameters (defaults filled).

    Raises:
        RecipeError: unknown scaling, unknown or non-numeric parameter.
    """
    if method not in SCALINGS:
        raise RecipeError(f"data.scaling '{method}' is unknown; use one of: {', '.join(SCALINGS)}")
    allowed = {**SCALING_DEFAULTS[method], **dict.fromkeys(_OPTIONAL.get(method, ()), 0.0)}
    given = dict(params or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none"
        raise RecipeError(
            f"data.scaling_params {unknown} not understood by scaling '{method}' (valid: {valid})"
        )
    full = dict(SCALING_DEFAULTS[method])
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise RecipeError(f"data.scaling_params.{key} must be a finite number, got {value!r}")
        full[key] = float(value)
    if ("lower" in full) != ("upper" in full):
        raise RecipeError("data.scaling_params: give both lower and upper percentiles, or neither")
    return full


def _astropy_visualization() -> Any:
    try:
        from astropy import visualization
    except ImportError:
        raise RecipeError("data.scaling other than none needs astropy: pip install astropy") from None
    return visualization


def _interval(method: str, params: Mapping[str, float]) -> Any:
    vis = _astropy_visualization()
    if method == "minmax":
        return vis.MinMaxInterval()
    if method == "zscale":
        return vis.ZScaleInterval(contrast=params.get("contrast", 0.25))
    if "lower" in params:
        return vis.AsymmetricPercentileInterval(params["lower"], params["upper"])
    return vis.PercentileInterval(params.get("percent", 99.5))


def integer_to_unit(array: np.ndarray) -> np.ndarray:
    """float32 values of ``array``: integers divided by their type's maximum, floats as they are."""
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        top = 1.0 if array.dtype == np.bool_ else float(np.iinfo(array.dtype).max)
        return array.astype(np.float32) / np.float32(top)
    return array.astype(np.float32, copy=False)


def scale_image(array: np.ndarray, method: str, params: Mapping[str, float] | None = None) -> np.ndarray:
    """Scale a finite float32 ``[C, H, W]`` image, channel by channel, with astropy's interval/stretch.

    ``params`` are the (already checked) ``data.scaling_params``. A flat channel becomes zeros.
    """
    if method == "none":
        return array.astype(np.float32, copy=False)
    params = check_scaling(method, params)
    vis = _astropy_visualization()
    interval = _interval(method, params)
    stretch = vis.AsinhStretch(a=params["a"]) if method == "asinh" else None
    out = np.empty(array.shape, dtype=np.float32)
    for c, channel in enumerate(array):
        lo, hi = interval.get_limits(channel)
        if not hi > lo:  # a constant band: nothing to stretch
            out[c] = 0.0
            continue
        unit = np.clip((channel.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
        out[c] = stretch(unit, clip=True) if stretch is not None else unit
    return out
