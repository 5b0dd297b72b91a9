"""Elementwise activations and the softmax, each primitive next to its derivative."""

from __future__ import annotations

from .. import _backend as B
from .base import Layer


def relu(X):
    xp = B.namespace(X)
    return xp.maximum(X, 0.0)


def relu_backward(dY, Y):
    xp = B.namespace(dY)
    return xp.where(Y > 0, dY, 0.0)


def sigmoid(X):
    # exp of a non-positive number only: no overflow at either extreme.
    xp = B.namespace(X)
    E = xp.exp(-xp.abs(X))
    return xp.where(X >= 0, 1.0 / (1.0 + E), E / (1.0 + E))


def sigmoid_backward(dY, Y):
    return dY * Y * (1.0 - Y)


def tanh(X):
    return B.namespace(X).tanh(X)


def tanh_backward(dY, Y):
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


class Identity(_Elementwise):
    """Y = X."""


class ReLU(_Elementwise):
    """Y = max(0, X)."""
    fn = staticmethod(relu)
    fn_backward = staticmethod(relu_backward)


class Sigmoid(_Elementwise):
    """Y = 1 / (1 + exp(-X)), evaluated without overflow."""
    fn = staticmethod(sigmoid)
    fn_backward = staticmethod(sigmoid_backward)


class Tanh(_Elementwise):
    """Y = tanh(X)."""
    fn = staticmethod(tanh)
    fn_backward = staticmethod(tanh_backward)


class Softmax(_Elementwise):
    """Row-wise softmax: probabilities over the last axis.  For training a classifier use
    :class:`xpdnn.SoftmaxCrossEntropy` on the logits instead (stable and cheaper)."""
    fn = staticmethod(softmax)
    fn_backward = staticmethod(softmax_backward)
