"""Numerics of the activations and the sigmoid losses at the edges: no overflow or underflow
for any parameter value, NaN propagates through every backward pass, gradients at the kink
follow PyTorch, and the logistic gradients keep their relative accuracy for confident right
answers (against an mpmath reference at 50 digits)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import xpdnn as xd
from xpdnn.kernels import cpu
from xpdnn.layers.activations import Identity, ReLU, Sigmoid, Softmax, Tanh, relu_backward
from xpdnn.layers.rectifiers import ELU, LeakyReLU, PReLU, RReLU
from xpdnn.layers.smooth import GELU, SiLU, Softplus
from xpdnn.losses.binary import BinaryCrossEntropy, MultiLabelLogistic
from xpdnn.losses.regression import Huber
from xpdnn.random import Stream

mpmath = pytest.importorskip("mpmath")
mp = mpmath.mp
mp.dps = 50

DTYPES = ["float32", "float64"]
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def _run(layer, backend, X, dY, *, train=False):
    """Forward and backward with every warning an error; host arrays back."""
    Xb = backend.asarray(X)
    layer.ensure_like(Xb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Y, backprop = layer.forward(Xb, train=train, rng=Stream(3))
        dX = backprop(backend.asarray(dY))
    return backend.numpy(Y), backend.numpy(dX)


def _rel_err(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return np.abs(got - want) / np.abs(want)


# ---- 1. no overflow or underflow for any parameter value ------------------------------------

def _mp_softplus(x, beta):
    z = mp.mpf(beta) * mp.mpf(x)
    return mp.log1p(mp.exp(z)) / mp.mpf(beta)


def _mp_sigmoid(z):
    return 1 / (1 + mp.exp(-z))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [2.0, 1e3, 1e30])
def test_softplus_with_large_beta_does_not_overflow(backend, dtype, beta):
    """|X| > max / beta used to give Y = inf (beta X overflowed); Y = max(X, 0) up to a
    vanishing tail, dX = 1 or 0."""
    big = float(np.finfo(dtype).max) / 2
    x = np.array([[big, -big, 1e30 if dtype == "float64" else 1e20, -1e20, 0.0]], dtype=dtype)
    Y, dX = _run(Softplus(beta, dtype=dtype), backend, x, np.ones_like(x))
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(dX)), (Y, dX)
    np.testing.assert_allclose(Y[0, :4], np.maximum(x[0, :4], 0), rtol=EPS[dtype])
    np.testing.assert_allclose(Y[0, 4], math.log(2) / beta, rtol=4 * EPS[dtype])
    np.testing.assert_array_equal(dX[0], [1.0, 0.0, 1.0, 0.0, 0.5])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [1e-6, 0.05, 0.5, 1.0, 3.0, 100.0])
def test_softplus_matches_mpmath_for_every_beta(backend, dtype, beta):
    """Forward and derivative against 50-digit references, across the whole range of beta X,
    including the negative tail where exp(beta X) underflows but exp(beta X) / beta does not
    (beta < 1): that tail used to lose its digits."""
    tiny = float(np.finfo(dtype).tiny)
    # beta X down to where the result itself nears the smallest normal number
    z_low = math.log(tiny * beta) + 2.0
    z = np.concatenate([np.linspace(z_low, z_low + 14.0, 29), np.linspace(z_low + 14.0, -20.0, 40),
                        np.linspace(-20.0, 30.0, 81)])
    x = (z / beta).astype(dtype)
    want_y = np.array([float(_mp_softplus(float(v), beta)) for v in x])
    want_d = np.array([float(_mp_sigmoid(mp.mpf(beta) * mp.mpf(float(v)))) for v in x])
    Y, dX = _run(Softplus(beta, dtype=dtype), backend, x[None, :], np.ones((1, x.size), dtype=dtype))
    # |beta X| amplifies the rounding of beta X: relative condition number about |beta X|
    tol = 8 * EPS[dtype] * (1.0 + np.abs(z))
    assert np.all(_rel_err(Y[0], want_y) <= tol), np.max(_rel_err(Y[0], want_y) / tol)
    normal = want_d >= tiny             # sigmoid(beta X) itself is subnormal further out
    assert np.all(_rel_err(dX[0], want_d)[normal] <= tol[normal]), np.max(_rel_err(dX[0], want_d) / tol)


# ---- 2. NaN propagates; the kink follows PyTorch ---------------------------------------------

NAN_LAYERS = {
    "identity": (lambda: Identity(dtype="float64"), False),
    "relu": (lambda: ReLU(dtype="float64"), False),
    "leaky_relu": (lambda: LeakyReLU(0.1, dtype="float64"), False),
    "leaky_relu_0": (lambda: LeakyReLU(0.0, dtype="float64"), False),
    "prelu_shared": (lambda: PReLU(dtype="float64"), False),
    "prelu_per_unit": (lambda: PReLU(5, dtype="float64"), False),
    "rrelu_train": (lambda: RReLU(dtype="float64"), True),
    "rrelu_eval": (lambda: RReLU(dtype="float64"), False),
    "elu": (lambda: ELU(dtype="float64"), False),
    "softplus": (lambda: Softplus(dtype="float64"), False),
    "softplus_beta3": (lambda: Softplus(3.0, dtype="float64"), False),
    "softplus_beta0.2": (lambda: Softplus(0.2, dtype="float64"), False),
    "gelu": (lambda: GELU(dtype="float64"), False),
    "gelu_tanh": (lambda: GELU("tanh", dtype="float64"), False),
    "silu": (lambda: SiLU(dtype="float64"), False),
    "sigmoid": (lambda: Sigmoid(dtype="float64"), False),
    "tanh": (lambda: Tanh(dtype="float64"), False),
}


def _nan_input():
    x = np.array([[np.nan, -1.5, 0.0, 2.0, -0.25],
                  [0.5, np.nan, -3.0, 0.0, np.nan],
                  [1.0, -2.0, 3.0, -4.0, 0.75]])
    return x


@pytest.mark.parametrize("dy", ["random", "zero"])
@pytest.mark.parametrize("name", sorted(NAN_LAYERS))
def test_nan_input_gives_nan_output_and_nan_gradient(backend, name, dy):
    """The input gradient at a NaN input is NaN whatever dY is (ReLU, LeakyReLU, PReLU, RReLU
    and Identity used to return 0 or alpha dY there); elsewhere nothing changes."""
    make, train = NAN_LAYERS[name]
    x = _nan_input()
    nan = np.isnan(x)
    g = np.random.default_rng(7).standard_normal(x.shape) if dy == "random" else np.zeros(x.shape)
    layer = make()
    Y, dX = _run(layer, backend, x, g, train=train)
    assert np.array_equal(np.isnan(Y), nan), Y
    assert np.array_equal(np.isnan(dX), nan), dX
    # the finite elements are those of the same input without NaN (same slopes: same stream)
    clean = np.where(nan, 1.0, x)
    Y0, dX0 = _run(make(), backend, clean, g, train=train)
    np.testing.assert_array_equal(Y[~nan], Y0[~nan])
    np.testing.assert_array_equal(dX[~nan], dX0[~nan])
    if name.startswith("prelu"):
        # the slope's gradient sums over the NaN elements: NaN (per unit: the units that saw one)
        dA = backend.numpy(layer.grads["alpha"])
        want = [True] if name == "prelu_shared" else list(nan.any(axis=0))
        assert list(np.isnan(dA)) == want, dA


def test_softmax_nan_makes_its_row_nan(backend):
    x = _nan_input()
    g = np.random.default_rng(8).standard_normal(x.shape)
    Y, dX = _run(Softmax(dtype="float64"), backend, x, g)
    rows = np.isnan(x).any(axis=1)
    assert np.all(np.isnan(Y[rows])) and np.all(np.isnan(dX[rows]))
    assert np.all(np.isfinite(Y[~rows])) and np.all(np.isfinite(dX[~rows]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(128, 512), (3, 5), (1025, 1025)])
def test_cpu_relu_backward_propagates_nan(dtype, shape, rng):
    """The NumPy fast path gives the portable relu_backward's values: dY where Y > 0, 0 at 0
    (relu'(0) = 0, as in PyTorch), NaN where Y is NaN; the old ``dY * (Y > 0)`` gave 0 there."""
    X = rng.standard_normal(shape).astype(dtype)
    X.flat[::5] = 0.0
    X.flat[::7] = np.nan
    X.flat[3::11] = np.inf
    Y = cpu.relu_(X.copy())
    dY = rng.standard_normal(shape).astype(dtype)
    want = np.where(Y > 0, dY, np.where(np.isnan(Y), np.nan, 0.0)).astype(dtype)
    np.testing.assert_array_equal(relu_backward(dY, Y), want)
    out = dY.copy()
    got = cpu.relu_backward_(out, Y)
    assert got is out
    np.testing.assert_array_equal(got, want)
    # a non-contiguous Y takes the scalar form
    np.testing.assert_array_equal(cpu.relu_backward_(dY[:, ::2].copy(), Y[:, ::2]), want[:, ::2])
    for buf in cpu._ones.values():
        assert not buf.flags.writeable and np.all(buf == 1)


def test_fused_linear_relu_propagates_nan(backend):
    """Sequential fuses Linear + ReLU (in place on NumPy): a NaN pre-activation gives NaN in
    the input gradient of its row, on every backend."""
    net = xd.Sequential(xd.Linear(3, 4, dtype="float64"), xd.ReLU(), xd.Linear(4, 4, dtype="float64"), xd.ReLU(),
                        xd.Linear(4, 2, dtype="float64"))
    x = np.random.default_rng(0).standard_normal((5, 3))
    x[2, 1] = np.nan
    Xb = backend.asarray(x)
    net.ensure_like(Xb)
    Y, backprop = net.forward(Xb, train=True)
    dX = backend.numpy(backprop(backend.asarray(np.ones((5, 2)))))
    assert np.all(np.isnan(backend.numpy(Y)[2]))
    assert np.all(np.isnan(dX[2])), dX
    assert np.all(np.isfinite(np.delete(dX, 2, axis=0)))


def _torch_grad_at(fn, x):
    torch = pytest.importorskip("torch")
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    fn(torch, t).sum().backward()
    return t.grad.numpy()


KINK_TWINS = {
    "identity": (lambda: Identity(dtype="float64"), lambda t, x: x * 1.0),
    "relu": (lambda: ReLU(dtype="float64"), lambda t, x: t.nn.functional.relu(x)),
    "leaky_relu": (lambda: LeakyReLU(0.1, dtype="float64"), lambda t, x: t.nn.functional.leaky_relu(x, 0.1)),
    "rrelu_eval": (lambda: RReLU(0.1, 0.3, dtype="float64"),
                   lambda t, x: t.nn.functional.rrelu(x, 0.1, 0.3, training=False)),
    "elu": (lambda: ELU(dtype="float64"), lambda t, x: t.nn.functional.elu(x)),
    "elu_0.7": (lambda: ELU(0.7, dtype="float64"), lambda t, x: t.nn.functional.elu(x, 0.7)),
    "softplus": (lambda: Softplus(dtype="float64"), lambda t, x: t.nn.functional.softplus(x)),
    "softplus_beta2": (lambda: Softplus(2.0, dtype="float64"), lambda t, x: t.nn.functional.softplus(x, beta=2.0)),
    "gelu": (lambda: GELU(dtype="float64"), lambda t, x: t.nn.functional.gelu(x)),
    "gelu_tanh": (lambda: GELU("tanh", dtype="float64"), lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
    "silu": (lambda: SiLU(dtype="float64"), lambda t, x: t.nn.functional.silu(x)),
    "sigmoid": (lambda: Sigmoid(dtype="float64"), lambda t, x: t.sigmoid(x)),
    "tanh": (lambda: Tanh(dtype="float64"), lambda t, x: t.tanh(x)),
}


@pytest.mark.parametrize("name", sorted(KINK_TWINS))
def test_gradient_at_zero_matches_torch(backend, name):
    """At exactly +0 and -0 the derivative is PyTorch's: the negative side's for the
    rectifiers (relu'(0) = 0, leaky_relu'(0) = alpha, elu'(0) = alpha)."""
    make, ref = KINK_TWINS[name]
    x = np.array([[0.0, -0.0, 1.0, -1.0]])
    _, dX = _run(make(), backend, x, np.ones_like(x))
    np.testing.assert_allclose(dX, _torch_grad_at(ref, x), rtol=1e-15, atol=0)


def test_kink_values_of_the_rectifiers(backend):
    x = np.zeros((2, 3))
    g = np.full(x.shape, 2.0)
    assert np.all(_run(ReLU(dtype="float64"), backend, x, g)[1] == 0.0)
    assert np.all(_run(LeakyReLU(0.1, dtype="float64"), backend, x, g)[1] == 0.2)
    assert np.all(_run(ELU(0.5, dtype="float64"), backend, x, g)[1] == 1.0)
    layer = PReLU(3, dtype="float64")
    assert np.all(_run(layer, backend, x, g)[1] == 0.5)
    np.testing.assert_array_equal(backend.numpy(layer.grads["alpha"]), [0.0, 0.0, 0.0])   # torch's too
    rrelu = RReLU(dtype="float64")
    A = backend.numpy(rrelu.slopes(*Stream(3).take(), (2, 3), backend.asarray(x)))
    np.testing.assert_array_equal(_run(rrelu, backend, x, g, train=True)[1], 2.0 * A)


def test_prelu_gradients_at_zero_match_torch(backend):
    torch = pytest.importorskip("torch")
    x = np.array([[0.0, -0.0, 1.0], [-2.0, 0.0, 0.5]])
    layer = PReLU(3, dtype="float64")
    _, dX = _run(layer, backend, x, np.ones_like(x))
    t = torch.tensor(x, requires_grad=True)
    w = torch.full((3,), 0.25, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.prelu(t, w).sum().backward()
    np.testing.assert_array_equal(dX, t.grad.numpy())
    np.testing.assert_array_equal(backend.numpy(layer.grads["alpha"]), w.grad.numpy())


# ---- 1 and 3. derivatives in the saturated tails keep their relative accuracy ---------------

TAIL = {"float64": 80.0, "float32": 30.0}


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_derivative_in_the_tails(backend, dtype):
    """sigmoid'(40) = exp(-40) used to come out as 0 (Y (1 - Y) with Y rounded to 1)."""
    x = np.linspace(-TAIL[dtype], TAIL[dtype], 321).astype(dtype)
    want = np.array([float(mp.exp(-abs(mp.mpf(float(v)))) / (1 + mp.exp(-abs(mp.mpf(float(v))))) ** 2)
                     for v in x])
    _, dX = _run(Sigmoid(dtype=dtype), backend, x[None, :], np.ones((1, x.size), dtype=dtype))
    # exp(-|x|) of an exact |x|: within a few ulp, times the conditioning |x| of exp
    tol = 8 * EPS[dtype] * (1.0 + np.abs(x.astype(np.float64)))
    err = _rel_err(dX[0], want)
    assert np.all(err <= tol), (x[np.argmax(err / tol)], np.max(err / tol))


def _mp_bce_grad(x, t, pw=1.0):
    """d/dx [pw t softplus(-x) + (1 - t) softplus(x)] = (1 - t) sigmoid(x) - pw t sigmoid(-x)."""
    x, t = mp.mpf(float(x)), mp.mpf(float(t))
    return (1 - t) * _mp_sigmoid(x) - mp.mpf(pw) * t * _mp_sigmoid(-x)


def _mp_bce_loss(x, t, pw=1.0):
    x, t = mp.mpf(float(x)), mp.mpf(float(t))
    return mp.mpf(pw) * t * mp.log1p(mp.exp(-x)) + (1 - t) * mp.log1p(mp.exp(x))


def _logit_grid(dtype):
    x = np.linspace(-TAIL[dtype], TAIL[dtype], 161).astype(dtype)
    X = np.stack([x, x])
    T = np.stack([np.ones_like(x), np.zeros_like(x)]).astype(dtype)
    return X, T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_bce_gradient_keeps_relative_accuracy(backend, dtype, pos_weight):
    """x = 40, t = 1 used to give the gradient 0 instead of -exp(-40): sigmoid(x) - t cancels
    for confident right answers.  Relative error against mpmath stays at a few ulp times the
    conditioning |x| for |x| up to 80 (float64) / 30 (float32)."""
    X, T = _logit_grid(dtype)
    loss = BinaryCrossEntropy(pos_weight=pos_weight, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L, G = loss(backend.asarray(X), backend.asarray(T))
    L, G = backend.numpy(L), backend.numpy(G)
    pw = 1.0 if pos_weight is None else pos_weight
    want_g = np.vectorize(lambda x, t: float(_mp_bce_grad(x, t, pw)))(X, T)
    want_l = np.vectorize(lambda x, t: float(_mp_bce_loss(x, t, pw)))(X, T)
    tol = 8 * EPS[dtype] * (1.0 + np.abs(X.astype(np.float64)))
    err_g, err_l = _rel_err(G, want_g), _rel_err(L, want_l)
    assert np.all(err_g <= tol), (X[np.unravel_index(np.argmax(err_g / tol), X.shape)], np.max(err_g / tol))
    assert np.all(err_l <= tol), np.max(err_l / tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_soft_targets_away_from_the_optimum(backend, dtype):
    """Soft targets, |x| >= 5 (away from the gradient's zero at logit(t)): still accurate."""
    x = np.concatenate([np.linspace(-TAIL[dtype], -5, 40), np.linspace(5, TAIL[dtype], 40)]).astype(dtype)
    X = np.stack([x, x])
    T = np.stack([np.full_like(x, 0.25), np.full_like(x, 0.75)])
    _, G = BinaryCrossEntropy(reduction="sum")(backend.asarray(X), backend.asarray(T))
    want = np.vectorize(lambda x, t: float(_mp_bce_grad(x, t)))(X, T)
    assert np.all(_rel_err(backend.numpy(G), want) <= 16 * EPS[dtype] * (1.0 + np.abs(X.astype(np.float64))))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_multilabel_logistic_gradient_keeps_relative_accuracy(backend, dtype, weighted):
    x = np.linspace(-TAIL[dtype], TAIL[dtype], 40).astype(dtype)
    X = np.stack([x[:20], x[20:], -x[:20], -x[20:]])           # (4, 20)
    T = (np.arange(80).reshape(4, 20) % 3 == 0).astype(dtype)
    w = np.linspace(0.5, 2.0, 20) if weighted else np.ones(20)
    _, G = MultiLabelLogistic(weight=w if weighted else None)(backend.asarray(X), backend.asarray(T))
    N, C = X.shape
    want = np.vectorize(lambda x, t: float(_mp_bce_grad(x, t)))(X, T) * w[None, :] / (C * N)
    tol = 16 * EPS[dtype] * (1.0 + np.abs(X.astype(np.float64)))
    err = _rel_err(backend.numpy(G), want)
    assert np.all(err <= tol), np.max(err / tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_linear_branch_does_not_overflow(backend, dtype):
    """Huber formed 0.5 D^2 for every element, also where |D| > delta and the loss is linear:
    it overflowed (with a warning) long before the loss did."""
    big = math.sqrt(float(np.finfo(dtype).max)) * 4
    Y = np.array([[big, -big, 0.5, -3.0]], dtype=dtype)
    T = np.zeros_like(Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L, G = Huber(delta=1.0, reduction="none")(backend.asarray(Y), backend.asarray(T))
    L, G = backend.numpy(L), backend.numpy(G)
    np.testing.assert_allclose(L[0], [big - 0.5, big - 0.5, 0.125, 2.5], rtol=EPS[dtype])
    np.testing.assert_array_equal(G[0], [1.0, -1.0, 0.5, -1.0])
