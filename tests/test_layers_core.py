"""Foundation layers: gradient checks, PyTorch agreement, known answers from the texts."""

import numpy as np
import pytest

import xpdnn as xd
from xpdnn.layers.activations import sigmoid, softmax, tanh
from xpdnn.testing import away_from, check_layer_gradients


def _x(backend, shape, rng, kinks=None):
    host = rng.standard_normal(shape)
    if kinks is not None:
        host = away_from(host, kinks, margin=1e-3, rng=rng)
    return backend.asarray(host)


@pytest.mark.parametrize("cls", [xd.ReLU, xd.Sigmoid, xd.Tanh, xd.Identity, xd.Softmax])
def test_activation_gradients(backend, rng, cls):
    X = _x(backend, (5, 7), rng, kinks=(0.0,))
    check_layer_gradients(cls(dtype="float64"), X)


def test_linear_gradients(backend, rng):
    layer = xd.Linear(6, 4, dtype="float64", bias=0.1)
    check_layer_gradients(layer, _x(backend, (5, 6), rng))


def test_linear_without_bias(backend, rng):
    layer = xd.Linear(6, 4, use_bias=False, dtype="float64")
    assert sorted(layer.params) == ["W"]
    check_layer_gradients(layer, _x(backend, (3, 6), rng))


def test_dropout_gradients_and_scaling(backend, rng):
    layer = xd.Dropout(0.4, dtype="float64")
    X = _x(backend, (50, 40), rng)
    check_layer_gradients(layer, X[:4, :5], train=True)
    Y = backend.numpy(layer.forward(X, train=True, rng=xd.Stream(3))[0])
    Xh = backend.numpy(X)
    kept = Y != 0
    np.testing.assert_allclose(Y[kept], Xh[kept] / 0.6, rtol=1e-12)
    assert 0.5 < kept.mean() < 0.7
    np.testing.assert_array_equal(backend.numpy(layer.forward(X, train=False)[0]), Xh)


def test_sequential_gradients(backend, rng):
    net = xd.Sequential(xd.Linear(4, 6, dtype="float64"), xd.Tanh(dtype="float64"),
                        xd.Dropout(0.3, dtype="float64"), xd.Linear(6, 3, dtype="float64"),
                        xd.ReLU(dtype="float64"), xd.Linear(3, 2, dtype="float64"))
    # near ReLU kinks a finite difference is meaningless; this input keeps clear of them for seed 0
    check_layer_gradients(net, _x(backend, (4, 4), rng), train=True, rtol=1e-5, atol=1e-7)


def test_backprop_closure_is_reentrant(backend, rng):
    """Two forwards before any backward: each backprop uses its own saved inputs."""
    layer = xd.Linear(3, 2, dtype="float64")
    layer.to(like=backend.asarray(np.zeros(1)))
    X1, X2 = _x(backend, (4, 3), rng), _x(backend, (4, 3), rng)
    _, bp1 = layer.forward(X1, train=True)
    _, bp2 = layer.forward(X2, train=True)
    G = backend.asarray(np.ones((4, 2)))
    layer.zero_grad()
    bp1(G)
    np.testing.assert_allclose(backend.numpy(layer.grads["W"]), np.ones((2, 4)) @ backend.numpy(X1))


torch = None


@pytest.fixture
def torch_mod():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax"])
def test_activations_match_torch(backend, rng, torch_mod, name):
    host = rng.standard_normal((6, 5)) * 4
    G = rng.standard_normal((6, 5))
    layer = {"relu": xd.ReLU, "sigmoid": xd.Sigmoid, "tanh": xd.Tanh, "softmax": xd.Softmax}[name](dtype="float64")
    Y, bp = layer.forward(backend.asarray(host))
    dX = bp(backend.asarray(G))
    t = torch_mod.tensor(host, requires_grad=True)
    ty = {"relu": torch_mod.relu, "sigmoid": torch_mod.sigmoid, "tanh": torch_mod.tanh,
          "softmax": lambda v: torch_mod.softmax(v, dim=1)}[name](t)
    ty.backward(torch_mod.tensor(G))
    np.testing.assert_allclose(backend.numpy(Y), ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(backend.numpy(dX), t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_linear_matches_torch(backend, rng, torch_mod):
    layer = xd.Linear(5, 3, dtype="float64", bias=0.2)
    X, G = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    layer.to(like=backend.asarray(X))
    Y, bp = layer.forward(backend.asarray(X))
    dX = bp(backend.asarray(G))
    W = torch_mod.tensor(backend.numpy(layer.params["W"]), requires_grad=True)
    b = torch_mod.tensor(backend.numpy(layer.params["b"]), requires_grad=True)
    tX = torch_mod.tensor(X, requires_grad=True)
    tY = torch_mod.nn.functional.linear(tX, W, b)
    tY.backward(torch_mod.tensor(G))
    np.testing.assert_allclose(backend.numpy(Y), tY.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(dX), tX.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(layer.grads["W"]), W.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(backend.numpy(layer.grads["b"]), b.grad.numpy(), rtol=1e-12)


def test_stable_at_extreme_inputs(backend):
    X = backend.asarray(np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]]))
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        s = backend.numpy(sigmoid(X))
        p = backend.numpy(softmax(X))
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(p))
    np.testing.assert_allclose(s[0, [0, 2, 4]], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(p.sum(), 1.0)


def test_known_answers_from_the_texts(backend):
    # seed 003: softmax([3, 1, -3]) is about [0.88, 0.12, 0.00]
    p = backend.numpy(softmax(backend.asarray(np.array([[3.0, 1.0, -3.0]]))))[0]
    np.testing.assert_allclose(p, [0.88, 0.12, 0.00], atol=0.005)
    # tanh(x) = 2 sigmoid(2x) - 1
    x = backend.asarray(np.linspace(-6, 6, 101)[None, :])
    np.testing.assert_allclose(backend.numpy(tanh(x)), backend.numpy(2 * sigmoid(2 * x) - 1), atol=1e-12)


def test_hand_set_xor_network(backend):
    """Seed 004's XOR network: h = relu(W x + c), y = w.h + b outputs [0, 1, 1, 0]."""
    net = xd.Sequential(xd.Linear(2, 2, dtype="float64"), xd.ReLU(), xd.Linear(2, 1, dtype="float64"))
    net.layers[0].params.update(W=np.array([[1.0, 1.0], [1.0, 1.0]]), b=np.array([0.0, -1.0]))
    net.layers[2].params.update(W=np.array([[1.0, -2.0]]), b=np.array([0.0]))
    X = backend.asarray(np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(backend.numpy(net(X))[:, 0], [0.0, 1.0, 1.0, 0.0])


@pytest.mark.slow
def test_relu_mlp_learns_xor(backend):
    X = backend.asarray(np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    y = backend.asarray(np.array([0, 1, 1, 0]))
    net = xd.Sequential(xd.Linear(2, 16, dtype="float64"), xd.ReLU(), xd.Linear(16, 2, dtype="float64"))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1, momentum=0.9),
                         batch_size=4, epochs=300, seed=1, progress=False)
    trainer.fit(X, y)
    np.testing.assert_array_equal(backend.numpy(net.predict(X)), [0, 1, 1, 0])
    assert trainer.history["loss"][-1] < 0.05


@pytest.mark.parametrize("sizes, neurons, params", [((3, 4, 2), 6, 26), ((3, 4, 4, 1), 9, 41)])
def test_summary_counts_from_seed_002(sizes, neurons, params):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [xd.Linear(a, b), xd.Sigmoid()]
    s = xd.summary(xd.Sequential(*layers[:-1]))
    assert (s.neurons, s.params) == (neurons, params)
    assert f"{params:,}" in str(s)
