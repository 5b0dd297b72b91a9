"""The activation catalogue (rectifiers, smooth activations, Sigmoid/Tanh), Maxout and the
perceptron, on every backend of the matrix."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn import random as xrandom
from xpdnn.layers.activations import Sigmoid, Tanh
from xpdnn.layers.base import layer_from_config, layer_to_config
from xpdnn.layers.maxout import Maxout
from xpdnn.layers.rectifiers import ELU, LeakyReLU, PReLU, RReLU
from xpdnn.layers.smooth import GELU, SiLU, Softplus, erf, erfc, normal_cdf
from xpdnn.perceptron import Perceptron
from xpdnn.random import Stream
from xpdnn.testing import away_from, check_layer_gradients

ELEMENTWISE = {
    "leaky_relu": lambda: LeakyReLU(0.1, dtype="float64"),
    "prelu_shared": lambda: PReLU(dtype="float64"),
    "prelu_per_unit": lambda: PReLU(5, dtype="float64"),
    "rrelu": lambda: RReLU(dtype="float64"),
    "elu": lambda: ELU(dtype="float64"),
    "elu_0.5": lambda: ELU(0.5, dtype="float64"),
    "softplus": lambda: Softplus(dtype="float64"),
    "softplus_beta2": lambda: Softplus(beta=2.0, dtype="float64"),
    "gelu": lambda: GELU(dtype="float64"),
    "gelu_tanh": lambda: GELU("tanh", dtype="float64"),
    "silu": lambda: SiLU(dtype="float64"),
    "sigmoid": lambda: Sigmoid(dtype="float64"),
    "tanh": lambda: Tanh(dtype="float64"),
}


def _inputs(shape=(4, 5), scale=2.0, seed=0):
    rng = np.random.default_rng(seed)
    return away_from(rng.standard_normal(shape) * scale, kinks=(0.0,), margin=1e-3, rng=rng)


def _set_slopes(layer, host):
    layer.params["alpha"] = np.asarray(host, dtype=layer.dtype)
    layer._reset_grads()


def _maxout_without_ties(n_in=5, n_out=4, pieces=3, N=4, margin=1e-2):
    """A float64 Maxout and an input (host) whose winning piece leads the runner-up by
    ``margin`` everywhere, so finite differences never switch pieces."""
    layer = Maxout(n_in, n_out, pieces, init="glorot", seed=3, dtype="float64")
    layer.params["b"] = np.random.default_rng(9).standard_normal((pieces, n_out)) * 0.1
    layer._reset_grads()
    rng = np.random.default_rng(1)
    for _ in range(200):
        X = rng.standard_normal((N, n_in))
        Z = np.einsum("ni,koi->nko", X, layer.params["W"]) + layer.params["b"]
        top2 = np.sort(Z, axis=1)[:, -2:, :]
        if np.min(top2[:, 1, :] - top2[:, 0, :]) > margin:
            return layer, X
    raise RuntimeError("no tie-free input found")


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_gradients_of_elementwise_activations(backend, name):
    layer = ELEMENTWISE[name]()
    if name == "prelu_shared":
        _set_slopes(layer, [0.3])
    if name == "prelu_per_unit":
        _set_slopes(layer, [0.1, -0.2, 0.25, 0.5, 1.5])
    X = backend.asarray(_inputs())
    check_layer_gradients(layer, X, train=(name == "rrelu"), seed=11)


def test_gradients_of_rrelu_in_evaluation(backend):
    check_layer_gradients(RReLU(0.1, 0.3, dtype="float64"), backend.asarray(_inputs()), train=False)


def test_gradients_of_maxout(backend):
    layer, X = _maxout_without_ties()
    check_layer_gradients(layer, backend.asarray(X))


def test_prelu_parameter_gradient_is_not_trivial(backend):
    # alpha's gradient is the sum of X * dY over the negative elements, per unit or shared
    X = _inputs(seed=2)
    G = np.random.default_rng(3).standard_normal(X.shape)
    for layer, expected in ((PReLU(dtype="float64"), [np.sum(np.minimum(X, 0) * G)]),
                            (PReLU(5, dtype="float64"), np.sum(np.minimum(X, 0) * G, axis=0))):
        Xb = backend.asarray(X)
        layer.ensure_like(Xb)
        _, backprop = layer.forward(Xb, train=True)
        backprop(backend.asarray(G))
        np.testing.assert_allclose(backend.numpy(layer.grads["alpha"]), expected, rtol=1e-12)


def _torch_reference(fn, X, G):
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    y = fn(x)
    y.backward(torch.tensor(G, dtype=torch.float64))
    return y.detach().numpy(), x.grad.numpy()


def _ours(layer, backend, X, G, train=False):
    Xb = backend.asarray(X)
    layer.ensure_like(Xb)
    Y, backprop = layer.forward(Xb, train=train)
    return backend.numpy(Y), backend.numpy(backprop(backend.asarray(G)))


TORCH_TWINS = {
    "leaky_relu": (lambda: LeakyReLU(0.1, dtype="float64"), lambda F, t, x: F.leaky_relu(x, 0.1)),
    "leaky_relu_default": (lambda: LeakyReLU(dtype="float64"), lambda F, t, x: F.leaky_relu(x)),
    "elu": (lambda: ELU(dtype="float64"), lambda F, t, x: F.elu(x)),
    "elu_0.7": (lambda: ELU(0.7, dtype="float64"), lambda F, t, x: F.elu(x, 0.7)),
    "softplus": (lambda: Softplus(dtype="float64"), lambda F, t, x: F.softplus(x)),
    "softplus_beta2": (lambda: Softplus(2.0, dtype="float64"), lambda F, t, x: F.softplus(x, beta=2.0)),
    "gelu": (lambda: GELU(dtype="float64"), lambda F, t, x: F.gelu(x)),
    "gelu_tanh": (lambda: GELU("tanh", dtype="float64"), lambda F, t, x: F.gelu(x, approximate="tanh")),
    "silu": (lambda: SiLU(dtype="float64"), lambda F, t, x: F.silu(x)),
    "sigmoid": (lambda: Sigmoid(dtype="float64"), lambda F, t, x: t.sigmoid(x)),
    "tanh": (lambda: Tanh(dtype="float64"), lambda F, t, x: t.tanh(x)),
    "rrelu_eval": (lambda: RReLU(0.1, 0.4, dtype="float64"),
                   lambda F, t, x: F.rrelu(x, 0.1, 0.4, training=False)),
}


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
def test_matches_torch(backend, name):
    torch = pytest.importorskip("torch")
    make, ref = TORCH_TWINS[name]
    # |beta X| stays below torch's softplus threshold (20), where torch switches to Y = X
    X = _inputs((6, 7), scale=3.0, seed=4)
    G = np.random.default_rng(5).standard_normal(X.shape)
    Y_ref, dX_ref = _torch_reference(lambda x: ref(torch.nn.functional, torch, x), X, G)
    Y, dX = _ours(make(), backend, X, G)
    # torch's 1 + erf / 1 + tanh lose absolute accuracy ~1e-16 * |X| in the negative tail
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dX, dX_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n_units", [None, 7])
def test_prelu_matches_torch(backend, n_units):
    torch = pytest.importorskip("torch")
    X = _inputs((6, 7), seed=6)
    G = np.random.default_rng(7).standard_normal(X.shape)
    alpha = np.random.default_rng(8).uniform(-0.5, 0.9, (n_units or 1,))
    w = torch.tensor(alpha, requires_grad=True)
    Y_ref, dX_ref = _torch_reference(lambda x: torch.nn.functional.prelu(x, w), X, G)
    layer = PReLU(n_units, dtype="float64")
    _set_slopes(layer, alpha)
    Y, dX = _ours(layer, backend, X, G, train=True)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-13)
    np.testing.assert_allclose(dX, dX_ref, rtol=1e-13)
    np.testing.assert_allclose(backend.numpy(layer.grads["alpha"]), w.grad.numpy(), rtol=1e-12)


def test_maxout_matches_torch(backend):
    torch = pytest.importorskip("torch")
    layer, X = _maxout_without_ties(n_in=6, n_out=5, pieces=4, N=7)
    k, n_out, n_in = layer.params["W"].shape
    G = np.random.default_rng(2).standard_normal((X.shape[0], n_out))
    W = torch.tensor(layer.params["W"], requires_grad=True)
    b = torch.tensor(layer.params["b"], requires_grad=True)

    def reference(x):
        Z = (x @ W.reshape(k * n_out, n_in).T).reshape(x.shape[0], k, n_out) + b
        return Z.max(dim=1).values

    Y_ref, dX_ref = _torch_reference(reference, X, G)
    Y, dX = _ours(layer, backend, X, G, train=True)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-13)
    np.testing.assert_allclose(dX, dX_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(layer.grads["W"]), W.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(backend.numpy(layer.grads["b"]), b.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_maxout_routes_gradient_to_the_winner_only(backend):
    layer, X = _maxout_without_ties()
    Xb = backend.asarray(X)
    layer.ensure_like(Xb)
    Y, backprop = layer.forward(Xb)
    Z = np.einsum("ni,koi->nko", X, layer.params["W"] if isinstance(layer.params["W"], np.ndarray)
                  else backend.numpy(layer.params["W"])) + backend.numpy(layer.params["b"])
    np.testing.assert_allclose(backend.numpy(Y), Z.max(axis=1), rtol=1e-13)
    backprop(backend.asarray(np.ones((X.shape[0], layer.n_out))))
    db = backend.numpy(layer.grads["b"])
    wins = np.stack([(Z.argmax(axis=1) == p).sum(axis=0) for p in range(layer.pieces)])
    np.testing.assert_array_equal(db, wins)
    assert db.sum() == X.shape[0] * layer.n_out


def test_maxout_ties_route_to_one_piece(backend):
    layer = Maxout(3, 2, pieces=3, dtype="float64")
    layer.params["W"] = np.zeros((3, 2, 3))            # every piece ties at 0
    layer._reset_grads()
    X = backend.asarray(np.ones((4, 3)))
    layer.ensure_like(X)
    _, backprop = layer.forward(X, train=True)
    backprop(backend.asarray(np.ones((4, 2))))
    np.testing.assert_array_equal(backend.numpy(layer.grads["b"]), [[4, 4], [0, 0], [0, 0]])


def test_maxout_layer_contract():
    layer = Maxout(6, 4, pieces=3, init="glorot", seed=5)
    assert layer.params["W"].shape == (3, 4, 6) and layer.params["W"].dtype == np.float32
    assert layer.params["b"].shape == (3, 4)
    assert layer.decay == ("W",) and layer.n_neurons == 4 and layer.output_size(6) == 4
    assert layer.n_params() == 3 * 4 * 6 + 3 * 4
    limit = math.sqrt(6.0 / (6 + 4))                  # Glorot per piece: fan-out is n_out
    assert 0.9 * limit < np.abs(layer.params["W"]).max() <= limit
    again = layer_from_config(layer_to_config(layer))
    np.testing.assert_array_equal(again.params["W"], layer.params["W"])
    assert not np.array_equal(Maxout(6, 4, 3, seed=6).params["W"], layer.params["W"])
    he = Maxout(200, 50, pieces=2, seed=0).params["W"]
    assert abs(he.std() - math.sqrt(2.0 / 200)) < 0.01
    with pytest.raises(ValueError, match="shape"):
        layer(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="piece"):
        Maxout(6, 4, pieces=0)


def test_prelu_contract():
    shared, per_unit = PReLU(), PReLU(n_units=3)
    assert shared.params["alpha"].shape == (1,) and per_unit.params["alpha"].shape == (3,)
    np.testing.assert_array_equal(per_unit.params["alpha"], [0.25, 0.25, 0.25])
    assert "alpha" not in PReLU.decay and shared.n_params() == 1
    assert layer_from_config(layer_to_config(per_unit)).get_config() == per_unit.get_config()
    with pytest.raises(ValueError, match="3 units"):
        per_unit(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="n_units"):
        PReLU(n_units=0)
    Y = shared(np.array([[-2.0, 3.0]], dtype=np.float32))
    np.testing.assert_allclose(Y, [[-0.5, 3.0]])


def test_prelu_slopes_on_unit_axis_of_higher_rank_input(backend):
    layer = PReLU(n_units=2, dtype="float64")
    _set_slopes(layer, [0.5, 2.0])
    X = backend.asarray(-np.ones((3, 2, 4)))
    layer.ensure_like(X)
    Y = backend.numpy(layer(X))
    np.testing.assert_array_equal(Y[:, 0, :], -0.5)
    np.testing.assert_array_equal(Y[:, 1, :], -2.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rrelu_training_slopes(backend, dtype):
    lower, upper = 0.1, 0.3
    layer = RReLU(lower, upper, dtype=dtype)
    shape = (50, 40)
    X = backend.asarray(-np.ones(shape, dtype=dtype))
    stream = Stream(seed=7, counter=3)
    slopes = -backend.numpy(layer.forward(X, train=True, rng=stream)[0])
    assert stream.counter == 4
    assert slopes.min() >= lower and slopes.max() <= upper
    assert slopes.min() < lower + 0.01 and slopes.max() > upper - 0.01
    assert abs(slopes.mean() - 0.2) < 0.01
    expected = (lower + (upper - lower) * xrandom.uniform(7, 3, shape, dtype="float64")).astype(dtype)
    np.testing.assert_array_equal(slopes, expected)
    # the same stream position on NumPy gives bit-identical slopes
    host = RReLU(lower, upper, dtype=dtype).forward(-np.ones(shape, dtype=dtype), train=True,
                                                    rng=Stream(seed=7, counter=3))[0]
    np.testing.assert_array_equal(slopes, -host)
    other = -backend.numpy(layer.forward(X, train=True, rng=Stream(seed=8, counter=3))[0])
    assert not np.array_equal(other, slopes)


def test_rrelu_positive_side_eval_and_own_stream(backend):
    layer = RReLU(0.1, 0.3, seed=5, dtype="float64")
    X = backend.asarray(np.array([[-2.0, 3.0, -1.0]]))
    np.testing.assert_allclose(backend.numpy(layer(X)), [[-0.4, 3.0, -0.2]], rtol=1e-15)
    Y1 = backend.numpy(layer.forward(X, train=True)[0])
    Y2 = backend.numpy(layer.forward(X, train=True)[0])
    assert Y1[0, 1] == 3.0 and not np.array_equal(Y1, Y2)          # the own stream advances
    first = RReLU(0.1, 0.3, seed=5, dtype="float64").forward(X, train=True)[0]
    np.testing.assert_array_equal(backend.numpy(first), Y1)        # ... from the seed


def test_rrelu_backprop_uses_its_own_call_slopes(backend):
    layer = RReLU(dtype="float64")
    X = backend.asarray(-np.ones((3, 4)))
    stream = Stream(1)
    Y1, bp1 = layer.forward(X, train=True, rng=stream)
    Y2, bp2 = layer.forward(X, train=True, rng=stream)
    ones = backend.asarray(np.ones((3, 4)))
    np.testing.assert_array_equal(backend.numpy(bp1(ones)), -backend.numpy(Y1))
    np.testing.assert_array_equal(backend.numpy(bp2(ones)), -backend.numpy(Y2))
    assert not np.array_equal(backend.numpy(Y1), backend.numpy(Y2))


def test_tanh_is_a_rescaled_sigmoid(backend):
    x = np.concatenate([np.linspace(-20, 20, 2001), [-1e4, 1e4, -800.0, 800.0]])
    X = backend.asarray(x)
    lhs = backend.numpy(Tanh()(X))
    rhs = 2.0 * backend.numpy(Sigmoid()(2.0 * X)) - 1.0
    np.testing.assert_allclose(lhs, rhs, rtol=backend.libm_rtol(1e-14), atol=1e-15)
    np.testing.assert_allclose(lhs, np.tanh(x), rtol=backend.libm_rtol(1e-15), atol=1e-16)


def test_softplus_derivative_is_the_sigmoid(backend):
    x = np.concatenate([np.linspace(-30, 30, 601), [-700.0, 700.0]])
    h = 1e-5
    plus = backend.numpy(Softplus(dtype="float64")(backend.asarray(x + h)))
    minus = backend.numpy(Softplus(dtype="float64")(backend.asarray(x - h)))
    sig = backend.numpy(Sigmoid(dtype="float64")(backend.asarray(x)))
    np.testing.assert_allclose((plus - minus) / (2 * h), sig, rtol=1e-7, atol=1e-10)
    exact = np.array([max(v, 0.0) + math.log1p(math.exp(-abs(v))) for v in x])
    np.testing.assert_allclose(backend.numpy(Softplus(dtype="float64")(backend.asarray(x))), exact,
                               rtol=backend.libm_rtol(1e-15))


ALL_LAYERS = {**ELEMENTWISE, "rrelu_eval": lambda: RReLU(dtype="float64")}
LIMITS = {   # (Y at -1e4, Y at +1e4)
    "leaky_relu": (-1e3, 1e4), "prelu_shared": (-2.5e3, 1e4), "prelu_per_unit": (-2.5e3, 1e4),
    "rrelu": (None, 1e4), "rrelu_eval": (-1e4 * (1 / 8 + 1 / 3) / 2, 1e4), "elu": (-1.0, 1e4),
    "elu_0.5": (-0.5, 1e4), "softplus": (0.0, 1e4), "softplus_beta2": (0.0, 1e4), "gelu": (0.0, 1e4),
    "gelu_tanh": (0.0, 1e4), "silu": (0.0, 1e4), "sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ALL_LAYERS))
def test_extremes_are_finite_and_warning_free(backend, name, dtype):
    layer = ALL_LAYERS[name]().astype(dtype)
    X = backend.asarray(np.tile(np.array([-1e4, 1e4, -1e30, 1e30, 0.0], dtype=dtype), (3, 1)))
    layer.ensure_like(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Y, backprop = layer.forward(X, train=(name != "rrelu_eval"), rng=Stream(0))
        dX = backend.numpy(backprop(backend.asarray(np.ones((3, 5), dtype=dtype))))
    Y = backend.numpy(Y)
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(dX)), (Y, dX)
    low, high = LIMITS[name]
    if low is None:      # RReLU in training: a random slope in [1/8, 1/3]
        assert np.all(Y[:, 0] >= -1e4 / 3 * (1 + 1e-6)) and np.all(Y[:, 0] <= -1e4 / 8 * (1 - 1e-6))
    else:
        np.testing.assert_allclose(Y[:, 0], low, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(Y[:, 1], high, rtol=1e-6)


def test_erf_and_erfc_match_the_standard_library(backend):
    x = np.concatenate([np.linspace(-27.0, 27.0, 5401), np.geomspace(1e-12, 1.0, 50),
                        -np.geomspace(1e-12, 1.0, 50), [0.0]])
    X = backend.asarray(x)
    for ours, ref in ((erf, math.erf), (erfc, math.erfc)):
        got, want = backend.numpy(ours(X)), np.array([ref(v) for v in x])
        tiny = np.abs(want) < 1e-300
        np.testing.assert_allclose(got[~tiny], want[~tiny], rtol=backend.libm_rtol(4e-15), atol=0)
        assert np.all(np.abs(got[tiny]) < 1e-300)
    s = 1.0 / math.sqrt(2.0)
    cdf = np.array([0.5 * math.erfc(-v * s) if v < 0 else 1.0 - 0.5 * math.erfc(v * s) for v in x])
    np.testing.assert_allclose(backend.numpy(normal_cdf(X)), cdf, rtol=backend.libm_rtol(4e-15), atol=1e-300)


def test_gelu_is_accurate_in_the_negative_tail(backend):
    # exact GELU from the standard library's erfc: X * erfc(-X / sqrt 2) / 2
    x = -np.linspace(0.5, 37.0, 300)
    want = np.array([v * 0.5 * math.erfc(-v * (1.0 / math.sqrt(2.0))) for v in x])
    got = backend.numpy(GELU(dtype="float64")(backend.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=backend.libm_rtol(4e-15), atol=1e-300)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="approximate"):
        GELU("exact")
    with pytest.raises(ValueError, match="lower"):
        RReLU(0.5, 0.1)
    with pytest.raises(ValueError, match="beta"):
        Softplus(beta=0.0)
    with pytest.raises(ValueError, match="alpha"):
        ELU(float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        LeakyReLU(float("inf"))


def test_configs_rebuild_every_activation():
    for make in ALL_LAYERS.values():
        layer = make()
        again = layer_from_config(layer_to_config(layer))
        assert type(again) is type(layer) and again.get_config() == layer.get_config()


def _separable(n=80, d=3, margin=0.1, seed=0):
    rng = np.random.default_rng(seed)
    w_true, b_true = rng.standard_normal(d), 0.3
    X = rng.uniform(-1, 1, (4 * n, d))
    score = (X @ w_true + b_true) / np.linalg.norm(np.append(w_true, b_true))
    keep = np.abs(score) > margin
    X, score = X[keep][:n], score[keep][:n]
    return X, np.where(score > 0, 1, -1), w_true, b_true


def test_perceptron_converges_on_separable_data(backend):
    X, y, w_true, b_true = _separable()
    model = Perceptron(3).fit(backend.asarray(X), backend.asarray(y), epochs=200)
    assert model.converged_ and model.mistakes_[-1] == 0 and model.mistakes_[0] > 0
    pred = model.predict(backend.asarray(X))
    assert B.namespace(pred) is backend.xp
    np.testing.assert_array_equal(backend.numpy(pred), y)
    assert model.score(backend.asarray(X), y) == 1.0
    # Novikoff: at most (R / gamma)^2 mistakes for the augmented points (x, 1)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    u = np.append(w_true, b_true) / np.linalg.norm(np.append(w_true, b_true))
    gamma, R = np.min(y * (Xa @ u)), np.max(np.linalg.norm(Xa, axis=1))
    assert sum(model.mistakes_) <= (R / gamma) ** 2


def test_perceptron_follows_the_classic_rule(backend):
    X = np.random.default_rng(3).integers(-3, 4, (30, 4)).astype(np.float64)
    y = np.where(X @ np.array([1.0, -2.0, 0.5, 1.0]) + 0.5 > 0, 1, -1)
    w, b, mistakes = np.zeros(4), 0.0, 0
    for x_i, y_i in zip(X, y):          # one epoch, lr = 0.5, by hand
        if y_i * (x_i @ w + b) <= 0:
            w, b, mistakes = w + 0.5 * y_i * x_i, b + 0.5 * y_i, mistakes + 1
    model = Perceptron(4, lr=0.5).fit(backend.asarray(X), backend.asarray(y), epochs=1)
    np.testing.assert_array_equal(backend.numpy(model.w), w)
    assert float(backend.numpy(model.b)) == b and model.mistakes_ == [mistakes]


def test_perceptron_accepts_zero_one_labels(backend):
    X, y, _, _ = _separable(seed=1)
    signed = Perceptron(3).fit(backend.asarray(X), backend.asarray(y), epochs=100)
    binary = Perceptron(3).fit(backend.asarray(X), backend.asarray((y + 1) // 2), epochs=100)
    assert binary.mistakes_ == signed.mistakes_
    np.testing.assert_array_equal(backend.numpy(binary.w), backend.numpy(signed.w))
    np.testing.assert_array_equal(backend.numpy(binary.predict(backend.asarray(X))), (y + 1) // 2)


def test_perceptron_never_converges_on_xor(backend):
    X = backend.asarray(np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    y = backend.asarray(np.array([-1, -1, 1, 1]))
    model = Perceptron(2).fit(X, y, epochs=30)
    assert not model.converged_ and len(model.mistakes_) == 30 and min(model.mistakes_) > 0
    assert model.score(X, y) < 1.0


def test_perceptron_rejects_bad_input():
    model = Perceptron(2)
    with pytest.raises(ValueError, match="labels"):
        model.fit(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        model.fit(np.zeros((3, 3)), np.array([1, -1, 1]))
    with pytest.raises(ValueError, match="shape"):
        model.fit(np.zeros((3, 2)), np.array([1, -1]))
    with pytest.raises(ValueError, match="NaN"):
        model.fit(np.array([[0.0, np.nan]]), np.array([1]))
    with pytest.raises(ValueError, match="learning rate"):
        Perceptron(2, lr=0.0)


@pytest.mark.parametrize("make", [lambda: PReLU(5, dtype="float64"), lambda: _maxout_without_ties()[0]])
def test_parameter_gradients_accumulate_after_zero_grad(backend, make):
    layer = make()
    X = backend.asarray(_inputs())
    layer.ensure_like(X)
    G_host = np.random.default_rng(4).standard_normal(tuple(layer.forward(X)[0].shape))
    layer.zero_grad()
    layer.forward(X, train=True)[1](backend.asarray(G_host))
    once = {k: backend.numpy(g).copy() for k, g in layer.grads.items()}
    assert all(np.any(g != 0) for g in once.values())
    layer.forward(X, train=True)[1](backend.asarray(G_host))
    for k, g in layer.grads.items():
        np.testing.assert_allclose(backend.numpy(g), 2 * once[k], rtol=1e-14)
    layer.zero_grad()
    layer.forward(X, train=True)[1](backend.asarray(G_host))
    for k, g in layer.grads.items():
        np.testing.assert_allclose(backend.numpy(g), once[k], rtol=1e-14)


def test_saved_network_with_every_new_layer_loads_back(tmp_path):
    from xpdnn.io import load, save
    from xpdnn.layers.linear import Linear
    from xpdnn.layers.sequential import Sequential

    net = Sequential(Linear(4, 6), PReLU(6), Maxout(6, 5, pieces=3), RReLU(0.1, 0.2, seed=3),
                     GELU("tanh"), Softplus(2.0), SiLU(), ELU(0.5), LeakyReLU(0.2), GELU(), Linear(5, 3))
    net.layers[1].params["alpha"][:] = np.linspace(-0.2, 0.6, 6)
    save(net, tmp_path / "net.xpd")
    back = load(tmp_path / "net.xpd")
    assert [layer_to_config(a) for a in back.layers] == [layer_to_config(a) for a in net.layers]
    X = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    np.testing.assert_array_equal(back.predict_proba(X), net.predict_proba(X))
    np.testing.assert_array_equal(back.layers[1].params["alpha"], net.layers[1].params["alpha"])
