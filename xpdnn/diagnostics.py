"""Training diagnostics (CS231n, "Neural Networks Part 3"): dead ReLU units, saturated sigmoid/tanh units, gradient flow.

Three :class:`~xpdnn.trainer.Callback` subclasses write per-layer numbers into the training
history under ``"<metric>/<layer path>"`` keys, the paths being those of
``net.named_layers()`` (``"layers.0"``, ...):

* :class:`GradientFlowMonitor` -- ``grad_norm/<path>`` (L2 norm of all of a layer's parameter
  gradients) and ``update_ratio/<path>`` (``||P_after - P_before|| / ||P_before||`` for one
  optimizer step), averaged over the epoch's steps; warns when a layer's gradient vanishes
  (below ``vanish_ratio`` times the last layer's) or explodes.
* :class:`DeadReLUMonitor` -- ``dead_fraction/<path>``: at the end of every epoch an evaluation
  forward pass over a fixed sample of the training data (given to the constructor) records, per
  ReLU layer, which units are ever > 0; a unit never active on the whole sample is dead.  Warns
  above ``threshold`` (40%, the fraction of dead units CS231n warns about) with the hint to lower the learning rate.
* :class:`SaturationMonitor` -- ``saturation/<path>``: on the same kind of pass, the fraction of
  sigmoid/tanh outputs within ``tol`` of an asymptote (where the local gradient nearly vanishes).

The monitors that need activations take the sample X in their constructor rather than wrapping
the layers: the network and the training loop stay untouched, the numbers come from the current
weights, and the cost is one evaluation pass over the sample per epoch.  Warnings are
:class:`DiagnosticsWarning` (a RuntimeWarning), issued once per layer and kind per run and
attributed to the first caller outside xpdnn (the line that called ``fit``), so the report names
the user's code rather than the trainer's loop; ``xpdnn train --diagnostics`` prints each one as
a single ``xpdnn: diagnostics: ...`` line.

The same measurements are available as plain functions for a network and data at hand:
:func:`gradient_norms`, :func:`dead_fractions`, :func:`saturation_fractions`.
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np

from . import _backend as B
from .layers.activations import ReLU, Sigmoid, Tanh
from .trainer import Callback


class DiagnosticsWarning(RuntimeWarning):
    """A diagnostic found a likely training problem (dead units, vanishing gradients, ...)."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` made by this function's caller that names the
    first frame outside the xpdnn package (what Python 3.12's ``skip_file_prefixes`` does)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def _diagnose(msg: str) -> None:
    warnings.warn(msg, DiagnosticsWarning, stacklevel=_outside_stacklevel())


def _record(trainer, logs: dict, values: dict) -> None:
    """Add ``values`` to this epoch's ``logs`` and make sure they reach ``trainer.history``.

    The trainer copies ``logs`` into the history before calling ``on_epoch_end``; when it has
    already done so for this epoch the values are appended to the history directly (lists padded
    with None for epochs without a value), otherwise putting them into ``logs`` is enough."""
    logs.update(values)
    hist = trainer.history
    losses = hist.get("loss")
    if not losses or losses[-1] is not logs.get("loss"):
        return
    n = len(losses)
    for k, v in values.items():
        lst = hist.setdefault(k, [])
        lst.extend([None] * (n - 1 - len(lst)))
        lst.append(v)


def _leaves(layer, prefix=""):
    """(path, layer) for the layers a Sequential chains, nested Sequentials flattened."""
    subs = getattr(layer, "layers", None)
    if isinstance(subs, list):
        for i, sub in enumerate(subs):
            yield from _leaves(sub, f"{prefix}.layers.{i}" if prefix else f"layers.{i}")
    else:
        yield prefix, layer


def _place(net, X):
    """X as an array next to the net's parameters, in the net's dtype."""
    where = net.placement()
    X = B.as_array(X, "X")
    if where is not None:
        xp, dev = where
        if B.namespace(X) is not xp or B.device(X) != dev:
            X = B.from_numpy(B.to_numpy(X), like=next(iter(net.state_arrays().values())))
    xp = B.namespace(X)
    return xp.astype(X, B.resolve_dtype(xp, net.dtype), copy=False)


def activations(net, X, batch_size: int = 4096):
    """Evaluation-mode forward pass of X (N, n_in) through ``net`` (a Sequential) in batches,
    yielding for each batch a list of ``(path, layer, Y)`` for every chained layer.  The net's
    parameters are moved next to X if they live elsewhere."""
    X = B.as_array(X, "X")
    net.ensure_like(X)
    xp = B.namespace(X)
    X = xp.astype(X, B.resolve_dtype(xp, net.dtype), copy=False)
    for start in range(0, X.shape[0], batch_size):
        Y = X[start:min(start + batch_size, X.shape[0]), ...]
        out = []
        for path, layer in _leaves(net):
            Y = layer.forward(Y, train=False)[0]
            out.append((path, layer, Y))
        yield out


def _asymptotes(layer):
    bounds = getattr(layer, "asymptotes", None)
    if bounds is not None:
        return bounds
    if isinstance(layer, Sigmoid):
        return (0.0, 1.0)
    if isinstance(layer, Tanh):
        return (-1.0, 1.0)
    return None


def dead_fractions(net, X, batch_size: int = 4096) -> dict:
    """``{path: fraction}`` for every ReLU layer of ``net``: the fraction of its units whose
    output is <= 0 for every sample of X (N, n_in)."""
    alive = {}
    for outs in activations(net, X, batch_size):
        for path, layer, Y in outs:
            if isinstance(layer, ReLU):
                xp = B.namespace(Y)
                a = xp.any(xp.reshape(Y, (Y.shape[0], -1)) > 0, axis=0)
                alive[path] = a if path not in alive else xp.logical_or(alive[path], a)
    out = {}
    for path, a in alive.items():
        xp = B.namespace(a)
        out[path] = 1.0 - float(xp.mean(xp.astype(a, xp.float64)))
    return out


def saturation_fractions(net, X, tol: float = 0.01, batch_size: int = 4096) -> dict:
    """``{path: fraction}`` for every sigmoid/tanh layer of ``net`` (or a layer with an
    ``asymptotes = (low, high)`` attribute): the fraction of its outputs on X (N, n_in) within
    ``tol`` of ``low`` or ``high``."""
    counts, totals = {}, {}
    for outs in activations(net, X, batch_size):
        for path, layer, Y in outs:
            bounds = _asymptotes(layer)
            if bounds is None:
                continue
            xp = B.namespace(Y)
            lo, hi = bounds
            sat = xp.logical_or(Y <= lo + tol, Y >= hi - tol)
            c = xp.sum(xp.astype(sat, xp.float64))
            counts[path] = c if path not in counts else counts[path] + c
            totals[path] = totals.get(path, 0) + math.prod(Y.shape)
    return {p: float(c) / totals[p] if totals[p] else 0.0 for p, c in counts.items()}


def _param_layers(net):
    return [(path, layer) for path, layer in net.named_layers() if layer.params]


def _sq_norm(arrays):
    total = None
    for a in arrays:
        xp = B.namespace(a)
        s = xp.sum(a * a)
        total = s if total is None else total + s
    return total


def gradient_norms(net, X, y, loss, *, train: bool = False, rng=None) -> dict:
    """``{path: norm}``: the L2 norm of each parametrized layer's gradient (all its parameters
    together) for one forward/backward pass of ``loss`` on X (N, n_in), y (N,).  The net's
    gradients are zeroed first and left holding this pass's gradients."""
    X = _place(net, X)
    y = B.as_array(y, "y")
    if B.namespace(y) is not B.namespace(X) or B.device(y) != B.device(X):
        y = B.from_numpy(B.to_numpy(y), like=X)
    net.ensure_like(X)
    net.zero_grad()
    Z, backprop = net.forward(X, train=train, rng=rng)
    backprop(loss(Z, y)[1])
    return {path: math.sqrt(float(_sq_norm(layer.grads[n] for n in sorted(layer.params))))
            for path, layer in _param_layers(net)}


class GradientFlowMonitor(Callback):
    """Per-layer gradient norm and update/weight ratio, averaged over an epoch's steps.

    On every ``every``-th step the parameters are copied at ``on_batch_begin``; at
    ``on_batch_end`` (after the optimizer step) it accumulates ``||grad||`` (all of the layer's
    parameters; the gradients the optimizer used, after regularizers and clipping) and
    ``||P_after - P_before|| / ||P_before||``.  At epoch end it logs ``grad_norm/<path>`` and
    ``update_ratio/<path>`` and warns when a layer's mean gradient norm is below
    ``vanish_ratio`` times the last parametrized layer's or above ``explode_ratio`` times it,
    or not finite.  The sums stay on the device until the epoch ends (one host sync per layer
    per epoch)."""

    def __init__(self, vanish_ratio: float = 1e-7, explode_ratio: float = 1e4, every: int = 1, warn: bool = True):
        if not 0 < float(vanish_ratio) < 1 < float(explode_ratio):
            raise ValueError(f"need 0 < vanish_ratio < 1 < explode_ratio, got {vanish_ratio}, {explode_ratio}")
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.vanish_ratio, self.explode_ratio = float(vanish_ratio), float(explode_ratio)
        self.every, self.warn = int(every), bool(warn)
        self._warned: set = set()
        self._reset()

    def _reset(self):
        self._before = None
        self._grad, self._update, self._n = {}, {}, 0

    def on_train_begin(self, trainer):
        self._warned = set()
        self._reset()

    def on_epoch_begin(self, trainer, epoch):
        self._reset()

    def on_batch_begin(self, trainer, step):
        if step % self.every:
            self._before = None
            return
        self._before = {}
        for path, layer in _param_layers(trainer.net):
            self._before[path] = [B.namespace(layer.params[n]).asarray(layer.params[n], copy=True)
                                  for n in sorted(layer.params)]

    def on_batch_end(self, trainer, step, logs):
        if self._before is None:
            return
        for path, layer in _param_layers(trainer.net):
            names = sorted(layer.params)
            old = self._before[path]
            xp = B.namespace(old[0])
            g = xp.sqrt(_sq_norm(layer.grads[n] for n in names))
            d = xp.sqrt(_sq_norm(layer.params[n] - o for n, o in zip(names, old)))
            w = xp.sqrt(_sq_norm(old))
            r = d / xp.where(w > 0, w, xp.ones_like(w))
            self._grad[path] = g if path not in self._grad else self._grad[path] + g
            self._update[path] = r if path not in self._update else self._update[path] + r
        self._before = None
        self._n += 1

    def on_epoch_end(self, trainer, epoch, logs):
        if not self._n:
            return
        grad = {p: float(v) / self._n for p, v in self._grad.items()}
        values = {f"grad_norm/{p}": v for p, v in grad.items()}
        values.update({f"update_ratio/{p}": float(v) / self._n for p, v in self._update.items()})
        _record(trainer, logs, values)
        if self.warn and grad:
            self._check(grad)

    def _check(self, grad):
        paths = list(grad)
        last = grad[paths[-1]]
        for p in paths[:-1]:
            g = grad[p]
            if not math.isfinite(g):
                self._warn(p, "explode", f"the gradient of {p} is {g}: gradients explode; "
                           "lower the learning rate or clip gradients")
            elif last > 0 and g < self.vanish_ratio * last:
                self._warn(p, "vanish", f"the gradient norm of {p} ({g:.3g}) is {g / last:.1e} times the last "
                           f"layer's ({last:.3g}): gradients vanish before reaching it (saturating "
                           "activations or too small weights? try ReLU with He initialization)")
            elif last > 0 and g > self.explode_ratio * last:
                self._warn(p, "explode", f"the gradient norm of {p} ({g:.3g}) is {g / last:.1e} times the last "
                           f"layer's ({last:.3g}): gradients explode; lower the learning rate, "
                           "check the initialization or clip gradients")

    def _warn(self, path, kind, msg):
        if (path, kind) not in self._warned:
            self._warned.add((path, kind))
            _diagnose(msg)


class _ActivationMonitor(Callback):
    """Runs an evaluation pass over a fixed sample X (M, n_in) at every epoch end."""

    reads_gradients = False

    def __init__(self, X_sample, batch_size: int = 4096, warn: bool = True):
        X_sample = B.as_array(X_sample, "X_sample")
        if X_sample.ndim != 2 or X_sample.shape[0] == 0:
            raise ValueError(f"X_sample must be a non-empty 2-D array (samples, features), got shape "
                             f"{tuple(X_sample.shape)}")
        self.X_sample, self.batch_size, self.warn = X_sample, int(batch_size), bool(warn)
        self._placed = None
        self._warned: set = set()

    def on_train_begin(self, trainer):
        self._warned = set()

    def _sample(self, net):
        # cache the sample next to the parameters (one copy per placement)
        where = net.placement()
        key = None if where is None else (id(where[0]), str(where[1]), net.dtype)
        if self._placed is None or self._placed[0] != key:
            self._placed = (key, _place(net, self.X_sample))
        return self._placed[1]

    def _warn(self, path, msg):
        if self.warn and path not in self._warned:
            self._warned.add(path)
            _diagnose(msg)


class DeadReLUMonitor(_ActivationMonitor):
    """Logs ``dead_fraction/<path>`` per ReLU layer at each epoch end: the fraction of units
    that output <= 0 for every sample of ``X_sample`` (M, n_in) (a fixed sample of the
    training data, on the host or any backend).  Warns (:class:`DiagnosticsWarning`) when a
    layer's fraction exceeds ``threshold``."""

    def __init__(self, X_sample, threshold: float = 0.4, batch_size: int = 4096, warn: bool = True):
        super().__init__(X_sample, batch_size, warn)
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)

    def on_epoch_end(self, trainer, epoch, logs):
        fractions = dead_fractions(trainer.net, self._sample(trainer.net), self.batch_size)
        _record(trainer, logs, {f"dead_fraction/{p}": f for p, f in fractions.items()})
        for p, f in fractions.items():
            if f > self.threshold:
                self._warn(p, f"{f:.0%} of the ReLU units in {p} are dead (never active on the monitored "
                           f"sample, threshold {self.threshold:.0%}) after epoch {epoch + 1}: the learning rate "
                           "is probably too high, lower it (or try LeakyReLU / Maxout)")


class SaturationMonitor(_ActivationMonitor):
    """Logs ``saturation/<path>`` per sigmoid/tanh layer at each epoch end: the fraction of
    outputs on ``X_sample`` (M, n_in) within ``tol`` of an asymptote.  Warns when above
    ``threshold``."""

    def __init__(self, X_sample, tol: float = 0.01, threshold: float = 0.5, batch_size: int = 4096,
                 warn: bool = True):
        super().__init__(X_sample, batch_size, warn)
        if not 0.0 < float(tol) < 0.5:
            raise ValueError(f"tol must be in (0, 0.5), got {tol}")
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.tol, self.threshold = float(tol), float(threshold)

    def on_epoch_end(self, trainer, epoch, logs):
        fractions = saturation_fractions(trainer.net, self._sample(trainer.net), self.tol, self.batch_size)
        _record(trainer, logs, {f"saturation/{p}": f for p, f in fractions.items()})
        for p, f in fractions.items():
            if f > self.threshold:
                self._warn(p, f"{f:.0%} of the outputs of {p} are saturated (within {self.tol} of an asymptote) "
                           f"after epoch {epoch + 1}: their gradients nearly vanish; check the weight "
                           "initialization and the input scaling, or use ReLU")


def diagnostics_callbacks(X_sample, *, max_samples: int = 2048, seed: int = 0, dead_threshold: float = 0.4):
    """The callbacks behind ``xpdnn train --diagnostics``: a :class:`GradientFlowMonitor`, a
    :class:`DeadReLUMonitor` and a :class:`SaturationMonitor` sharing one sample of at most
    ``max_samples`` rows of X_sample (N, n_in) (drawn without replacement with ``seed``)."""
    X_sample = B.as_array(X_sample, "X_sample")
    if X_sample.ndim != 2 or X_sample.shape[0] == 0:
        raise ValueError(f"X_sample must be a non-empty 2-D array, got shape {tuple(X_sample.shape)}")
    if X_sample.shape[0] > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(X_sample.shape[0], int(max_samples), replace=False))
        X_sample = B.to_numpy(X_sample)[idx]
    return [GradientFlowMonitor(), DeadReLUMonitor(X_sample, threshold=dead_threshold), SaturationMonitor(X_sample)]


_METRICS = ("grad_norm", "update_ratio", "dead_fraction", "saturation")


def format_diagnostics(history: dict) -> str:
    """A table of the diagnostics in ``history``: one row per layer, one column per metric,
    each cell ``first epoch -> last epoch``."""
    rows: dict[str, dict[str, str]] = {}
    for key, values in history.items():
        metric, _, path = key.partition("/")
        if metric not in _METRICS or not path:
            continue
        vals = [v for v in values if v is not None]
        if not vals:
            continue
        fmt = (lambda v: f"{v:.1%}") if metric in ("dead_fraction", "saturation") else (lambda v: f"{v:.2e}")
        rows.setdefault(path, {})[metric] = fmt(vals[0]) if len(vals) == 1 else f"{fmt(vals[0])} -> {fmt(vals[-1])}"
    if not rows:
        return "no diagnostics recorded (train with the callbacks of xpdnn.diagnostics.diagnostics_callbacks)"
    metrics = [m for m in _METRICS if any(m in r for r in rows.values())]
    n_epochs = max((len(v) for k, v in history.items() if "/" in k), default=0)

    def order(path):
        return [int(p) if p.isdigit() else p for p in path.split(".")]

    paths = sorted(rows, key=order)
    table = [["layer"] + metrics] + [[p] + [rows[p].get(m, "") for m in metrics] for p in paths]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]
    lines.insert(1, "-" * sum(widths + [2 * (len(widths) - 1)]))
    return f"diagnostics over {n_epochs} epoch(s) (first -> last)\n" + "\n".join(lines)
