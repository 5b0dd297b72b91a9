"""Weight initializers.

An initializer is ``f(rng, n_in, n_out) -> W``: it draws on the host with a NumPy ``Generator``
and returns a float64 array of shape ``(n_out, n_in)`` (one row of incoming weights per unit, as
in the ``W x`` of the usual notation); layers cast and move it.  Because weights are drawn on the host, every
backend starts from identical weights.  Initializers with options take them as keyword arguments
after ``n_out``; bind them with ``functools.partial`` (``partial(sparse, k=5)``) or a small factory.

Variance laws (``n_in`` inputs, ``n_out`` units):

* LeCun   ``Var(w) = 1 / n_in``            (``lecun_normal``, ``lecun_uniform``)
* Glorot  ``Var(w) = 2 / (n_in + n_out)``  (``glorot_normal``, ``glorot_uniform``)
* He      ``Var(w) = 2 / n_in``            (``he_normal``, ``he_uniform``; ReLU networks)

A uniform ``U(-a, a)`` has variance ``a**2 / 3``, so the uniform forms use ``a = sqrt(3 Var)``.
Biases are not drawn here: layers start them at a constant (``Linear(..., bias=0.01)``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def zeros(rng, n_in, n_out):
    """All zeros.  Allowed, but every unit of the layer starts identical and gets an identical
    update unless the layers around it differ, so zeros cannot break symmetry: a warning says so."""
    warnings.warn("init='zeros': every unit of this layer starts identical and zeros cannot break the "
                  "symmetry between them; use a random initializer such as 'he' or 'glorot'",
                  UserWarning, stacklevel=2)
    return np.zeros((n_out, n_in))


def normal(rng, n_in, n_out, std=0.01):
    """Small random numbers ``w ~ N(0, std**2)`` (``0.01 * randn`` by default)."""
    return rng.standard_normal((n_out, n_in)) * float(std)


def uniform(rng, n_in, n_out, limit=0.05):
    """Small random numbers ``w ~ U(-limit, limit)``."""
    return rng.uniform(-float(limit), float(limit), (n_out, n_in))


def lecun_normal(rng, n_in, n_out):
    """LeCun: w ~ N(0, 1) / sqrt(n_in), i.e. Var(w) = 1 / n_in (LeCun et al., "Efficient BackProp", 1998)."""
    return rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)


def lecun_uniform(rng, n_in, n_out):
    """LeCun uniform: U(-a, a) with a = sqrt(3 / n_in), so Var(w) = 1 / n_in."""
    limit = math.sqrt(3.0 / n_in)
    return rng.uniform(-limit, limit, (n_out, n_in))


def glorot_normal(rng, n_in, n_out):
    """Glorot/Xavier normal: Var(w) = 2 / (n_in + n_out)."""
    return rng.standard_normal((n_out, n_in)) * math.sqrt(2.0 / (n_in + n_out))


def glorot_uniform(rng, n_in, n_out):
    """Glorot/Xavier uniform: Var(w) = 2 / (n_in + n_out)."""
    limit = math.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, (n_out, n_in))


def he_normal(rng, n_in, n_out):
    """Kaiming/He normal: Var(w) = 2 / n_in (ReLU networks)."""
    return rng.standard_normal((n_out, n_in)) * math.sqrt(2.0 / n_in)


def he_uniform(rng, n_in, n_out):
    """Kaiming/He uniform: U(-a, a) with a = sqrt(6 / n_in), so Var(w) = 2 / n_in."""
    limit = math.sqrt(6.0 / n_in)
    return rng.uniform(-limit, limit, (n_out, n_in))


def sparse(rng, n_in, n_out, k=10, std=0.01):
    """Sparse initialization: each unit (row) gets exactly ``min(k, n_in)`` nonzero incoming
    weights, at input positions chosen at random, drawn from ``N(0, std**2)``; the rest are 0."""
    k = int(k)
    if k < 1:
        raise ValueError(f"sparse initialization needs k >= 1 connections per unit, got {k}")
    k = min(k, n_in)
    W = np.zeros((n_out, n_in))
    # the k smallest of n_in uniform keys per row: a uniformly random k-subset of the inputs
    cols = np.argsort(rng.random((n_out, n_in)), axis=1)[:, :k]
    values = rng.standard_normal((n_out, k)) * float(std)
    # a draw of exactly 0.0 has probability 0, but keep "exactly k nonzero" unconditional
    values[values == 0.0] = float(std)
    np.put_along_axis(W, cols, values, axis=1)
    return W


def orthogonal(rng, n_in, n_out, gain=1.0):
    """Orthogonal (Saxe et al.): the rows (n_out <= n_in) or columns (n_out > n_in) of W are
    orthonormal, times ``gain``; drawn as the Q of a Gaussian matrix's QR, sign-fixed so it is
    uniformly (Haar) distributed, as ``torch.nn.init.orthogonal_`` does."""
    rows, cols = max(n_out, n_in), min(n_out, n_in)
    Q, R = np.linalg.qr(rng.standard_normal((rows, cols)))
    Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
    W = Q if n_out >= n_in else Q.T
    return float(gain) * W


def constant(value):
    """A factory: ``constant(0.5)`` is an initializer filling W with ``value``."""
    value = float(value)

    def init(rng, n_in, n_out):
        return np.full((n_out, n_in), value)

    init.__name__ = f"constant({value})"
    return init


INITIALIZERS = {
    "zeros": zeros,
    "zero": zeros,
    "normal": normal,
    "small_normal": normal,
    "uniform": uniform,
    "small_uniform": uniform,
    "lecun": lecun_normal,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "glorot": glorot_uniform,
    "xavier": glorot_uniform,
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "he": he_normal,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "sparse": sparse,
    "orthogonal": orthogonal,
}


def get(name):
    """Look an initializer up by name (or pass a callable ``f(rng, n_in, n_out)`` through)."""
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown initializer {name!r}; choose from {sorted(INITIALIZERS)}") from None
