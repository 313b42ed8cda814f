"""The fixed tables of the heat operator: the orthonormal DCT-II basis and the frequency decay map."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def dct_basis(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis, shape (n_freq, n_pos): rows are frequencies.

    ``cos((x + 0.5) * k * pi / n) * sqrt(2 / n)`` with row 0 divided by sqrt(2).
    Its transpose is the inverse transform (the basis is orthogonal).
    """
    pos = (np.arange(n, dtype=np.float64) + 0.5) / n
    freq = np.arange(n, dtype=np.float64)[:, None]
    basis = np.cos(freq * pos * np.pi) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


@functools.lru_cache(maxsize=None)
def decay_map(height: int, width: int) -> np.ndarray:
    """``exp(-(w_n^2 + w_m^2))`` with ``w_n = n * pi / height``, shape (height, width)."""
    w_n = np.arange(height, dtype=np.float64) * np.pi / height
    w_m = np.arange(width, dtype=np.float64) * np.pi / width
    return np.exp(-(w_n[:, None] ** 2 + w_m[None, :] ** 2)).astype(np.float32)
