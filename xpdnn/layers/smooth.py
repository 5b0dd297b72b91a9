"""Smooth activations: Softplus, GELU and SiLU, and the error function GELU needs.

All are elementwise: X of any shape -> Y of the same shape, evaluated without overflow for
inputs of any size (and, for Softplus, any ``beta``); NaN in gives NaN out and a NaN gradient
(the rules of :mod:`xpdnn.layers.activations`).  The Array API has no ``erf``, so
:func:`erfc` is implemented here.
"""

from __future__ import annotations

import math

from .. import _backend as B
from .activations import sigmoid
from .base import Layer

# Chebyshev coefficients c_0..c_27 of log(erfcx(z) * (2 + z) / 2) in y = (2 - z) / (2 + z),
# z >= 0 (erfcx(z) = exp(z^2) erfc(z)), the form of Numerical Recipes' erfccheb; computed
# here with mpmath at 50 digits by interpolation at 80 Chebyshev nodes (|c_28| < 1e-19).
_ERFC_CHEB = (
    -1.3026537197817094, 0.6419697923564902, 0.019476473204185836,
    -0.009561514786808632, -0.0009465953444820369, 0.00036683949785276145,
    4.252332480690777e-05, -2.0278578112534242e-05, -1.6242900046470256e-06,
    1.3036558355805232e-06, 1.5626441722066142e-08, -8.523809591492654e-08,
    6.5290544390988515e-09, 5.059343495551469e-09, -9.91364156493033e-10,
    -2.273651222931836e-10, 9.646791102015527e-11, 2.3940380830391146e-12,
    -6.886027526497553e-12, 8.944879273090725e-13, 3.130921399342958e-13,
    -1.1270822361367252e-13, 3.810905255189232e-16, 7.106097613609237e-15,
    -1.5230282014571043e-15, -9.457494571291233e-17, 1.210237189224279e-16,
    -2.816663087747177e-17,
)
# Maclaurin series of erf(x) / x in x^2, used for |x| < 0.5 (13 terms: error < 1e-17).
_ERF_TAYLOR = tuple((2.0 / math.sqrt(math.pi)) * (-1) ** n / (math.factorial(n) * (2 * n + 1))
                    for n in range(13))
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_K = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


def _erfc_nonneg(Z):
    """erfc(Z) for Z >= 0; relative error about 1e-15 in float64 wherever it does not
    underflow (Z < 26.5), measured against mpmath on a grid of 20,000 points."""
    xp = B.namespace(Z)
    Z = xp.clip(Z, max=40.0)       # erfc(Z) underflows to 0 from Z = 27.3 on; no overflow in Z^2
    t = 2.0 / (2.0 + Z)
    ty = 4.0 * t - 2.0
    d, dd = xp.zeros_like(Z), xp.zeros_like(Z)
    for c in _ERFC_CHEB[:0:-1]:
        d, dd = ty * d - dd + c, d
    log_erfcx_t = 0.5 * (_ERFC_CHEB[0] + ty * d) - dd
    # exp(-Z^2) = exp(-Zh^2) * exp(-(Z - Zh)(Z + Zh)) with Zh^2 exact: keeps the rounding of
    # Z^2 (up to 700) out of the exponent.
    Zh = xp.floor(Z * 16.0) / 16.0
    return t * xp.exp(-Zh * Zh) * xp.exp(log_erfcx_t - (Z - Zh) * (Z + Zh))


def erfc(X):
    """The complementary error function ``1 - erf(X)``, elementwise, any real floating X."""
    xp = B.namespace(X)
    E = _erfc_nonneg(xp.abs(X))
    return xp.where(X < 0, 2.0 - E, E)


def erf(X):
    """The error function, elementwise; relative error about 1e-15 in float64."""
    xp = B.namespace(X)
    A = xp.abs(X)
    T = X * X
    small = xp.zeros_like(X)
    for a in _ERF_TAYLOR[::-1]:
        small = small * T + a
    big = 1.0 - _erfc_nonneg(A)
    return xp.where(A < 0.5, X * small, xp.where(X < 0, -big, big))


def normal_cdf(X):
    """Phi(X), the standard normal CDF, accurate in relative terms in both tails."""
    xp = B.namespace(X)
    E = 0.5 * _erfc_nonneg(xp.abs(X) * _SQRT1_2)
    return xp.where(X < 0, E, 1.0 - E)


# exp(-_EXP_CUT) is 0 in float64 and float32: beyond it nothing depends on |beta X|
_EXP_CUT = 800.0


def _times_beta(X, beta):
    """``beta X``, with X clipped to ``|beta X| <= 800`` when ``beta > 1`` so that the product
    never overflows (``beta X`` is only used inside ``exp(-|beta X|)`` and the sigmoid)."""
    if beta == 1.0:
        return X
    if beta > 1.0:
        cut = _EXP_CUT / beta
        X = B.namespace(X).clip(X, min=-cut, max=cut)
    return beta * X


def softplus(X, beta=1.0):
    """``Y = log(1 + exp(beta X)) / beta`` as ``max(X, 0) + log1p(exp(-|beta X|)) / beta``:
    finite wherever the result is (``beta X`` may overflow, ``Y`` does not), and accurate in
    the underflowing negative tail for ``beta < 1``, where ``exp(beta X) / beta`` is a normal
    number although ``exp(beta X)`` is not."""
    xp = B.namespace(X)
    A = xp.abs(_times_beta(X, beta))
    soft = xp.log1p(xp.exp(-A)) / beta
    if beta < 1.0:
        # log1p(e) = e to working precision for e < exp(-40); the clip keeps the unused
        # branch at or below exp(-40) / beta
        soft = xp.where(A > 40.0, xp.exp(-math.log(beta) - xp.clip(A, min=40.0)), soft)
    return xp.maximum(X, xp.zeros_like(X)) + soft


def softplus_backward(dY, X, beta=1.0):
    # the derivative of softplus is the sigmoid
    return dY * sigmoid(_times_beta(X, beta))


def gelu(X):
    """Exact GELU ``Y = X * Phi(X)``."""
    return X * normal_cdf(X)


def gelu_backward(dY, X, P=None):
    """``dX`` for exact GELU; ``P = normal_cdf(X)`` when the forward pass kept it."""
    # d/dX X Phi(X) = Phi(X) + X phi(X)
    xp = B.namespace(dY)
    P = normal_cdf(X) if P is None else P
    Xc = xp.clip(X, min=-40.0, max=40.0)        # phi(X) underflows to 0 beyond: no overflow in X^2
    return dY * (P + X * (_INV_SQRT_2PI * xp.exp(-0.5 * Xc * Xc)))


def _gelu_tanh_gate(X):
    # sigmoid(2u) = (1 + tanh(u)) / 2; it is exactly 0 or 1 long before |X| = 1e4, and the
    # clip keeps X^3 finite in float32
    xp = B.namespace(X)
    Xc = xp.clip(X, min=-1e4, max=1e4)
    return sigmoid((2.0 * _GELU_TANH_K) * (Xc + _GELU_TANH_C * Xc * Xc * Xc))


def gelu_tanh(X):
    """Tanh-approximated GELU ``0.5 X (1 + tanh(sqrt(2/pi) (X + 0.044715 X^3)))``, evaluated
    as ``X * sigmoid(2 u)`` (the same function, without cancellation for negative X)."""
    return X * _gelu_tanh_gate(X)


def gelu_tanh_backward(dY, X):
    # d/dX X s(2u) = s + X s (1 - s) 2 u',  u' = sqrt(2/pi) (1 + 3 * 0.044715 X^2)
    xp = B.namespace(dY)
    S = _gelu_tanh_gate(X)
    Xc = xp.clip(X, min=-1e4, max=1e4)
    dU = _GELU_TANH_K * (1.0 + 3.0 * _GELU_TANH_C * Xc * Xc)
    return dY * (S + X * (S * (1.0 - S)) * (2.0 * dU))


def silu(X):
    """SiLU / swish ``Y = X * sigmoid(X)``."""
    return X * sigmoid(X)


def silu_backward(dY, X, S=None):
    """``dX`` for SiLU; ``S = sigmoid(X)`` when the forward pass kept it."""
    S = sigmoid(X) if S is None else S
    return dY * (S * (1.0 + X * (1.0 - S)))


class Softplus(Layer):
    """``Y = log(1 + exp(beta X)) / beta``, a smooth ReLU whose derivative is
    ``sigmoid(beta X)``; exact for every X and every ``beta > 0`` without overflow or spurious
    underflow (PyTorch's ``threshold`` shortcut is not needed)."""

    def __init__(self, beta: float = 1.0, *, dtype: str = "float32"):
        super().__init__(dtype)
        beta = float(beta)
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"Softplus beta must be positive and finite, got {beta}")
        self.beta = beta

    def get_config(self):
        return {"beta": self.beta, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        beta = self.beta
        return softplus(X, beta), lambda dY: softplus_backward(dY, X, beta)


class GELU(Layer):
    """Gaussian error linear unit ``Y = X * Phi(X)``.

    ``approximate="none"`` (default) is the exact erf form, with :func:`erfc` accurate to
    about 1e-15 relative in float64; ``approximate="tanh"`` is the tanh approximation, the
    same two choices as ``torch.nn.functional.gelu``.
    """

    APPROXIMATIONS = ("none", "tanh")

    def __init__(self, approximate: str = "none", *, dtype: str = "float32"):
        super().__init__(dtype)
        if approximate not in self.APPROXIMATIONS:
            raise ValueError(f"GELU approximate must be one of {self.APPROXIMATIONS}, got {approximate!r}")
        self.approximate = approximate

    def get_config(self):
        return {"approximate": self.approximate, "dtype": self.dtype}

    def forward(self, X, *, train=False, rng=None):
        if self.approximate == "tanh":
            return gelu_tanh(X), lambda dY: gelu_tanh_backward(dY, X)
        P = normal_cdf(X)
        return X * P, lambda dY: gelu_backward(dY, X, P)


class SiLU(Layer):
    """SiLU (swish) ``Y = X * sigmoid(X)``."""

    def forward(self, X, *, train=False, rng=None):
        S = sigmoid(X)
        return X * S, lambda dY: silu_backward(dY, X, S)
