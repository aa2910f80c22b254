"""Scientific image files as float arrays: FITS, TIFF, 16-bit PNG, ``.npy`` (numpy + Pillow, no torch).

The "float path" of astro (``data.pixels: float``, chosen automatically for data that is not 8-bit,
has other than 1 or 3 channels, or asks for ``data.scaling``) reads every image as a float32
``[C, H, W]`` array instead of an 8-bit PIL image:

    reader = ArrayReader(in_chans=5, scaling="asinh", scaling_params={"a": 0.1})
    pixels = reader.read("cutout.fits")               # float32 [5, H, W], scaled
    preprocess = FloatEvalPreprocess(64, 1.0, "bicubic", mean, std)
    x = preprocess(pixels)                            # float32 [5, 64, 64], normalised

``astro predict`` on an ``.onnx`` file uses this module without PyTorch (astropy and tifffile are
imported only for their file types). Every error is one line naming the file (:class:`DataError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from astrocli.errors import DataError
from astrocli.images.pil import IMAGE_EXTENSIONS, PIL_FILTERS, center_crop, convert_image, shorter_side_size
from astrocli.images.scaling import check_scaling, integer_to_unit, scale_image

FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
TIFF_EXTENSIONS = (".tif", ".tiff")
NPY_EXTENSIONS = (".npy",)
LAYOUTS = ("auto", "channels_first", "channels_last")


def is_array_file(path: str | Path) -> bool:
    """Whether ``path`` is a FITS or ``.npy`` file (image types PIL cannot open)."""
    name = str(path).lower()
    return name.endswith(FITS_EXTENSIONS) or name.endswith(NPY_EXTENSIONS)


def is_science_file(path: str | Path) -> bool:
    """Whether the float path can read ``path`` (FITS, ``.npy``, or any image PIL/tifffile reads)."""
    return is_array_file(path) or Path(path).suffix.lower() in IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------------
# Raw readers: native dtype, [C, H, W]
# ------------------------------------------------------------------------------------------------


def to_chw(array: np.ndarray, layout: str, where: str) -> tuple[np.ndarray, str]:
    """``array`` as ``[C, H, W]`` and the layout that was assumed (``channels_first``/``_last``).

    ``auto`` takes the smaller of the first and last axes as the band axis (bands are few,
    images are wide); a 2-D array is one band (layout ``single_band``).
    """
    if array.ndim == 2:
        return array[None], "single_band"
    if array.ndim != 3:
        raise DataError(
            f"{where}: image arrays must be 2-D [H, W] or 3-D with a band axis, got {array.shape}"
        )
    if layout == "auto":
        layout = "channels_last" if array.shape[-1] < array.shape[0] else "channels_first"
    if layout == "channels_last":
        return np.moveaxis(array, -1, 0), layout
    return array, "channels_first"


def read_fits(path: Path, hdu: str | None) -> np.ndarray:
    """The image of HDU ``hdu`` (name or number; None: the first HDU holding an image)."""
    try:
        from astropy.io import fits
    except ImportError:
        raise DataError("reading FITS files needs astropy: pip install astropy") from None
    try:
        with fits.open(path, memmap=False) as hdus:
            if hdu is None:
                found = next((h for h in hdus if _fits_image(h) is not None), None)
                if found is None:
                    raise DataError(f"{path}: no HDU holds an image; check the file or set data.fits_hdu")
                return np.array(_fits_image(found))
            key: str | int = int(hdu) if str(hdu).isdigit() else str(hdu)
            try:
                chosen = hdus[key]
            except (KeyError, IndexError):
                names = ", ".join(h.name or str(i) for i, h in enumerate(hdus))
                raise DataError(f"{path}: no HDU '{hdu}' (data.fits_hdu); the file has: {names}") from None
            data = _fits_image(chosen)
            if data is None:
                raise DataError(
                    f"{path}: HDU '{hdu}' holds no image ({type(chosen).__name__}); "
                    "point data.fits_hdu at an image HDU"
                )
            return np.array(data)
    except OSError as exc:
        raise DataError(f"{path}: not a readable FITS file ({exc})") from None


def _fits_image(hdu: Any) -> np.ndarray | None:
    from astropy.io import fits

    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
        return None
    data = hdu.data
    return data if data is not None and data.ndim >= 2 else None


def read_pil(path: Path) -> np.ndarray:
    """A PIL-readable image at full depth: 8-bit L/RGB as uint8, 16-bit as uint16, 32-bit as is."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(img).astype(np.uint16)
            if img.mode in ("I", "F"):
                return np.asarray(img)
            if img.mode not in ("L", "RGB"):  # alpha over black, palettes expanded, as the 8-bit path
                img = convert_image(img, "L" if img.mode in ("1", "LA", "La") else "RGB")
            return np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF at full depth with tifffile (8/16/32-bit integer, float; any band count)."""
    try:
        import tifffile
    except ImportError:
        return read_pil(path)  # Pillow still reads the common 8 and 16-bit single-band TIFFs
    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:  # tifffile raises its own TiffFileError and ValueError types
        raise DataError(f"{path}: not a readable TIFF file ({exc})") from None


def read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array (never unpickles: object arrays are refused)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def read_raw(path: str | Path, fits_hdu: str | None = None) -> np.ndarray:
    """The file's pixels in their own dtype and axis order (before :func:`to_chw`)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(FITS_EXTENSIONS):
        return read_fits(path, fits_hdu)
    if name.endswith(NPY_EXTENSIONS):
        return read_npy(path)
    if name.endswith(TIFF_EXTENSIONS):
        return read_tiff(path)
    return read_pil(path)


# ------------------------------------------------------------------------------------------------
# Reader: raw -> checked, scaled float32 [C, H, W]
# ------------------------------------------------------------------------------------------------


@dataclass
class ArrayReader:
    """Reads any supported file as a scaled float32 ``[in_chans, H, W]`` array (the float path).

    ``nan_fill``: value for NaN/inf pixels (None: such a file is refused, one line naming it).
    """

    in_chans: int = 3
    scaling: str = "none"
    scaling_params: Mapping[str, float] = field(default_factory=dict)
    fits_hdu: str | None = None
    layout: str = "auto"
    nan_fill: float | None = None

    def __post_init__(self) -> None:
        self.scaling_params = check_scaling(self.scaling, self.scaling_params)
        if self.layout not in LAYOUTS:
            raise DataError(f"data.layout '{self.layout}' is unknown; use one of: {', '.join(LAYOUTS)}")

    def read_chw(self, path: str | Path) -> tuple[np.ndarray, str]:
        """Raw pixels ``[C, H, W]`` in their own dtype and the layout assumed; bands checked."""
        raw = read_raw(path, self.fits_hdu)
        if raw.dtype.kind not in "biuf":
            raise DataError(f"{path}: pixels of type {raw.dtype} are not numbers")
        chw, layout = to_chw(raw, self.layout, str(path))
        return self.match_bands(chw, str(path)), layout

    def match_bands(self, chw: np.ndarray, where: str) -> np.ndarray:
        """Check the band count against ``in_chans`` (one band is repeated to fill them)."""
        bands = chw.shape[0]
        if bands == self.in_chans:
            return chw
        if bands == 1:
            return np.repeat(chw, self.in_chans, axis=0)
        raise DataError(
            f"{where}: {bands} bands but data.in_chans is {self.in_chans}; "
            f"set data.in_chans={bands} (or data.layout if the band axis was misread: shape {chw.shape})"
        )

    def to_float(self, chw: np.ndarray, where: str) -> np.ndarray:
        """Raw ``[C, H, W]`` -> float32, NaN-checked and scaled."""
        values = integer_to_unit(chw)
        bad = ~np.isfinite(values)
        if bad.any():
            if self.nan_fill is None:
                raise DataError(
                    f"{where}: {int(bad.sum())} NaN/inf pixels; fix the file or set data.nan_fill "
                    "(e.g. data.nan_fill=0) to replace them"
                )
            values = np.where(bad, np.float32(self.nan_fill), values)
        return scale_image(values, self.scaling, self.scaling_params)

    def read(self, path: str | Path) -> np.ndarray:
        """The file as a scaled float32 ``[in_chans, H, W]`` array."""
        chw, _ = self.read_chw(path)
        return self.to_float(chw, str(path))

    @classmethod
    def from_config(cls, cfg: Any) -> ArrayReader:
        """The reader a ``DataConfig`` (or anything with its attributes) describes."""
        return cls(
            in_chans=cfg.in_chans,
            scaling=cfg.scaling,
            scaling_params=dict(cfg.scaling_params or {}),
            fits_hdu=cfg.fits_hdu,
            layout=cfg.layout,
            nan_fill=cfg.nan_fill,
        )


# ------------------------------------------------------------------------------------------------
# Geometry and evaluation preprocessing on float arrays (Pillow's float mode, no torch)
# ------------------------------------------------------------------------------------------------


def resize_channels(chw: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize every band of a float ``[C, H, W]`` array to ``size`` (width, height) with Pillow.

    Pillow's 32-bit float mode ``F`` resamples with the same filters as its 8-bit images
    (antialiased), so float images get the geometry the 8-bit path has, without torch.
    """
    resample = PIL_FILTERS[interpolation]
    return np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), mode="F").resize(size, resample)
            )
            for c in chw
        ]
    )


def resize_short_center_crop(chw: np.ndarray, scale_size: int, crop: int, interpolation: str) -> np.ndarray:
    """Resize the shorter side to ``scale_size`` (when it differs) and centre-crop ``crop``."""
    height, width = chw.shape[-2:]
    size = shorter_side_size(width, height, scale_size)
    if size != (width, height):
        chw = resize_channels(chw, size, interpolation)
    return center_crop(chw.transpose(1, 2, 0), crop).transpose(2, 0, 1)


class FloatEvalPreprocess:
    """The evaluation transform of the float path: scaled ``[C, H, W]`` -> normalised ``[C, S, S]``.

    The same steps as :class:`astrocli.images.pil.EvalPreprocess` (resize the shorter side to
    ``floor(img_size / crop_pct)``, centre-crop ``img_size``, normalise) on float bands, used by
    train-time checks, ``astro eval`` and ``astro predict`` for checkpoints and ONNX files alike.
    """

    def __init__(
        self,
        img_size: int,
        crop_pct: float,
        interpolation: str,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if interpolation not in PIL_FILTERS:
            raise ValueError(f"unknown interpolation '{interpolation}'; use one of {sorted(PIL_FILTERS)}")
        self.img_size = img_size
        self.scale_size = math.floor(img_size / (crop_pct or 0.875))
        self.interpolation = interpolation
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(std, dtype=np.float32)[:, None, None]

    def __call__(self, chw: np.ndarray) -> np.ndarray:
        if chw.shape[0] != len(self.mean):
            raise DataError(f"image has {chw.shape[0]} bands, the model takes {len(self.mean)}")
        pixels = resize_short_center_crop(
            chw.astype(np.float32, copy=False), self.scale_size, self.img_size, self.interpolation
        )
        return np.ascontiguousarray((pixels - self.mean) / self.std, dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# What a checkpoint (CheckpointMeta) says about feeding it
# ------------------------------------------------------------------------------------------------


def reader_for(meta: Any) -> ArrayReader:
    """The :class:`ArrayReader` a float-path checkpoint was trained with (its stored settings)."""
    reader = dict(meta.reader or {})
    return ArrayReader(
        in_chans=meta.in_chans,
        scaling=meta.scaling or "none",
        scaling_params=dict(meta.scaling_params or {}),
        fits_hdu=reader.get("fits_hdu"),
        layout=reader.get("layout") or "auto",
        nan_fill=reader.get("nan_fill"),
    )


def preprocess_for(meta: Any) -> FloatEvalPreprocess:
    """The float-path evaluation transform of a checkpoint."""
    return FloatEvalPreprocess(meta.img_size, meta.crop_pct, meta.interpolation, meta.mean, meta.std)
