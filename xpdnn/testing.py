"""Finite-difference gradient checks used by the test suite (and useful to users writing layers)."""

from __future__ import annotations

import numpy as np

from . import _backend as B


def _numeric(f, host, put, eps):
    """Central differences of scalar ``f(array)`` w.r.t. every element of ``host``."""
    g = np.zeros_like(host, dtype=np.float64)
    flat, gflat = host.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(put(host))
        flat[i] = old - eps
        fm = f(put(host))
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def check_layer_gradients(layer, X, *, train=False, seed=0, eps=1e-6, rtol=1e-6, atol=1e-8, params=True):
    """Compare ``layer``'s backprop with central differences of ``sum(forward(X) * G)`` for a
    fixed random ``G``, w.r.t. the input and (with ``params``) every parameter.  Use float64.
    Random layers get a fresh ``Stream(seed)`` for every evaluation, so they draw the same
    masks each time.  Raises AssertionError naming the first mismatching array."""
    from .random import Stream

    layer.ensure_like(X)
    Y, backprop = layer.forward(X, train=train, rng=Stream(seed))
    G_host = np.random.default_rng(1234).standard_normal(tuple(Y.shape))
    G = B.from_numpy(G_host, like=Y)
    layer.zero_grad()
    dX = B.to_numpy(backprop(G))
    analytic = {"input": dX}
    for path, lay, name in layer.parameters():
        analytic[f"{path}.{name}" if path else name] = B.to_numpy(lay.grads[name]).copy()

    def objective(Xv):
        Yv = layer.forward(Xv, train=train, rng=Stream(seed))[0]
        return float(np.sum(B.to_numpy(Yv) * G_host))

    numeric = {"input": _numeric(objective, B.to_numpy(X).astype(np.float64).copy(),
                                 lambda h: B.from_numpy(h, like=X), eps)}
    if params:
        for path, lay, name in layer.parameters():
            orig = lay.params[name]

            def f_param(P, lay=lay, name=name):
                lay.params[name] = P
                return objective(X)

            numeric[f"{path}.{name}" if path else name] = _numeric(
                f_param, B.to_numpy(orig).astype(np.float64).copy(), lambda h, o=orig: B.from_numpy(h, like=o), eps)
            lay.params[name] = orig
    for key, num in numeric.items():
        np.testing.assert_allclose(analytic[key], num, rtol=rtol, atol=atol, err_msg=f"gradient of {key}")
    return analytic


def check_loss_gradient(loss_fn, Z, targets, *, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Compare ``dZ`` from ``loss_fn(Z, targets)`` with central differences of the loss
    (the loss must reduce to a scalar)."""
    loss, dZ = loss_fn(Z, targets)
    num = _numeric(lambda Zv: B.to_float(loss_fn(Zv, targets)[0]), B.to_numpy(Z).astype(np.float64).copy(),
                   lambda h: B.from_numpy(h, like=Z), eps)
    np.testing.assert_allclose(B.to_numpy(dZ), num, rtol=rtol, atol=atol, err_msg="gradient of the logits")
    return B.to_numpy(dZ)


def away_from(host: np.ndarray, kinks=(0.0,), margin=1e-3, rng=None):
    """Redraw elements of ``host`` that lie within ``margin`` of a kink (ReLU's 0, a hinge's
    margin, ...), so finite differences never straddle one."""
    rng = rng or np.random.default_rng(0)
    host = host.copy()
    for _ in range(100):
        bad = np.zeros(host.shape, dtype=bool)
        for k in kinks:
            bad |= np.abs(host - k) < margin
        if not bad.any():
            return host
        host[bad] = rng.standard_normal(int(bad.sum()))
    raise RuntimeError("could not draw values away from the kinks")
