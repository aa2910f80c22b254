"""Colour jitter and random erasing on batches: per-sample random, executed batch-wide.

- :func:`color_jitter`: torchvision's ``ColorJitter(s, s, s)`` (the tensor pipeline uses it only
  without ``augment.auto_augment``), built from RandAugment's enhance ops; it applies brightness,
  contrast and saturation in a fixed order, where torchvision shuffles the order per image.
- :func:`sample_erase_boxes`, :func:`box_mask`, :func:`random_erase`: timm's ``RandomErasing``
  (its distributions, its fill modes) on normalised batches. timm's own accepts a batch but loops
  over it in Python; here the boxes are drawn for the whole batch on the host, and only the erased
  samples and pixels are touched on the device.
"""

from __future__ import annotations

import math

import torch

from astrocli.data.pixel_ops import brightness, color, contrast
from astrocli.data.tensor_draws import randint_inclusive, to_device, uniform


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """torchvision ``ColorJitter(s, s, s)`` per sample on float 0..255 images: brightness,
    contrast, saturation (fixed order), each factor uniform in ``[max(0, 1 - s), 1 + s]``."""
    n = len(x)
    low = max(0.0, 1.0 - strength)
    for enhance in (brightness, contrast, color):
        factor = uniform(gen, n, low, 1.0 + strength)
        x = enhance(x, factor)
    return x


def sample_erase_boxes(
    gen: torch.Generator,
    n: int,
    height: int,
    width: int,
    prob: float,
    max_count: int = 1,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
) -> torch.Tensor:
    """timm ``RandomErasing`` boxes ``[n, max_count, 4]`` (top, left, h, w); h = w = 0 means no box.

    Per sample: erase with probability ``prob``; count uniform in [1, max_count]; each box makes 10
    tries at (area uniform in [min_area, max_area] / count, log-uniform aspect in
    [min_aspect, 1/min_aspect]) and keeps the first that fits strictly inside the image.
    """
    attempts = 10
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    erase = torch.rand(n, generator=gen, dtype=torch.float64) <= prob
    count = torch.randint(1, max_count + 1, (n,), generator=gen)
    boxes = torch.zeros(n, max_count, 4, dtype=torch.long)
    for slot in range(max_count):
        target = uniform(gen, n * attempts, min_area, max_area).view(n, attempts) * height * width
        target = target / count[:, None]
        aspect = torch.exp(uniform(gen, n * attempts, log_lo, log_hi).view(n, attempts))
        h = torch.round(torch.sqrt(target * aspect)).long()
        w = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w < width) & (h < height)
        first = torch.argmax(fits.int(), dim=1)
        h = h.gather(1, first[:, None]).squeeze(1)
        w = w.gather(1, first[:, None]).squeeze(1)
        top = randint_inclusive(gen, (height - h).clamp(min=0))
        left = randint_inclusive(gen, (width - w).clamp(min=0))
        active = erase & fits.any(dim=1) & (slot < count)
        boxes[:, slot] = torch.where(active[:, None], torch.stack([top, left, h, w], 1), 0)
    return boxes


def box_mask(boxes: torch.Tensor, height: int, width: int, device: torch.device) -> torch.Tensor:
    """Boolean mask ``[n, 1, H, W]``: True inside any of each sample's boxes (top, left, h, w)."""
    boxes = to_device(boxes, device)
    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, width)
    top, left, h, w = (boxes[..., i].view(*boxes.shape[:2], 1, 1) for i in range(4))
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return inside.any(dim=1, keepdim=True)


def random_erase(
    x: torch.Tensor, mask: torch.Tensor, mode: str, noise_gen: torch.Generator | None = None
) -> torch.Tensor:
    """Fill the masked pixels of normalised images: 'pixel' normal noise, 'rand' one normal colour
    per sample, 'const' zeros (timm's modes). ``mask`` (bool ``[n, 1, H, W]``) may be a host tensor:
    then 'pixel' counts the erased pixels without a device sync and, like timm, draws noise only
    for them (a fifth of the pixels of an erased image on average, not all of them)."""
    if mode == "pixel":
        count = int(mask.sum()) * x.shape[1]  # on a host mask: no device sync
        noise = torch.randn(count, generator=noise_gen, device=x.device, dtype=x.dtype)
        return x.masked_scatter(to_device(mask, x.device).expand_as(x), noise)
    mask = to_device(mask, x.device)
    if mode == "rand":
        fill = torch.randn(len(x), x.shape[1], 1, 1, generator=noise_gen, device=x.device, dtype=x.dtype)
    else:
        fill = torch.zeros((), device=x.device, dtype=x.dtype)
    return torch.where(mask, fill, x)
