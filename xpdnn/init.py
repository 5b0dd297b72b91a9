"""Weight initializers.

Each initializer draws on the host with a NumPy ``Generator`` and returns a float64 array of
shape ``(n_out, n_in)`` (one row per unit, as in the texts' ``W x``); layers cast and move it.
Because weights are drawn on the host, every backend starts from identical weights.
"""

from __future__ import annotations

import math

import numpy as np


def he_normal(rng, n_in, n_out):
    """Kaiming/He normal: Var(w) = 2 / n_in (ReLU networks)."""
    return rng.standard_normal((n_out, n_in)) * math.sqrt(2.0 / n_in)


def glorot_uniform(rng, n_in, n_out):
    """Glorot/Xavier uniform: Var(w) = 2 / (n_in + n_out)."""
    limit = math.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, (n_out, n_in))


def glorot_normal(rng, n_in, n_out):
    return rng.standard_normal((n_out, n_in)) * math.sqrt(2.0 / (n_in + n_out))


def lecun_normal(rng, n_in, n_out):
    """LeCun: w ~ N(0, 1) / sqrt(n_in), i.e. Var(w) = 1 / n_in (seed 002's calibration)."""
    return rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)


INITIALIZERS = {
    "he": he_normal,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "glorot": glorot_uniform,
    "xavier": glorot_uniform,
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "lecun": lecun_normal,
    "lecun_normal": lecun_normal,
}


def get(name):
    """Look an initializer up by name (or pass a callable ``f(rng, n_in, n_out)`` through)."""
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown initializer {name!r}; choose from {sorted(INITIALIZERS)}") from None
