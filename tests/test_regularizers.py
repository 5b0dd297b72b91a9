"""L2 / L1 / elastic-net penalties, max-norm constraints and gradient clipping."""

from __future__ import annotations

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.layers.activations import Tanh
from xpdnn.layers.linear import Linear
from xpdnn.layers.sequential import Sequential
from xpdnn.losses.regression import MSE
from xpdnn.optim.sgd import SGD
from xpdnn.regularizers import (L1, L2, ClipGradNorm, ClipGradValue, ElasticNet, MaxNorm, clip_grad_norm,
                                clip_grad_value)
from xpdnn.testing import away_from, check_loss_gradient
from xpdnn.trainer import Trainer


def make_net(backend, seed=0):
    net = Sequential(Linear(5, 4, seed=seed, bias=0.3, dtype="float64"), Tanh(),
                     Linear(4, 3, seed=seed + 1, bias=-0.2, dtype="float64"))
    net.to(like=backend.asarray(np.zeros(1)))
    return net


def set_grads(net, backend, seed=0, scale=1.0):
    """Random host gradients, also put into ``net``'s grads; returns {path: host}."""
    rng = np.random.default_rng(seed)
    host = {}
    for path, layer, name in net.parameters():
        g = rng.standard_normal(tuple(layer.params[name].shape)) * scale
        layer.grads[name] = backend.asarray(g.copy())     # array-api-strict may share host memory
        host[f"{path}.{name}"] = g
    return host


def params(net):
    return {f"{p}.{n}": B.to_numpy(lay.params[n]).copy() for p, lay, n in net.parameters()}


def grads(net):
    return {f"{p}.{n}": B.to_numpy(lay.grads[n]).copy() for p, lay, n in net.parameters()}


@pytest.mark.parametrize("include_bias", [False, True])
def test_l2_penalty_and_gradient(backend, include_bias):
    net = make_net(backend)
    g0 = set_grads(net, backend)
    P = params(net)
    lam = 0.7
    penalty = L2(lam, include_bias=include_bias)(net)
    chosen = [k for k in P if include_bias or k.endswith(".W")]
    assert len(chosen) == (4 if include_bias else 2)
    assert B.to_float(penalty) == pytest.approx(lam / 2 * sum(np.sum(P[k] ** 2) for k in chosen), rel=1e-12)
    g = grads(net)
    for k in P:
        expected = g0[k] + lam * P[k] if k in chosen else g0[k]
        np.testing.assert_allclose(g[k], expected, rtol=1e-12, err_msg=k)


def test_l2_makes_sgd_decay_weights(backend):
    """Seed 001: with lam/2 ||W||^2 in the loss, SGD's update is (1 - lr*lam) W - lr*grad (biases: plain)."""
    net = make_net(backend)
    g0 = set_grads(net, backend)
    P = params(net)
    lr, lam = 0.1, 0.5
    L2(lam)(net)
    SGD(lr=lr).step(net)
    after = params(net)
    for k in P:
        expected = (1 - lr * lam) * P[k] - lr * g0[k] if k.endswith(".W") else P[k] - lr * g0[k]
        np.testing.assert_allclose(after[k], expected, rtol=1e-12, err_msg=k)


def _regression(n=48, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = np.tanh(X @ rng.standard_normal((5, 3)))
    return X, y


def test_l2_regularizer_in_trainer_equals_sgd_weight_decay(backend):
    X, y = _regression()
    X, y = backend.asarray(X), backend.asarray(y)
    histories, weights = [], []
    for regs, opt in (([L2(0.3)], SGD(lr=0.1, momentum=0.9)), ([], SGD(lr=0.1, momentum=0.9, weight_decay=0.3))):
        net = make_net(backend)
        t = Trainer(net, loss=MSE(), optimizer=opt, batch_size=16, epochs=3, seed=0, progress=False,
                    regularizers=regs)
        histories.append(t.fit(X, y))
        weights.append(params(net))
    for k in weights[0]:
        np.testing.assert_allclose(weights[0][k], weights[1][k], rtol=1e-10, atol=1e-12, err_msg=k)
    # the regularized run logs data loss + penalty
    assert all(a > b for a, b in zip(histories[0]["loss"], histories[1]["loss"]))


@pytest.mark.parametrize("make", [lambda: L2(0.4), lambda: L1(0.3), lambda: ElasticNet(0.2, 0.6),
                                  lambda: L1(0.3, include_bias=True)])
def test_penalty_gradient_matches_finite_differences(backend, make):
    reg = make()
    W = backend.asarray(away_from(np.random.default_rng(3).standard_normal((4, 6)), margin=1e-2))
    check_loss_gradient(lambda Z, _: (reg.penalty(Z), reg.gradient(Z)), W, None)


def test_l1_subgradient_is_zero_at_zero(backend):
    net = make_net(backend)
    W = np.array([[0.0, 1.5, -2.0, 0.0, 0.25]] * 4)
    net.layers[0].params["W"] = backend.asarray(W)
    set_grads(net, backend, scale=0.0)
    penalty = L1(0.5)(net)
    W2 = B.to_numpy(net.layers[2].params["W"])
    assert B.to_float(penalty) == pytest.approx(0.5 * (np.abs(W).sum() + np.abs(W2).sum()), rel=1e-12)
    g = grads(net)
    np.testing.assert_array_equal(g["layers.0.W"], 0.5 * np.sign(W))
    assert np.all(g["layers.0.W"][:, [0, 3]] == 0.0)
    np.testing.assert_array_equal(g["layers.0.b"], 0.0)


def test_elastic_net_is_l1_plus_l2(backend):
    nets = [make_net(backend) for _ in range(2)]
    for net in nets:
        set_grads(net, backend)
    p_en = ElasticNet(0.2, 0.6, include_bias=True)(nets[0])
    p_sum = L1(0.2, include_bias=True)(nets[1]) + L2(0.6, include_bias=True)(nets[1])
    assert B.to_float(p_en) == pytest.approx(B.to_float(p_sum), rel=1e-12)
    g_en, g_sum = grads(nets[0]), grads(nets[1])
    for k in g_en:
        np.testing.assert_allclose(g_en[k], g_sum[k], rtol=1e-12)


def test_regularizer_after_lazy_zero_grad(backend):
    """Right after zero_grad (no backprop yet) a layer may hold stale gradient buffers that its
    next backprop would overwrite; the regularizer must add to true zeros."""
    net = make_net(backend)
    set_grads(net, backend, scale=3.0)
    net.zero_grad()
    L2(0.5, include_bias=True)(net)
    P, g = params(net), grads(net)
    for k in P:
        np.testing.assert_allclose(g[k], 0.5 * P[k], rtol=1e-12, err_msg=k)


def test_regularizer_covers_more_modules(backend):
    net, other = make_net(backend), make_net(backend, seed=5)
    set_grads(net, backend, scale=0.0)
    set_grads(other, backend, scale=0.0)
    penalty = L2(1.0)(net, other)
    both = L2(1.0)(make_net(backend)) + L2(1.0)(make_net(backend, seed=5))
    assert B.to_float(penalty) == pytest.approx(B.to_float(both), rel=1e-12)
    np.testing.assert_allclose(grads(other)["layers.2.W"], params(other)["layers.2.W"], rtol=1e-12)


def test_regularizer_on_net_without_weights(backend):
    net = Sequential(Tanh())
    assert L2(0.1)(net) == 0.0


# -- max-norm --------------------------------------------------------------------------------

def test_max_norm_projects_only_long_rows(backend):
    net = make_net(backend)
    rng = np.random.default_rng(1)
    W = rng.standard_normal((4, 5))
    W[0] *= 5.0 / np.linalg.norm(W[0])          # too long
    W[1] *= 2.0 / np.linalg.norm(W[1])          # inside
    W[2] *= 30.0 / np.linalg.norm(W[2])         # far too long
    W[3] = 0.0                                  # the zero vector stays zero (no division by 0)
    net.layers[0].params["W"] = backend.asarray(W)
    before = params(net)
    MaxNorm(3.0)(net)
    after = params(net)
    got = after["layers.0.W"]
    norms = np.linalg.norm(got, axis=1)
    assert np.all(norms <= 3.0 * (1 + 1e-12))
    np.testing.assert_allclose(norms[[0, 2]], 3.0, rtol=1e-12)
    np.testing.assert_allclose(got[[0, 2]], W[[0, 2]] * (3.0 / np.linalg.norm(W[[0, 2]], axis=1))[:, None], rtol=1e-12)
    np.testing.assert_array_equal(got[[1, 3]], W[[1, 3]])          # untouched rows bit for bit
    for k in ("layers.0.b", "layers.2.b"):
        np.testing.assert_array_equal(after[k], before[k])
    torch = pytest.importorskip("torch")
    ref = torch.renorm(torch.from_numpy(W), p=2, dim=0, maxnorm=3.0).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-12)


def test_max_norm_in_trainer_keeps_rows_bounded(backend):
    X, y = _regression()
    net = make_net(backend)
    c = 0.5
    t = Trainer(net, loss=MSE(), optimizer=SGD(lr=0.5), batch_size=8, epochs=3, seed=0, progress=False,
                constraints=[MaxNorm(c)])
    t.fit(backend.asarray(X * 10), backend.asarray(y * 10))
    for k, v in params(net).items():
        if k.endswith(".W"):
            norms = np.linalg.norm(v, axis=1)
            assert np.all(norms <= c * (1 + 1e-12)), k
            assert np.any(norms > 0.99 * c), k       # the constraint was active


# -- clipping --------------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm,norm_type", [(1.0, 2.0), (100.0, 2.0), (2.0, 1.0), (0.5, float("inf")),
                                                (1.5, 3.0)])
def test_clip_grad_norm_vs_torch(backend, max_norm, norm_type):
    torch = pytest.importorskip("torch")
    net = make_net(backend)
    host = set_grads(net, backend, scale=2.0)
    total = clip_grad_norm(net, max_norm, norm_type)
    tensors = [torch.zeros(h.shape, dtype=torch.float64, requires_grad=True) for h in host.values()]
    for p, h in zip(tensors, host.values()):
        p.grad = torch.from_numpy(h.copy())
    expected_total = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type)
    assert B.to_float(total) == pytest.approx(float(expected_total), rel=1e-10)
    got = grads(net)
    for (k, h), p in zip(host.items(), tensors):
        np.testing.assert_allclose(got[k], p.grad.numpy(), rtol=1e-10, atol=1e-14, err_msg=k)
    if norm_type == float("inf"):
        clipped_norm = max(np.abs(g).max() for g in got.values())
    else:
        clipped_norm = sum(np.sum(np.abs(g) ** norm_type) for g in got.values()) ** (1 / norm_type)
    if max_norm < B.to_float(total):
        assert clipped_norm == pytest.approx(max_norm, rel=1e-5)      # really rescaled, to max_norm
    else:
        for k, h in host.items():
            np.testing.assert_allclose(got[k], h, rtol=1e-6)           # left (almost) alone


def test_clip_grad_norm_over_several_modules(backend):
    torch = pytest.importorskip("torch")
    net, other = make_net(backend), make_net(backend, seed=5)
    host = list(set_grads(net, backend, seed=1).values()) + list(set_grads(other, backend, seed=2).values())
    ClipGradNorm(1.0)(net, other)
    tensors = [torch.zeros(h.shape, dtype=torch.float64, requires_grad=True) for h in host]
    for p, h in zip(tensors, host):
        p.grad = torch.from_numpy(h.copy())
    torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    got = list(grads(net).values()) + list(grads(other).values())
    for g, p in zip(got, tensors):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-10)


def test_clip_grad_value_vs_torch(backend):
    torch = pytest.importorskip("torch")
    net = make_net(backend)
    host = set_grads(net, backend, scale=2.0)
    ClipGradValue(0.8)(net)
    got = grads(net)
    for k, h in host.items():
        t = torch.from_numpy(h.copy()).requires_grad_(False)
        p = torch.zeros_like(t, requires_grad=True)
        p.grad = t
        torch.nn.utils.clip_grad_value_([p], 0.8)
        np.testing.assert_array_equal(got[k], p.grad.numpy())
        assert np.abs(got[k]).max() <= 0.8 and np.abs(h).max() > 0.8


def test_clipping_in_trainer_bounds_the_step(backend):
    """With clip=ClipGradNorm(m) and plain SGD, one step moves the parameters by at most lr * m."""
    X, y = _regression(n=8)
    net = make_net(backend)
    net.fresh = False               # keep these weights (fit() would redraw a fresh net's)
    before = params(net)
    clip = ClipGradNorm(0.01)
    t = Trainer(net, loss=MSE(), optimizer=SGD(lr=1.0), batch_size=8, epochs=1, seed=0, progress=False, clip=clip)
    t.fit(backend.asarray(X * 100), backend.asarray(y))
    moved = np.sqrt(sum(np.sum((v - before[k]) ** 2) for k, v in params(net).items()))
    assert B.to_float(clip.last_norm) > 0.01
    assert moved == pytest.approx(0.01, rel=1e-4)


def test_clip_value_function_form(backend):
    net = make_net(backend)
    set_grads(net, backend, scale=5.0)
    clip_grad_value(net, 1.0)
    assert all(np.abs(g).max() <= 1.0 for g in grads(net).values())


@pytest.mark.parametrize("make", [lambda: L2(-1), lambda: L1(float("nan")), lambda: ElasticNet(0.1, -0.1),
                                  lambda: MaxNorm(0), lambda: MaxNorm(-3), lambda: ClipGradNorm(0),
                                  lambda: ClipGradNorm(1.0, norm_type=0), lambda: ClipGradValue(-1)])
def test_bad_arguments_raise(make):
    with pytest.raises(ValueError):
        make()
