"""Image hashes for finding copies: the SHA-1 of decoded pixels and perceptual hashes (imagehash's pHash).

The perceptual hash is taken at 16x16 DCT coefficients (256 bits), which separates real copies from
distinct images far better than the common 64-bit hash on small, alike images (galaxies: distinct pairs
stay >= 54 bits apart, copies <= 24). A crop moves every pixel of a 32-px image, so each image is also
hashed after trimming 1/32, 1/16 and 3/32 of each border (:data:`TRIMS`); the pair search
(:mod:`astrocli.experiments.duplicates`) compares one image's full hash with every hash of the other.
Torch-free, like the rest of ``images/``.
"""

from __future__ import annotations

import hashlib

import imagehash
import numpy as np
from PIL import Image

HASH_SIDE = 16  # pHash of 16x16 DCT coefficients: 256 bits
HASH_BITS = HASH_SIDE * HASH_SIDE
TRIMS = (0.0, 1 / 32, 1 / 16, 3 / 32)  # share of each border cut before hashing (0: the full image)


def pixel_digest(img: Image.Image) -> str:
    """SHA-1 of the decoded pixels (mode, size and bytes): equal for byte-different files of one image."""
    return hashlib.sha1(f"{img.mode}{img.size}".encode() + img.tobytes()).hexdigest()


def perceptual_hashes(img: Image.Image) -> np.ndarray:
    """pHash of the image and of each trimmed version: uint64 ``[len(TRIMS), HASH_BITS // 64]``."""
    gray = img.convert("L")
    width, height = gray.size
    rows = []
    for trim in TRIMS:
        dx, dy = round(width * trim), round(height * trim)
        part = gray.crop((dx, dy, width - dx, height - dy)) if trim and width - 2 * dx > 8 else gray
        bits = imagehash.phash(part, hash_size=HASH_SIDE).hash.reshape(-1)
        rows.append(np.packbits(bits).view(">u8").astype(np.uint64))
    return np.stack(rows)
