"""Small built-in data sets: XOR (Goodfellow, Bengio & Courville, Deep Learning, section 6.1) and the K-armed spirals (the CS231n 2-D demo)."""

from __future__ import annotations

import numpy as np


def _check_dtype(dtype):
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


def xor(dtype="float32"):
    """The four XOR points: X (4, 2) = [[0, 0], [0, 1], [1, 0], [1, 1]], y (4,) int64 =
    [0, 1, 1, 0] (1 exactly when the two inputs differ).  No linear model separates them."""
    _check_dtype(dtype)
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return X, y


def spirals(n_per_class: int = 100, n_classes: int = 3, noise: float = 0.2, seed: int = 0, dtype="float32"):
    """K interleaved spiral arms in 2-D, not linearly separable.

    Arm ``j`` has ``n_per_class`` points with radius ``r`` from 0 to 1 and angle
    ``t = linspace(4j, 4(j + 1)) + noise * N(0, 1)``, at ``(r sin t, r cos t)``.
    Returns X (K * n_per_class, 2) and y (K * n_per_class,) int64 in [0, K), arm by arm.
    ``seed`` drives the angle noise (NumPy generator), so the data are reproducible.
    """
    _check_dtype(dtype)
    n, k = int(n_per_class), int(n_classes)
    if n < 1 or k < 1:
        raise ValueError(f"spirals needs n_per_class >= 1 and n_classes >= 1, got {n_per_class}, {n_classes}")
    if not float(noise) >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    X = np.empty((n * k, 2))
    y = np.empty(n * k, dtype=np.int64)
    r = np.linspace(0.0, 1.0, n)
    for j in range(k):
        t = np.linspace(4.0 * j, 4.0 * (j + 1), n) + rng.standard_normal(n) * float(noise)
        X[j * n:(j + 1) * n] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[j * n:(j + 1) * n] = j
    return X.astype(dtype), y
