"""The perceptron: a linear classifier with the sign activation and the classic learning rule."""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B


class Perceptron:
    """Rosenblatt's perceptron, ``y_hat = sign(X @ w + b)``, trained with the perceptron rule.

    ``fit(X, y, epochs)`` visits the samples in order; a sample is a mistake when
    ``y_i * (x_i @ w + b) <= 0`` and then ``w += lr * y_i * x_i``, ``b += lr * y_i``.  Training
    starts from ``w = 0, b = 0`` and stops after the first epoch without mistakes (on linearly
    separable data this happens after finitely many mistakes, Novikoff's theorem).

    X: (N, n_in) floating or integer array of any backend; y: (N,) labels in {-1, +1} or {0, 1}.
    After ``fit``: ``w`` (n_in,) and ``b`` (0-d) live in X's library and on its device, in
    ``dtype``; ``mistakes_`` is the list of mistakes per epoch and ``converged_`` tells whether
    the last epoch made none.  The updates run on the device; the mistake count is read once
    per epoch.
    """

    def __init__(self, n_in: int, lr: float = 1.0, *, dtype: str = "float64"):
        if int(n_in) < 1:
            raise ValueError(f"Perceptron needs n_in >= 1, got {n_in}")
        lr = float(lr)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"Perceptron learning rate must be positive, got {lr}")
        B.resolve_dtype(np, dtype)
        self.n_in, self.lr, self.dtype = int(n_in), lr, dtype
        self.w = np.zeros((self.n_in,), dtype=dtype)
        self.b = np.zeros((), dtype=dtype)
        self.classes_ = (-1, 1)
        self.mistakes_: list[int] = []
        self.converged_ = False

    def _prepare(self, X):
        X = B.as_array(X, "X")
        xp = B.namespace(X)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(f"Perceptron expects X of shape (N, {self.n_in}), got {tuple(X.shape)}")
        if not (xp.isdtype(X.dtype, "real floating") or xp.isdtype(X.dtype, "integral")):
            raise TypeError(f"X must hold real numbers, got dtype {B.dtype_name(X.dtype)}")
        X = xp.astype(X, B.resolve_dtype(xp, self.dtype))
        B.check_finite(X, "X")
        return X

    def _signed_labels(self, y, X):
        """y as {-1, +1} in X's library and dtype; remembers the coding in ``classes_``."""
        y = B.as_array(y, "y")
        host = np.asarray(B.to_numpy(y))
        if host.ndim != 1 or host.shape[0] != X.shape[0]:
            raise ValueError(f"y must have shape ({X.shape[0]},), got {tuple(host.shape)}")
        values = set(np.unique(host).tolist())
        if values <= {-1, 1}:
            classes, signed = (-1, 1), host
        elif values <= {0, 1}:
            classes, signed = (0, 1), 2 * host - 1
        else:
            raise ValueError(f"y must hold labels in {{-1, +1}} or {{0, 1}}, got values {sorted(values)[:5]}")
        return classes, B.from_numpy(np.asarray(signed, dtype=self.dtype), like=X)

    def fit(self, X, y, epochs: int = 100):
        """Run at most ``epochs`` passes of the perceptron rule over (X, y); returns ``self``."""
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        X = self._prepare(X)
        classes, s = self._signed_labels(y, X)
        xp = B.namespace(X)
        dt = B.resolve_dtype(xp, self.dtype)
        w = B.from_numpy(np.zeros((self.n_in,), dtype=self.dtype), like=X)
        b = xp.zeros((), dtype=dt, device=B.device(X))
        self.classes_, self.mistakes_, self.converged_ = classes, [], False
        for _ in range(int(epochs)):
            count = xp.zeros((), dtype=dt, device=B.device(X))
            for i in range(X.shape[0]):
                x_i, y_i = X[i, :], s[i]
                miss = xp.astype(y_i * (xp.sum(x_i * w) + b) <= 0, dt)   # 1.0 on a mistake
                step = (self.lr * y_i) * miss
                w = w + step * x_i
                b = b + step
                count = count + miss
            self.mistakes_.append(int(B.to_float(count)))
            if self.mistakes_[-1] == 0:
                self.converged_ = True
                break
        self.w, self.b = w, b
        return self

    def decision_function(self, X):
        """``X @ w + b``: (N,) signed scores, in X's library and on its device."""
        X = self._prepare(X)
        xp = B.namespace(X)
        w, b = self.w, self.b
        if B.namespace(w) is not xp or B.device(w) != B.device(X):
            w = B.from_numpy(np.asarray(B.to_numpy(w)), like=X)
            b = B.from_numpy(np.asarray(B.to_numpy(b)), like=X)
        return X @ w + b

    def predict(self, X):
        """Labels (N,) int64 in the coding ``fit`` saw: +1 (or 1) where ``X @ w + b > 0``,
        else -1 (or 0)."""
        scores = self.decision_function(X)
        xp = B.namespace(scores)
        neg, pos = self.classes_
        return xp.astype(xp.where(scores > 0, xp.ones_like(scores) * pos, xp.ones_like(scores) * neg),
                         xp.int64)

    def score(self, X, y) -> float:
        """Fraction of samples of (X, y) classified correctly."""
        pred = B.to_numpy(self.predict(X))
        y = np.asarray(B.to_numpy(B.as_array(y, "y")))
        if y.shape != pred.shape:
            raise ValueError(f"y must have shape {pred.shape}, got {y.shape}")
        return float(np.mean(pred == y))
