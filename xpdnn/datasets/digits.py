"""scikit-learn's handwritten digits (1,797 8x8 images, shipped with scikit-learn)."""

from __future__ import annotations

import numpy as np


def load_digits(dtype="float32"):
    """(X, y): X (1797, 64) pixel intensities scaled to [0, 1], y (1797,) int64 labels 0-9."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ImportError("the digits dataset ships with scikit-learn: pip install 'xpdnn[datasets]'") from None
    data = sk_digits()
    return (data.data / 16.0).astype(dtype), data.target.astype(np.int64)


def train_test_split(X, y, test_size=0.25, seed=0, stratify=True):
    """Host split of NumPy arrays; stratified by class so every class keeps its share."""
    X, y = np.asarray(X), np.asarray(y)
    rng = np.random.default_rng(seed)
    if stratify:
        test = []
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            test.append(idx[: int(round(len(idx) * test_size))])
        test = np.sort(np.concatenate(test))
    else:
        test = np.sort(rng.permutation(len(y))[: int(round(len(y) * test_size))])
    train = np.setdiff1d(np.arange(len(y)), test)
    return X[train], X[test], y[train], y[test]
