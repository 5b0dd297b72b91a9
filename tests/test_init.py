"""Weight initializers: shapes, variance laws, sparse/orthogonal structure, and why zeros fail."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn import init
from xpdnn.layers.activations import Tanh
from xpdnn.layers.linear import Linear
from xpdnn.layers.sequential import Sequential
from xpdnn.losses.regression import MSE
from xpdnn.optim.sgd import SGD
from xpdnn.trainer import Trainer

N_IN, N_OUT = 800, 400          # 320,000 weights: sample variances within ~0.5% of the law

# initializer, Var(w) as a function of (n_in, n_out), half-width of the support for uniform ones
LAWS = {
    "lecun_normal": (init.lecun_normal, lambda i, o: 1 / i, None),
    "lecun_uniform": (init.lecun_uniform, lambda i, o: 1 / i, lambda i, o: np.sqrt(3 / i)),
    "glorot_normal": (init.glorot_normal, lambda i, o: 2 / (i + o), None),
    "glorot_uniform": (init.glorot_uniform, lambda i, o: 2 / (i + o), lambda i, o: np.sqrt(6 / (i + o))),
    "he_normal": (init.he_normal, lambda i, o: 2 / i, None),
    "he_uniform": (init.he_uniform, lambda i, o: 2 / i, lambda i, o: np.sqrt(6 / i)),
    "normal": (init.normal, lambda i, o: 0.01 ** 2, None),
    "uniform": (init.uniform, lambda i, o: 0.05 ** 2 / 3, lambda i, o: 0.05),
    "orthogonal": (init.orthogonal, lambda i, o: min(i, o) / (i * o), None),
}


@pytest.mark.parametrize("name", sorted(LAWS))
def test_variance_law(name):
    f, var, limit = LAWS[name]
    W = f(np.random.default_rng(0), N_IN, N_OUT)
    assert W.shape == (N_OUT, N_IN) and W.dtype == np.float64
    expected = var(N_IN, N_OUT)
    assert W.var() == pytest.approx(expected, rel=0.02)
    assert abs(W.mean()) < 0.02 * np.sqrt(expected)
    # the laws differ by far more than the tolerance, so a swapped law cannot pass
    others = {v(N_IN, N_OUT) for k, (_, v, _) in LAWS.items() if k != name}
    assert all(abs(o - expected) > 0.1 * expected for o in others if not np.isclose(o, expected))
    if limit is not None:
        assert np.abs(W).max() <= limit(N_IN, N_OUT)
        assert np.abs(W).max() > 0.99 * limit(N_IN, N_OUT)


@pytest.mark.parametrize("n_in,n_out", [(800, 40), (40, 800)])
def test_variance_laws_follow_fan_in_and_fan_out(n_in, n_out):
    rng = np.random.default_rng(1)
    assert init.he_normal(rng, n_in, n_out).var() == pytest.approx(2 / n_in, rel=0.03)
    assert init.lecun_normal(rng, n_in, n_out).var() == pytest.approx(1 / n_in, rel=0.03)
    assert init.glorot_uniform(rng, n_in, n_out).var() == pytest.approx(2 / (n_in + n_out), rel=0.03)


def test_same_rng_same_weights():
    for name in sorted(set(init.INITIALIZERS) - {"zeros", "zero"}):
        f = init.get(name)
        a = f(np.random.default_rng(7), 30, 20)
        b = f(np.random.default_rng(7), 30, 20)
        c = f(np.random.default_rng(8), 30, 20)
        np.testing.assert_array_equal(a, b)
        assert a.shape == (20, 30) and not np.array_equal(a, c), name


def test_sparse_has_exactly_k_nonzero_incoming_weights():
    W = init.sparse(np.random.default_rng(0), 200, 300)
    assert W.shape == (300, 200)
    assert np.all(np.count_nonzero(W, axis=1) == 10)
    assert len({tuple(np.flatnonzero(row)) for row in W}) > 290        # connections differ per unit
    assert np.std(W[W != 0]) == pytest.approx(0.01, rel=0.05)          # a small Gaussian
    assert np.all(np.count_nonzero(W, axis=0) < 300)
    W5 = functools.partial(init.sparse, k=5, std=1.0)(np.random.default_rng(0), 200, 50)
    assert np.all(np.count_nonzero(W5, axis=1) == 5) and np.std(W5[W5 != 0]) > 0.5
    W_small = init.sparse(np.random.default_rng(0), 4, 6)              # fewer inputs than k: all of them
    assert np.all(np.count_nonzero(W_small, axis=1) == 4)
    with pytest.raises(ValueError, match="k >= 1"):
        init.sparse(np.random.default_rng(0), 4, 6, k=0)


@pytest.mark.parametrize("n_in,n_out", [(50, 20), (20, 50), (30, 30)])
def test_orthogonal(n_in, n_out):
    W = init.orthogonal(np.random.default_rng(0), n_in, n_out)
    assert W.shape == (n_out, n_in)
    if n_out <= n_in:
        np.testing.assert_allclose(W @ W.T, np.eye(n_out), atol=1e-12)     # orthonormal rows
    else:
        np.testing.assert_allclose(W.T @ W, np.eye(n_in), atol=1e-12)      # orthonormal columns
    W2 = init.orthogonal(np.random.default_rng(0), n_in, n_out, gain=2.0)
    np.testing.assert_allclose(W2, 2.0 * W)


def test_zeros_warns():
    with pytest.warns(UserWarning, match="symmetry"):
        W = init.zeros(np.random.default_rng(0), 3, 2)
    np.testing.assert_array_equal(W, np.zeros((2, 3)))
    with pytest.warns(UserWarning, match="symmetry"):
        Linear(4, 3, init="zeros")


def test_constant_and_bias_options():
    np.testing.assert_array_equal(init.constant(0.5)(None, 3, 2), np.full((2, 3), 0.5))
    layer = Linear(3, 4, bias=0.01)
    np.testing.assert_array_equal(layer.params["b"], np.full(4, 0.01, dtype=np.float32))
    np.testing.assert_array_equal(Linear(3, 4).params["b"], np.zeros(4, dtype=np.float32))


def test_lookup():
    assert init.get("he") is init.he_normal and init.get("xavier") is init.glorot_uniform
    assert init.get("kaiming_uniform") is init.he_uniform and init.get("lecun_uniform") is init.lecun_uniform
    custom = functools.partial(init.normal, std=0.5)
    assert init.get(custom) is custom
    with pytest.raises(ValueError, match="unknown initializer 'bogus'"):
        init.get("bogus")
    with pytest.raises(ValueError, match="unknown initializer"):
        init.get(["he"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for name in init.INITIALIZERS:
            layer = Linear(30, 20, init=name, seed=3)
            assert layer.params["W"].shape == (20, 30) and layer.params["W"].dtype == np.float32, name
    assert np.std(Linear(500, 400, init=custom).params["W"]) == pytest.approx(0.5, rel=0.02)


def _regression():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4))
    return X, np.sin(X @ np.array([1.0, -2.0, 0.5, 1.0]))[:, None]


def _train(backend, net):
    X, y = _regression()
    t = Trainer(net, loss=MSE(), optimizer=SGD(lr=0.1), batch_size=16, epochs=15, seed=0, progress=False)
    return t.fit(backend.asarray(X), backend.asarray(y))


def test_zero_init_cannot_break_symmetry(backend):
    """All weights zero (biases 0.01 so the units are not trivially dead): every hidden unit
    computes the same output, gets the same gradient and the same update, so after training
    the units of the zero-initialized layer are still identical."""
    with pytest.warns(UserWarning, match="symmetry"):
        net = Sequential(Linear(4, 8, init="zeros", bias=0.01, dtype="float64"), Tanh(),
                         Linear(8, 1, init="zeros", dtype="float64"))
        _train(backend, net)          # fit() redraws a fresh net from its seed: zeros again
    W1, b1 = (B.to_numpy(net.layers[0].params[k]) for k in ("W", "b"))
    W2 = B.to_numpy(net.layers[2].params["W"])
    assert np.abs(W1).max() > 0 and np.abs(W2).max() > 0              # training did move them
    np.testing.assert_allclose(W1, np.broadcast_to(W1[0], W1.shape), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(b1, b1[0], rtol=1e-12)
    np.testing.assert_allclose(W2, W2[0, 0], rtol=1e-12)


def test_zero_layer_before_a_random_layer_is_desymmetrized(backend):
    """Linear(4,8,init="zeros")-Tanh-Linear(8,1): the units start identical, but the random
    weights of the next layer send each a different gradient, so they do not stay identical
    (why the warning says "unless the layers around it differ")."""
    with pytest.warns(UserWarning, match="symmetry"):
        net = Sequential(Linear(4, 8, init="zeros", dtype="float64"), Tanh(), Linear(8, 1, dtype="float64"))
        _train(backend, net)
    W1 = B.to_numpy(net.layers[0].params["W"])
    assert np.ptp(W1, axis=0).max() > 1e-2


def test_random_init_breaks_symmetry(backend):
    net = Sequential(Linear(4, 8, init="he", dtype="float64"), Tanh(), Linear(8, 1, init="glorot", dtype="float64"))
    hist = _train(backend, net)
    W1 = B.to_numpy(net.layers[0].params["W"])
    assert np.linalg.matrix_rank(W1) == 4
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
