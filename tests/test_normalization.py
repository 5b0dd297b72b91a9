"""BatchNorm1d, LayerNorm, WeightNormLinear, CosineLinear, DropConnect and GaussianNoise."""

from __future__ import annotations

import numpy as np
import pytest

import xpdnn.io
from xpdnn import _backend as B
from xpdnn import random as xrandom
from xpdnn.layers.base import layer_from_config, layer_to_config
from xpdnn.layers.dropconnect import DropConnect
from xpdnn.layers.linear import Linear
from xpdnn.layers.noise import GaussianNoise, gaussian
from xpdnn.layers.normalization import BatchNorm1d, LayerNorm
from xpdnn.layers.reparam import CosineLinear, WeightNormLinear
from xpdnn.layers.sequential import Sequential
from xpdnn.random import Stream
from xpdnn.testing import check_layer_gradients


def _randomize(layer, backend, X, seed=1, skip=()):
    """Give every parameter non-trivial float64 values, placed next to X."""
    rng = np.random.default_rng(seed)
    for name in layer.params:
        if name not in skip:
            layer.params[name] = rng.standard_normal(layer.params[name].shape) * 0.5 + (1.0 if name == "gamma" else 0.0)
    layer.to(like=X)
    return layer


def _torch_grads(fn, X_host, params_host, G_host):
    """Output and gradients of ``sum(fn(X, *params) * G)`` by torch autograd (float64)."""
    torch = pytest.importorskip("torch")
    X = torch.tensor(X_host, requires_grad=True)
    ps = [torch.tensor(p, requires_grad=True) for p in params_host]
    Y = fn(X, *ps)
    (Y * torch.tensor(G_host)).sum().backward()
    return Y.detach().numpy(), X.grad.numpy(), [p.grad.numpy() for p in ps]


def _ours(layer, backend, X_host, G_host, train):
    X = backend.asarray(X_host)
    Y, backprop = layer.forward(X, train=train, rng=Stream(7))
    layer.zero_grad()
    dX = backprop(backend.asarray(G_host))
    return backend.numpy(Y), backend.numpy(dX), {k: backend.numpy(v) for k, v in layer.grads.items()}


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradients(backend, rng, train):
    X = backend.asarray(rng.standard_normal((5, 3)) * 2.0 + 1.0)
    bn = _randomize(BatchNorm1d(3, dtype="float64"), backend, X)
    bn.buffers["running_mean"] = backend.asarray(rng.standard_normal(3))
    bn.buffers["running_var"] = backend.asarray(rng.uniform(0.5, 2.0, 3))
    check_layer_gradients(bn, X, train=train)


def test_batchnorm_matches_torch_train_and_eval(backend, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    bn = BatchNorm1d(4, momentum=0.3, eps=1e-3, dtype="float64")
    X0 = backend.asarray(np.zeros((2, 4)))
    _randomize(bn, backend, X0)
    gamma, beta = backend.numpy(bn.params["gamma"]).copy(), backend.numpy(bn.params["beta"]).copy()
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for step, N in enumerate([6, 3, 9]):
        X_host = rng.standard_normal((N, 4)) * 3.0 - 1.0
        G_host = rng.standard_normal((N, 4))
        Y, dX, grads = _ours(bn, backend, X_host, G_host, train=True)
        tY, tdX, (tdg, tdb) = _torch_grads(
            lambda X, g, b: F.batch_norm(X, rm, rv, g, b, training=True, momentum=0.3, eps=1e-3),
            X_host, [gamma, beta], G_host)
        np.testing.assert_allclose(Y, tY, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dX, tdX, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads["gamma"], tdg, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grads["beta"], tdb, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(backend.numpy(bn.buffers["running_mean"]), rm.numpy(), rtol=1e-12, atol=1e-14,
                                   err_msg=f"running_mean after step {step}")
        np.testing.assert_allclose(backend.numpy(bn.buffers["running_var"]), rv.numpy(), rtol=1e-12,
                                   err_msg=f"running_var after step {step}")
    assert not np.allclose(rv.numpy(), 1.0)
    X_host, G_host = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    Y, dX, grads = _ours(bn, backend, X_host, G_host, train=False)
    tY, tdX, (tdg, tdb) = _torch_grads(
        lambda X, g, b: F.batch_norm(X, rm, rv, g, b, training=False, eps=1e-3), X_host, [gamma, beta], G_host)
    np.testing.assert_allclose(Y, tY, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dX, tdX, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["gamma"], tdg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["beta"], tdb, rtol=1e-10, atol=1e-12)


def test_batchnorm_batch_of_one_is_an_error_in_training(backend):
    bn = BatchNorm1d(3, dtype="float64")
    X = backend.asarray(np.ones((1, 3)))
    bn.to(like=X)
    with pytest.raises(ValueError, match="at least 2 samples"):
        bn.forward(X, train=True)
    Y = backend.numpy(bn.forward(X, train=False)[0])     # evaluation: fine, running stats
    np.testing.assert_allclose(Y, np.ones((1, 3)) / np.sqrt(1.0 + 1e-5))


def test_batchnorm_eval_uses_running_statistics(backend, rng):
    bn = BatchNorm1d(3, momentum=0.5, dtype="float64")
    X = backend.asarray(rng.standard_normal((8, 3)) * 4.0 + 3.0)
    bn.to(like=X)
    for _ in range(3):
        bn.forward(X, train=True)
    rm, rv = backend.numpy(bn.buffers["running_mean"]), backend.numpy(bn.buffers["running_var"])
    Xh = backend.numpy(X)
    np.testing.assert_allclose(rm, Xh.mean(0) * (1 - 0.5 ** 3), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.5 ** 3 + Xh.var(0, ddof=1) * (1 - 0.5 ** 3), rtol=1e-12)
    Y_eval = backend.numpy(bn.forward(X, train=False)[0])
    np.testing.assert_allclose(Y_eval, (Xh - rm) / np.sqrt(rv + 1e-5), rtol=1e-12)
    # evaluation leaves the buffers alone; training-mode output is standardized by the batch
    np.testing.assert_array_equal(backend.numpy(bn.buffers["running_mean"]), rm)
    Y_train = backend.numpy(bn.forward(X, train=True)[0])
    np.testing.assert_allclose(Y_train.mean(0), 0.0, atol=1e-12)
    assert not np.allclose(Y_train, Y_eval, atol=1e-3)


def test_batchnorm_buffers_survive_save_and_load(backend, rng, tmp_path):
    net = Sequential(Linear(4, 3, seed=1), BatchNorm1d(3, momentum=0.2), Linear(3, 2, seed=2))
    X = backend.asarray(rng.standard_normal((10, 4)).astype(np.float32))
    net.ensure_like(X)
    for _ in range(4):
        net.forward(X, train=True)
    state = {k: backend.numpy(v).copy() for k, v in net.state_arrays().items()}
    assert "layers.1.running_mean" in state and "layers.1.running_var" in state
    assert not np.allclose(state["layers.1.running_mean"], 0.0)
    # buffers are not parameters: the optimizer never sees them
    assert {(p, n) for p, _, n in net.parameters() if p == "layers.1"} == {("layers.1", "beta"), ("layers.1", "gamma")}
    path = tmp_path / "bn.xpd"
    xpdnn.io.save(net, path)
    loaded = xpdnn.io.load(path)
    assert isinstance(loaded[1], BatchNorm1d) and loaded[1].momentum == 0.2
    for k, v in loaded.state_arrays().items():
        np.testing.assert_array_equal(backend.numpy(v), state[k], err_msg=k)
    np.testing.assert_allclose(backend.numpy(loaded.predict_proba(X)), backend.numpy(net.predict_proba(X)), rtol=1e-6)


def test_batchnorm_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm1d(3, momentum=1.5)
    with pytest.raises(ValueError, match="n_features"):
        BatchNorm1d(0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        BatchNorm1d(3).forward(np.zeros((4, 2), dtype=np.float32), train=True)


def test_layernorm_gradients(backend, rng):
    X = backend.asarray(rng.standard_normal((4, 5)) * 2.0 + 0.5)
    ln = _randomize(LayerNorm(5, dtype="float64"), backend, X)
    check_layer_gradients(ln, X, train=True)


def test_layernorm_matches_torch(backend, rng):
    torch = pytest.importorskip("torch")
    ln = LayerNorm(5, eps=1e-4, dtype="float64")
    _randomize(ln, backend, backend.asarray(np.zeros((1, 5))))
    gamma, beta = backend.numpy(ln.params["gamma"]), backend.numpy(ln.params["beta"])
    X_host, G_host = rng.standard_normal((6, 5)) * 3.0, rng.standard_normal((6, 5))
    Y, dX, grads = _ours(ln, backend, X_host, G_host, train=True)
    tY, tdX, (tdg, tdb) = _torch_grads(lambda X, g, b: torch.nn.functional.layer_norm(X, (5,), g, b, eps=1e-4),
                                       X_host, [gamma, beta], G_host)
    np.testing.assert_allclose(Y, tY, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dX, tdX, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["gamma"], tdg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["beta"], tdb, rtol=1e-10, atol=1e-12)


def test_layernorm_same_in_training_and_evaluation_and_batch_of_one(backend, rng):
    ln = LayerNorm(4, dtype="float64")
    X = backend.asarray(rng.standard_normal((1, 4)) * 5.0 + 2.0)
    ln.to(like=X)
    Y_train = backend.numpy(ln.forward(X, train=True)[0])
    Y_eval = backend.numpy(ln.forward(X, train=False)[0])
    np.testing.assert_array_equal(Y_train, Y_eval)
    np.testing.assert_allclose(Y_train.mean(1), 0.0, atol=1e-12)
    np.testing.assert_allclose(Y_train.var(1), 1.0, rtol=1e-4)
    assert ln.buffers == {}


def test_weightnorm_gradients(backend, rng):
    X = backend.asarray(rng.standard_normal((4, 3)))
    layer = WeightNormLinear(3, 2, seed=3, dtype="float64")
    _randomize(layer, backend, X)
    check_layer_gradients(layer, X, train=True)


def test_weightnorm_matches_torch(backend, rng):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.parametrizations import weight_norm

    layer = WeightNormLinear(3, 4, seed=5, dtype="float64")
    X0 = backend.asarray(np.zeros((1, 3)))
    layer.to(like=X0)
    v = backend.numpy(layer.params["v"])
    # g starts at ||v||, so the initial weights are v itself (as in torch)
    np.testing.assert_allclose(backend.numpy(layer.params["g"]), np.linalg.norm(v, axis=1), rtol=1e-12)
    _randomize(layer, backend, X0, seed=9)
    v, g, b = (backend.numpy(layer.params[k]) for k in ("v", "g", "b"))
    ref = weight_norm(torch.nn.Linear(3, 4).double())
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(torch.tensor(g[:, None]))
        ref.parametrizations.weight.original1.copy_(torch.tensor(v))
        ref.bias.copy_(torch.tensor(b))
    X_host, G_host = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    Y, dX, grads = _ours(layer, backend, X_host, G_host, train=True)
    Xt = torch.tensor(X_host, requires_grad=True)
    tY = ref(Xt)
    (tY * torch.tensor(G_host)).sum().backward()
    np.testing.assert_allclose(Y, tY.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dX, Xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    tg, tv = ref.parametrizations.weight.original0, ref.parametrizations.weight.original1
    np.testing.assert_allclose(grads["g"], tg.grad.numpy()[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["v"], tv.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["b"], ref.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert WeightNormLinear.decay == ("v",)


def test_cosine_gradients(backend, rng):
    X = backend.asarray(rng.standard_normal((4, 3)))
    layer = CosineLinear(3, 2, seed=3, dtype="float64")
    layer.to(like=X)
    check_layer_gradients(layer, X, train=True)


def test_cosine_matches_torch_formula(backend, rng):
    torch = pytest.importorskip("torch")
    layer = CosineLinear(4, 3, eps=1e-8, seed=2, dtype="float64")
    layer.to(like=backend.asarray(np.zeros((1, 4))))
    W = backend.numpy(layer.params["W"])
    X_host, G_host = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))

    def cosine(X, W):
        return (X @ W.T) / (X.norm(dim=1, keepdim=True) * W.norm(dim=1)[None, :])

    Y, dX, grads = _ours(layer, backend, X_host, G_host, train=False)
    tY, tdX, (tdW,) = _torch_grads(cosine, X_host, [W], G_host)
    np.testing.assert_allclose(Y, tY, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dX, tdX, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(grads["W"], tdW, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(Y, torch.nn.functional.cosine_similarity(
        torch.tensor(X_host)[:, None, :], torch.tensor(W)[None, :, :], dim=2).numpy(), rtol=1e-10, atol=1e-12)


def test_cosine_is_scale_invariant_bounded_and_finite_at_zero(backend, rng):
    layer = CosineLinear(5, 4, seed=8, dtype="float64")
    X_host = rng.standard_normal((3, 5))
    X_host[2] = 0.0
    X = backend.asarray(X_host)
    layer.to(like=X)
    Y, backprop = layer.forward(X)
    Y = backend.numpy(Y)
    assert np.all(np.abs(Y) <= 1.0 + 1e-12)
    np.testing.assert_array_equal(Y[2], 0.0)
    assert np.all(np.isfinite(backend.numpy(backprop(backend.asarray(np.ones((3, 4)))))))
    np.testing.assert_allclose(backend.numpy(layer(backend.asarray(X_host[:2] * 7.5))), Y[:2], rtol=1e-12)


@pytest.mark.parametrize("train", [True, False])
def test_dropconnect_gradients(backend, rng, train):
    X = backend.asarray(rng.standard_normal((4, 5)))
    layer = DropConnect(5, 3, rate=0.4, seed=1, dtype="float64")
    _randomize(layer, backend, X)
    check_layer_gradients(layer, X, train=train, seed=11)


def test_dropconnect_mask_matches_the_generator_and_torch(backend, rng):
    torch = pytest.importorskip("torch")
    layer = DropConnect(6, 4, rate=0.3, seed=1, dtype="float64")
    _randomize(layer, backend, backend.asarray(np.zeros((1, 6))))
    W, b = backend.numpy(layer.params["W"]), backend.numpy(layer.params["b"])
    M = xrandom.keep_mask(7, 0, (4, 6), 0.3) / 0.7      # _ours uses Stream(7): counter 0
    assert 0 < (M == 0).sum() < M.size
    X_host, G_host = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
    Y, dX, grads = _ours(layer, backend, X_host, G_host, train=True)
    tY, tdX, (tdW, tdb) = _torch_grads(lambda X, W, b: torch.nn.functional.linear(X, W * torch.tensor(M), b),
                                       X_host, [W, b], G_host)
    np.testing.assert_allclose(Y, tY, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dX, tdX, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["W"], tdW, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["b"], tdb, rtol=1e-12, atol=1e-12)
    assert np.all(grads["W"][M == 0] == 0)
    # evaluation: the full weights, exactly a Linear
    Y_eval = backend.numpy(layer(backend.asarray(X_host)))
    np.testing.assert_allclose(Y_eval, X_host @ W.T + b, rtol=1e-12)


def test_dropconnect_drops_about_rate_and_new_masks_per_call(backend):
    layer = DropConnect(100, 80, rate=0.25, seed=0, dtype="float64")
    layer.params["b"][...] = 0.0
    eye = backend.asarray(np.eye(100))
    layer.to(like=eye)
    stream = Stream(3)
    # with X = I the output is the masked, scaled weight matrix itself (transposed)
    Wd1 = backend.numpy(layer.forward(eye, train=True, rng=stream)[0]).T
    Wd2 = backend.numpy(layer.forward(eye, train=True, rng=stream)[0]).T
    W = backend.numpy(layer.params["W"])
    assert abs((Wd1 == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(Wd1[Wd1 != 0], W[Wd1 != 0] / 0.75, rtol=1e-12)
    assert not np.array_equal(Wd1 == 0, Wd2 == 0)
    with pytest.raises(ValueError, match="rate"):
        DropConnect(3, 2, rate=1.0)


def test_gaussian_noise_statistics_and_reproducibility(backend):
    layer = GaussianNoise(0.5, dtype="float64")
    X_host = np.full((200, 100), 3.0)
    X = backend.asarray(X_host)
    Y, backprop = layer.forward(X, train=True, rng=Stream(5, 2))
    noise = backend.numpy(Y) - 3.0
    assert abs(noise.mean()) < 0.01
    assert abs(noise.std() - 0.5) < 0.01
    assert abs(np.mean(np.abs(noise) < 0.5) - 0.6827) < 0.01       # one sigma
    # the same (seed, counter) gives the same numbers on every backend
    np.testing.assert_allclose(noise, 0.5 * gaussian(5, 2, (200, 100)), rtol=1e-12, atol=1e-14)
    again = backend.numpy(layer.forward(X, train=True, rng=Stream(5, 3))[0])
    assert not np.allclose(again, backend.numpy(Y))
    G = backend.asarray(np.ones((200, 100)))
    np.testing.assert_array_equal(backend.numpy(backprop(G)), 1.0)
    np.testing.assert_array_equal(backend.numpy(layer(X)), X_host)      # identity in evaluation


def test_gaussian_noise_gradients_and_bad_std(backend, rng):
    X = backend.asarray(rng.standard_normal((3, 4)))
    check_layer_gradients(GaussianNoise(0.2, dtype="float64"), X, train=True)
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(-0.1)


@pytest.mark.parametrize("layer", [
    BatchNorm1d(3, momentum=0.05, eps=1e-3), LayerNorm(4, eps=1e-6), WeightNormLinear(3, 2, seed=4, bias=0.1),
    CosineLinear(3, 2, eps=1e-6, seed=2), DropConnect(3, 2, rate=0.3, seed=5), GaussianNoise(0.2, seed=3)])
def test_configs_rebuild_the_layer(layer):
    rebuilt = layer_from_config(layer_to_config(layer))
    assert type(rebuilt) is type(layer) and rebuilt.get_config() == layer.get_config()
    for name in layer.params:
        np.testing.assert_array_equal(rebuilt.params[name], layer.params[name])
    assert layer.output_size(layer.n_in) == (layer.n_out if hasattr(layer, "n_out") else layer.n_in)


def test_all_layers_train_together(backend):
    from xpdnn.layers.activations import ReLU
    from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy
    from xpdnn.optim.sgd import SGD
    from xpdnn.trainer import Trainer

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    X = (np.eye(3, 4)[y] * 3.0 + rng.standard_normal((60, 4))).astype(np.float32)
    net = Sequential(GaussianNoise(0.1), WeightNormLinear(4, 16), BatchNorm1d(16), ReLU(),
                     DropConnect(16, 16, rate=0.2), LayerNorm(16), ReLU(), CosineLinear(16, 3))
    history = Trainer(net, loss=SoftmaxCrossEntropy(), optimizer=SGD(lr=0.2, momentum=0.9), batch_size=16,
                      epochs=8, progress=False).fit(backend.asarray(X), backend.asarray(y))
    assert history["loss"][-1] < history["loss"][0]
    assert np.mean(backend.numpy(net.predict(backend.asarray(X))) == y) > 0.9
    assert B.dtype_name(net[2].buffers["running_var"].dtype) == "float32"


@pytest.mark.parametrize("make", [
    lambda: BatchNorm1d(3, dtype="float64"), lambda: LayerNorm(3, dtype="float64"),
    lambda: WeightNormLinear(3, 2, dtype="float64"), lambda: CosineLinear(3, 2, dtype="float64"),
    lambda: DropConnect(3, 2, rate=0.5, dtype="float64")])
def test_zero_grad_starts_a_fresh_accumulation(backend, rng, make):
    layer = make()
    X = backend.asarray(rng.standard_normal((4, 3)))
    layer.to(like=X)
    grads = []
    for step in range(3):
        if step != 1:
            layer.zero_grad()                    # steps 0 and 1 accumulate; step 2 starts afresh
        Y, backprop = layer.forward(X, train=True, rng=Stream(2))
        backprop(backend.asarray(np.ones(tuple(Y.shape))))
        grads.append({k: backend.numpy(v).copy() for k, v in layer.grads.items()})
    for k in grads[0]:
        assert np.any(grads[0][k] != 0), k
        np.testing.assert_allclose(grads[1][k], 2 * grads[0][k], rtol=1e-12, err_msg=k)
        np.testing.assert_allclose(grads[2][k], grads[0][k], rtol=1e-12, err_msg=k)
