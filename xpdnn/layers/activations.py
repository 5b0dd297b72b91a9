"""Elementwise activations and the softmax, each primitive next to its derivative.

Rules every activation of xpdnn follows (this module, ``rectifiers.py``, ``smooth.py`` and the
NumPy fast path ``xpdnn.kernels.cpu.relu_backward_``):

* **NaN propagates.**  At a NaN input the output is NaN and so is the input gradient, whatever
  ``dY`` is (PReLU's slope gradient too, through its sum).  PyTorch is not uniform here: its
  ReLU, LeakyReLU and Identity pass ``dY`` through at NaN, its ELU and smooth activations give
  NaN; xpdnn always gives NaN, so a NaN is never hidden by a backward pass.
* **At the kink X = 0 the negative side's derivative is taken**, as in PyTorch
  (``torch.nn.ReLU``, ``LeakyReLU``, ``PReLU``, ``RReLU``, ``ELU`` documentation and autograd
  formulas): relu'(0) = 0, leaky_relu'(0) = alpha, elu'(0) = alpha, PReLU's d alpha at 0 is 0.
* **No overflow that the exact result does not have**, for any input and any ``beta`` of
  Softplus (whose ``beta X`` may overflow while Y does not).  The sigmoid's derivative is
  computed from ``e = exp(-|X|)``, which its forward pass has anyway, as ``e / (1 + e)^2``,
  not from Y: it keeps its relative accuracy where Y rounds to 1 (``Y (1 - Y)`` is 0 there).
  Tanh's ``1 - Y^2`` is accurate to about eps in absolute terms only (see
  :func:`tanh_backward`).
"""

from __future__ import annotations

from .. import _backend as B
from .base import Layer


def relu(X):
    xp = B.namespace(X)
    return xp.maximum(X, 0.0)


def relu_backward(dY, Y):
    """``dY`` where ``Y > 0``, 0 where ``Y == 0``, NaN where Y is NaN (``Y = relu(X)``)."""
    # where Y > 0 fails, Y = relu(X) is 0 or NaN: already the gradient, with no extra pass
    xp = B.namespace(dY)
    return xp.where(Y > 0, dY, Y)


def _sigmoid_e(X):
    # exp of a non-positive number only: no overflow at either extreme.
    xp = B.namespace(X)
    E = xp.exp(-xp.abs(X))
    return xp.where(X >= 0, 1.0 / (1.0 + E), E / (1.0 + E)), E


def sigmoid(X):
    return _sigmoid_e(X)[0]


def sigmoid_backward(dY, Y, E=None):
    """``dX`` for the sigmoid.  With ``E = exp(-|X|)`` (kept by :class:`Sigmoid`'s forward)
    ``sigmoid'(X) = E / (1 + E)^2``, accurate in both tails; ``Y (1 - Y)`` alone is 0 once Y
    rounds to 1 (X > 37 in float64, X > 17 in float32) and loses digits well before."""
    if E is None:
        return dY * Y * (1.0 - Y)
    P = 1.0 + E
    return dY * (E / (P * P))


def tanh(X):
    return B.namespace(X).tanh(X)


def tanh_backward(dY, Y):
    # 1 - Y^2 is accurate to about eps in absolute terms only (PyTorch's tanh_backward is the
    # same): in the tails, where it is below eps, it keeps few or no correct digits.  The
    # exp(-2|X|) form that keeps them costs one more exp per element (measured for 128 x 512
    # float32: the Tanh layer's forward + backward 200 us -> 330 us), so it is not used.
    return dY * (1.0 - Y * Y)


def softmax(X, axis=-1):
    xp = B.namespace(X)
    E = xp.exp(X - xp.max(X, axis=axis, keepdims=True))
    return E / xp.sum(E, axis=axis, keepdims=True)


def softmax_backward(dY, Y, axis=-1):
    xp = B.namespace(dY)
    return Y * (dY - xp.sum(dY * Y, axis=axis, keepdims=True))


class _Elementwise(Layer):
    """An activation whose backward needs only its output ``Y``."""

    fn = staticmethod(lambda X: X)
    fn_backward = staticmethod(lambda dY, Y: dY)

    def forward(self, X, *, train=False, rng=None):
        Y = self.fn(X)
        return Y, lambda dY: self.fn_backward(dY, Y)


def propagate_nan(X, dX):
    """``dX`` with NaN wherever X is NaN (the module's NaN rule), for a backward pass whose
    formula would otherwise hide it.  A second ``where`` over a mask that is almost always
    false: cheaper than folding the test into the branch's own ``where``."""
    xp = B.namespace(X, dX)
    return xp.where(xp.isnan(X), X, dX)


def identity_backward(dY, Y):
    return propagate_nan(Y, dY)


class Identity(_Elementwise):
    """Y = X."""
    fn_backward = staticmethod(identity_backward)


class ReLU(_Elementwise):
    """Y = max(0, X)."""
    fn = staticmethod(relu)
    fn_backward = staticmethod(relu_backward)


class Sigmoid(_Elementwise):
    """Y = 1 / (1 + exp(-X)), evaluated without overflow; its derivative keeps its relative
    accuracy in both tails (see :func:`sigmoid_backward`)."""
    fn = staticmethod(sigmoid)
    fn_backward = staticmethod(sigmoid_backward)

    def forward(self, X, *, train=False, rng=None):
        Y, E = _sigmoid_e(X)
        return Y, lambda dY: sigmoid_backward(dY, Y, E)


class Tanh(_Elementwise):
    """Y = tanh(X)."""
    fn = staticmethod(tanh)
    fn_backward = staticmethod(tanh_backward)


class Softmax(_Elementwise):
    """Row-wise softmax: probabilities over the last axis.  For training a classifier use
    :class:`xpdnn.SoftmaxCrossEntropy` on the logits instead (stable and cheaper)."""
    fn = staticmethod(softmax)
    fn_backward = staticmethod(softmax_backward)
