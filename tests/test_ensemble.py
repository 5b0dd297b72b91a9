"""Monte-Carlo dropout prediction, the annealed dropout schedule and bagging."""

from __future__ import annotations

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.ensemble import AnnealedDropout, Bagging, mc_predict, member_seed
from xpdnn.layers.activations import ReLU, Softmax
from xpdnn.layers.base import Layer
from xpdnn.layers.dropconnect import DropConnect
from xpdnn.layers.dropout import Dropout
from xpdnn.layers.linear import Linear
from xpdnn.layers.normalization import BatchNorm1d
from xpdnn.layers.sequential import Sequential
from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy
from xpdnn.optim.sgd import SGD
from xpdnn.trainer import Callback, Trainer


def _mlp(*middle, n_in=4, n_out=3, seed=0):
    return Sequential(Linear(n_in, 8), *middle, Linear(8, n_out)).initialize(seed)


def _blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    y = np.arange(n) % 3
    X = centers[y] + rng.standard_normal((n, 4))
    return X.astype(np.float32), y.astype(np.int64)


def test_mc_predict_spread_with_dropout(backend, rng):
    net = _mlp(ReLU(), Dropout(0.5))
    X = backend.asarray(rng.standard_normal((6, 4)).astype(np.float32))
    mean, std = mc_predict(net, X, n_samples=20, seed=3)
    assert B.namespace(mean) is backend.xp
    mean, std = backend.numpy(mean), backend.numpy(std)
    assert mean.shape == std.shape == (6, 3)
    np.testing.assert_allclose(mean.sum(axis=1), 1.0, rtol=1e-5)
    assert std.min() >= 0 and std.max() > 1e-3
    again = mc_predict(net, X, n_samples=20, seed=3)
    np.testing.assert_array_equal(backend.numpy(again[0]), mean)
    other = backend.numpy(mc_predict(net, X, n_samples=20, seed=4)[0])
    assert not np.allclose(other, mean)
    # the mean of the sampled probabilities, each sample a dropout sub-network
    one = backend.numpy(mc_predict(net, X, n_samples=1, seed=3)[0])
    assert not np.allclose(one, mean)


def test_mc_predict_without_dropout_has_zero_spread(backend, rng):
    X = backend.asarray(rng.standard_normal((5, 4)).astype(np.float32))
    net = _mlp(ReLU())
    mean, std = mc_predict(net, X, n_samples=10)
    np.testing.assert_array_equal(backend.numpy(std), 0.0)
    np.testing.assert_allclose(backend.numpy(mean), backend.numpy(net.predict_proba(X)), rtol=1e-6)
    # a dropout layer that drops nothing: every sample is the same network
    net0 = _mlp(ReLU(), Dropout(0.0))
    mean0, std0 = mc_predict(net0, X, n_samples=5)
    np.testing.assert_allclose(backend.numpy(std0), 0.0, atol=1e-7)
    np.testing.assert_allclose(backend.numpy(mean0), backend.numpy(net0.predict_proba(X)), rtol=1e-6)


def test_mc_predict_keeps_batchnorm_in_evaluation_mode(backend, rng):
    X = backend.asarray(rng.standard_normal((7, 4)).astype(np.float32) * 3.0 + 1.0)
    net = _mlp(BatchNorm1d(8), ReLU())
    net.ensure_like(X)
    for _ in range(3):
        net.forward(X, train=True)          # non-trivial running statistics
    before = {k: backend.numpy(v).copy() for k, v in net.state_arrays().items()}
    mean, std = mc_predict(net, X, n_samples=4)
    for k, v in net.state_arrays().items():
        np.testing.assert_array_equal(backend.numpy(v), before[k], err_msg=k)
    np.testing.assert_allclose(backend.numpy(mean), backend.numpy(net.predict_proba(X)), rtol=1e-5)
    # training-mode BatchNorm (batch statistics) would give something else
    from xpdnn.layers.activations import softmax
    train_mode = backend.numpy(softmax(net.forward(net.prepare(X), train=True)[0]))
    assert not np.allclose(train_mode, backend.numpy(mean), atol=1e-4)
    with_dropout = _mlp(BatchNorm1d(8), ReLU(), Dropout(0.3))
    with_dropout.ensure_like(X)
    with_dropout.layers[1].buffers["running_var"] = backend.asarray(np.full(8, 2.0, dtype=np.float32))
    before = {k: backend.numpy(v).copy() for k, v in with_dropout.state_arrays().items()}
    mean, std = mc_predict(with_dropout, X[:1, ...], n_samples=6)   # batch of 1: BN in training would raise
    assert backend.numpy(std).max() > 0
    for k, v in with_dropout.state_arrays().items():
        np.testing.assert_array_equal(backend.numpy(v), before[k], err_msg=k)


def test_mc_predict_with_dropconnect_and_final_softmax(backend, rng):
    X = backend.asarray(rng.standard_normal((4, 4)).astype(np.float32))
    net = Sequential(Linear(4, 8), ReLU(), DropConnect(8, 3, rate=0.5), Softmax()).initialize(1)
    mean, std = mc_predict(net, X, n_samples=8)
    np.testing.assert_allclose(backend.numpy(mean).sum(axis=1), 1.0, rtol=1e-5)   # softmax applied once
    assert backend.numpy(std).max() > 1e-3


class _Wrapper(Layer):
    """A container mc_predict does not know how to walk."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def sublayers(self):
        return [("inner", self.inner)]

    def forward(self, X, *, train=False, rng=None):
        return self.inner.forward(X, train=train, rng=rng)


def test_mc_predict_errors(rng):
    X = rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="n_samples"):
        mc_predict(_mlp(), X, n_samples=0)
    net = Sequential(Linear(4, 8), _Wrapper(Dropout(0.5)), Linear(8, 3)).initialize(0)
    with pytest.raises(TypeError, match="Sequential"):
        mc_predict(net, X)


class _RecordRates(Callback):
    def __init__(self):
        self.rates = []

    def on_epoch_end(self, trainer, epoch, logs):
        self.rates.append([lay.rate for _, lay in trainer.net.named_layers() if isinstance(lay, Dropout)])


def test_annealed_dropout_lowers_every_dropout_rate(backend):
    X, y = _blobs(24)
    net = Sequential(Linear(4, 8), ReLU(), Dropout(0.4), Linear(8, 8), Dropout(0.2), Linear(8, 3))
    rec = _RecordRates()
    trainer = Trainer(net, loss=SoftmaxCrossEntropy(), optimizer=SGD(lr=0.05), batch_size=8, epochs=6,
                      callbacks=[AnnealedDropout(end=0.0, epochs=4), rec], progress=False)
    trainer.fit(backend.asarray(X), backend.asarray(y))
    expected = [[0.4 * (1 - min(e / 4, 1)), 0.2 * (1 - min(e / 4, 1))] for e in range(6)]
    np.testing.assert_allclose(np.array(rec.rates), np.array(expected), atol=1e-12)


def test_annealed_dropout_schedule_and_errors():
    sched = AnnealedDropout(start=0.5, end=0.1, epochs=4)
    assert [sched.rate_at(e) for e in range(6)] == pytest.approx([0.5, 0.4, 0.3, 0.2, 0.1, 0.1])
    with pytest.raises(ValueError, match="start"):
        AnnealedDropout(start=1.0)
    with pytest.raises(ValueError, match="epochs"):
        AnnealedDropout(epochs=0)


def _bagging(seed=0, **kw):
    def make_net():
        return Sequential(Linear(4, 8), ReLU(), Linear(8, 3))

    kw = {"n_members": 3, "seed": seed, "optimizer": SGD(lr=0.1, momentum=0.9), "batch_size": 16, "epochs": 4,
          "progress": False, **kw}
    return Bagging(make_net, **kw)


def _params(net, backend):
    return {k: backend.numpy(v).copy() for k, v in net.state_arrays().items()}


def test_bagging_members_differ_and_are_reproducible(backend):
    X, y = _blobs(60)
    Xb, yb = backend.asarray(X), backend.asarray(y)
    bag = _bagging(seed=5)
    histories = bag.fit(Xb, yb)
    assert len(bag.members) == len(histories) == 3
    p = [_params(m, backend) for m in bag.members]
    assert not np.allclose(p[0]["layers.0.W"], p[1]["layers.0.W"])
    for idx in bag.indices:
        assert idx.shape == (60,) and idx.min() >= 0 and idx.max() < 60
        assert len(np.unique(idx)) < 60          # drawn with replacement
    assert not np.array_equal(bag.indices[0], bag.indices[1])
    again = _bagging(seed=5)
    again.fit(Xb, yb)
    for a, b in zip(p, (_params(m, backend) for m in again.members)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # one member, rebuilt by hand from the seed alone
    s = member_seed(5, 1)
    idx = np.random.default_rng([5, 1]).integers(0, 60, size=60)
    np.testing.assert_array_equal(bag.indices[1], idx)
    net = Sequential(Linear(4, 8), ReLU(), Linear(8, 3)).initialize(s)
    Trainer(net, loss=SoftmaxCrossEntropy(), optimizer=SGD(lr=0.1, momentum=0.9), batch_size=16, epochs=4,
            seed=s, progress=False).fit(backend.asarray(X[idx]), backend.asarray(y[idx]))
    for k, v in _params(net, backend).items():
        np.testing.assert_array_equal(v, p[1][k], err_msg=k)
    other = _bagging(seed=6)
    other.fit(Xb, yb)
    assert not np.allclose(_params(other.members[0], backend)["layers.0.W"], p[0]["layers.0.W"])


def test_bagging_average_and_vote(backend):
    X, y = _blobs(60)
    Xb = backend.asarray(X)
    bag = _bagging(seed=1)
    bag.fit(Xb, backend.asarray(y))
    member = np.stack([backend.numpy(m.predict_proba(Xb)) for m in bag.members])      # (3, 60, 3)
    P = bag.predict_proba(Xb)
    assert B.namespace(P) is backend.xp
    P = backend.numpy(P)
    assert P.shape == (60, 3)
    np.testing.assert_allclose(P, member.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(backend.numpy(bag.predict(Xb)), member.mean(axis=0).argmax(axis=1))
    labels = member.argmax(axis=2)
    counts = np.stack([(labels == c).sum(axis=0) for c in range(3)], axis=1)
    V = backend.numpy(bag.votes(Xb))
    np.testing.assert_array_equal(V, counts)
    assert V.shape == (60, 3) and np.all(V.sum(axis=1) == 3)
    shares = backend.numpy(bag.predict_proba(Xb, combine="vote"))
    np.testing.assert_allclose(shares, counts / 3.0, rtol=1e-6)
    voted = backend.numpy(bag.predict(Xb, combine="vote"))
    assert voted.shape == (60,) and voted.dtype == np.int64
    np.testing.assert_array_equal(voted, counts.argmax(axis=1))
    assert np.mean(voted == y) > 0.8           # the blobs are easy: the ensemble learned them


def test_bagging_errors(rng):
    with pytest.raises(ValueError, match="combine"):
        _bagging(combine="median")
    with pytest.raises(ValueError, match="n_members"):
        _bagging(n_members=0)
    with pytest.raises(TypeError, match="optimizer"):
        _bagging(optimizer="sgd")
    bag = _bagging()
    with pytest.raises(ValueError, match="fit"):
        bag.predict(rng.standard_normal((2, 4)).astype(np.float32))
    net = Sequential(Linear(4, 3))
    shared = Bagging(lambda: net, n_members=2, epochs=1, progress=False)
    X, y = _blobs(12)
    with pytest.raises(ValueError, match="new one"):
        shared.fit(X, y)
