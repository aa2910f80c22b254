"""Exact and near-duplicate pairs among the hashes of :mod:`astrocli.images.hashing`.

Exact: equal pixel digests. Near (a copy re-encoded, resized or slightly cropped): a pair's distance
is the smallest between one image's full perceptual hash and any hash (full or trimmed) of the other,
at most ``max_bits`` of 256. Measured on real images in tests/test_audit.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from astrocli.images.hashing import HASH_BITS

DEFAULT_MAX_BITS = 32  # near duplicate: at most this many of 256 bits apart (copies measured <= 24)
BLOCK = 512  # rows compared at a time: bounds the [BLOCK, N, words] temporary


@dataclass(frozen=True)
class Pair:
    """Two images (indices into the audited list) and how far apart they are."""

    a: int
    b: int
    distance: float
    kind: str  # exact | near | embedding


def exact_pairs(digests: list[str | None]) -> list[Pair]:
    """Every pair of images with identical pixels (distance 0)."""
    groups: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        if digest is not None:
            groups.setdefault(digest, []).append(index)
    return [Pair(g[0], other, 0.0, "exact") for g in groups.values() for other in g[1:]]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between ±1 hash rows ``a [n, HASH_BITS]`` and ``b [m, HASH_BITS]`` (float32):
    ``[n, m]``. For ±1 vectors, distance = (bits - a.b) / 2, so one BLAS product (exact in float32 up to
    2^24) does what a popcount loop would, tens of times faster on 10,000+ images."""
    return (HASH_BITS - a @ b.T) * 0.5


def signs(packed: np.ndarray) -> np.ndarray:
    """Packed uint64 hashes ``[N, W]`` as ±1 float32 rows ``[N, HASH_BITS]``."""
    bits = np.unpackbits(packed.astype(">u8").view(np.uint8), axis=-1)
    return (1.0 - 2.0 * bits).astype(np.float32)


def near_pairs(
    hashes: np.ndarray,
    max_bits: int = DEFAULT_MAX_BITS,
    skip: set | None = None,
    valid: np.ndarray | None = None,
) -> list[Pair]:
    """Pairs whose perceptual distance is at most ``max_bits`` (see the module doc), each once.

    ``hashes`` is ``[N, len(TRIMS), W]``; pairs in ``skip`` (``(a, b)`` with a < b) and pairs with an
    image whose ``valid`` is False (it did not decode: no hash) are left out.
    """
    n = len(hashes)
    valid = np.ones(n, dtype=bool) if valid is None else valid
    full = signs(hashes[:, 0])
    trimmed = [signs(hashes[:, t]) for t in range(1, hashes.shape[1])]
    best = {}
    for start in range(0, n, BLOCK):
        rows = slice(start, min(start + BLOCK, n))
        dist = hamming(full[rows], full)
        for other in trimmed:  # full of one against trimmed of the other, both ways
            np.minimum(dist, hamming(full[rows], other), out=dist)
            np.minimum(dist, hamming(other[rows], full), out=dist)
        dist[~valid[rows]] = HASH_BITS + 1
        dist[:, ~valid] = HASH_BITS + 1
        for i, j in zip(*np.nonzero(dist <= max_bits), strict=True):
            a, b = start + int(i), int(j)
            if a < b and (a, b) not in (skip or ()):
                best[(a, b)] = float(dist[i, j])
    return [Pair(a, b, d, "near") for (a, b), d in sorted(best.items())]
