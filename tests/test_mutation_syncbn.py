"""Properties of :class:`xpdnn.SyncBatchNorm` checked in this process (tests/MUTATION.md):
``tests/test_distributed.py`` runs the real 2-rank jobs in subprocesses, which a mutation run
cannot trace.

The ranks are threads joined by the in-memory communicator of ``test_mutation_step.py``.
``SyncBatchNorm`` finds its communicator with :func:`xpdnn.distributed.current`, one per process;
here each thread must see its own rank, so the current communicator is a small proxy that hands
every attribute to the calling thread's :class:`ThreadComm`.

The reference is the one-process batch normalization of the whole global batch, as
``torch.nn.SyncBatchNorm`` promises (https://pytorch.org/docs/stable/generated/torch.nn.SyncBatchNorm.html):
mean and biased variance over all ranks' rows normalize each rank's rows; the running statistics
follow ``running = (1 - momentum) * running + momentum * stat`` with the unbiased variance of
the global batch (https://pytorch.org/docs/stable/generated/torch.nn.BatchNorm1d.html); the
backward pass gives each rank its rows of the global input gradient, and the parameter gradients
summed over the ranks are the global batch's.  Evaluation uses the running statistics and needs
no collective.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn import distributed
from xpdnn.layers.normalization import BatchNorm1d, SyncBatchNorm
from test_mutation_step import ThreadComm, _Group, on_ranks

F = 3
MOMENTUM = 0.3
EPS = 1e-5

_tls = threading.local()


class _ThisThreadsComm:
    """What :func:`xpdnn.distributed.current` returns here: the calling thread's rank."""

    def __getattr__(self, name):
        return getattr(_tls.comm, name)

    def allreduce(self, buf):
        """The rank's all-reduce, noting the dtype of the buffer on the wire."""
        _tls.wire.append(B.to_numpy(buf).dtype.name)
        return _tls.comm.allreduce(buf)


class _NumpyBackend:
    """NumPy host arrays, for the tests that need no ``backend``."""

    name = "numpy"

    @staticmethod
    def asarray(a, dtype=None):
        return np.array(a, dtype=dtype, copy=True)


@pytest.fixture(autouse=True)
def _per_thread_current(monkeypatch):
    """Every thread rank sees its own communicator as ``distributed.current()``."""
    monkeypatch.setattr(distributed, "_CURRENT", _ThisThreadsComm())


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"gamma": rng.uniform(0.5, 2.0, F), "beta": rng.standard_normal(F),
            "running_mean": rng.standard_normal(F), "running_var": rng.uniform(0.5, 2.0, F)}


def _layer(cls, like, dtype, p):
    layer = cls(F, momentum=MOMENTUM, eps=EPS, dtype=dtype)
    layer.params["gamma"], layer.params["beta"] = p["gamma"], p["beta"]
    layer.buffers["running_mean"], layer.buffers["running_var"] = p["running_mean"], p["running_var"]
    return layer.to(like=like)


def _data(n, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, F)) * np.array([1.0, 3.0, 0.5]) + np.array([2.0, -1.0, 0.25])
    G = rng.standard_normal((n, F))
    return X, G


def _numpy_dict(d):
    return {k: B.to_numpy(v) for k, v in d.items()}


def one_process(backend, X, G, dtype, p):
    """Output, input gradient, parameter gradients and buffers of BatchNorm1d on the whole batch."""
    Xb = backend.asarray(X, dtype=dtype)
    bn = _layer(BatchNorm1d, Xb, dtype, p)
    Y, backprop = bn.forward(Xb, train=True)
    dX = backprop(backend.asarray(G, dtype=dtype))
    return B.to_numpy(Y), B.to_numpy(dX), _numpy_dict(bn.grads), _numpy_dict(bn.buffers)


def _enter(comm):
    _tls.comm, _tls.wire = comm, []


def sync_ranks(backend, X, G, dtype, p, shards):
    """The same on ``len(shards)`` thread ranks, rank r holding the next ``shards[r]`` rows."""
    bounds = np.cumsum([0, *shards])

    def run(comm):
        _enter(comm)
        lo, hi = bounds[comm.rank], bounds[comm.rank + 1]
        Xr = backend.asarray(X[lo:hi], dtype=dtype)
        bn = _layer(SyncBatchNorm, Xr, dtype, p)
        Y, backprop = bn.forward(Xr, train=True)
        dX = backprop(backend.asarray(G[lo:hi], dtype=dtype))
        return Y, dX, bn.grads, bn.buffers, _tls.wire

    return on_ranks(len(shards), run)


def _errors_on_ranks(size, fn):
    """Each thread rank's exception (or None): unlike ``run_ranks`` a raising rank does not
    break the barrier, so every rank reaches its own error (a rank left waiting times out)."""
    group, errors = _Group(size), [None] * size

    def target(r):
        try:
            fn(ThreadComm(group, r))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors[r] = exc

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a rank is still running"
    return errors


def _check_against_one_process(backend, shards, dtype, rtol, atol):
    n = int(sum(shards))
    X, G = _data(n)
    p = _params()
    Y, dX, grads, bufs = one_process(backend, X, G, dtype, p)
    results, group = sync_ranks(backend, X, G, dtype, p, shards)
    # each rank's rows, in the input's library and dtype
    for name, got, want in (("output", 0, Y), ("input gradient", 1, dX)):
        parts = [r[got] for r in results]
        assert all(B.to_numpy(a).dtype == np.dtype(dtype) for a in parts), name
        assert all(B.namespace(a) is B.namespace(backend.asarray(X)) for a in parts), name
        np.testing.assert_allclose(np.concatenate([B.to_numpy(a) for a in parts]), want, rtol=rtol, atol=atol,
                                   err_msg=name)
    # the parameter gradients, summed over the ranks as the data-parallel sink does
    for k in ("gamma", "beta"):
        total = sum(B.to_numpy(r[2][k]) for r in results)
        assert total.dtype == np.dtype(dtype)
        np.testing.assert_allclose(total, grads[k], rtol=rtol, atol=atol, err_msg=k)
    # the running statistics: the same on every rank, those of the global batch
    assert all(set(r[3]) == {"running_mean", "running_var"} for r in results)
    for k in ("running_mean", "running_var"):
        for r in results:
            got = B.to_numpy(r[3][k])
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_allclose(got, bufs[k], rtol=rtol, atol=atol, err_msg=k)
    # two all-reduces forward (sums and count, then squared deviations), one backward
    for calls in group.calls:
        assert calls == [("allreduce", F + 1), ("allreduce", F), ("allreduce", 2 * F)]
    return results


@pytest.mark.parametrize("shards", [(3, 4), (4, 0, 3), (1, 5, 1), (2, 2, 3), (1, 1)])
def test_ranks_normalize_as_one_process_on_the_global_batch(backend, shards):
    """Unequal shards, a rank without rows, a rank with one row, a global batch of 2: each rank
    gets its rows of BatchNorm1d's output and input gradient on the whole batch; the summed
    parameter gradients and every rank's running statistics are the whole batch's."""
    _check_against_one_process(backend, shards, "float64", rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shards", [(3, 4), (0, 6, 1)])
def test_float32_stays_float32_end_to_end(backend, shards):
    """A float32 layer: float32 outputs, gradients and buffers equal to BatchNorm1d's to float32
    rounding."""
    _check_against_one_process(backend, shards, "float32", rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_collectives_carry_the_layers_precision(dtype):
    """Every buffer the layer all-reduces has the input's precision: a float32 model moves
    float32 sums, a float64 model keeps float64 sums (nothing rounded to float32)."""
    X, G = _data(7)
    results, _ = sync_ranks(_NumpyBackend(), X, G, dtype, _params(), (3, 4))
    assert [r[4] for r in results] == [[dtype] * 3, [dtype] * 3]


def test_running_variance_is_torchs_unbiased_global_variance():
    """The running statistics after two steps equal ``torch.nn.BatchNorm1d``'s on the whole
    batch: momentum 0.3 and the unbiased variance with the global count (7 rows, not 3 or 4)."""
    torch = pytest.importorskip("torch")
    p = _params()
    tbn = torch.nn.BatchNorm1d(F, momentum=MOMENTUM, eps=EPS, dtype=torch.float64)
    with torch.no_grad():
        tbn.running_mean.copy_(torch.from_numpy(p["running_mean"]))
        tbn.running_var.copy_(torch.from_numpy(p["running_var"]))
    tbn.train()
    steps = [_data(7, seed=s)[0] for s in (3, 4)]
    for X in steps:
        tbn(torch.from_numpy(X))

    def run(comm):
        _enter(comm)
        lo, hi = ((0, 3), (3, 7))[comm.rank]
        bn = _layer(SyncBatchNorm, np.zeros(1), "float64", p)
        for X in steps:
            bn.forward(X[lo:hi].copy(), train=True)
        return _numpy_dict(bn.buffers)

    results, _ = on_ranks(2, run)
    for bufs in results:
        np.testing.assert_allclose(bufs["running_mean"], tbn.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(bufs["running_var"], tbn.running_var.numpy(), rtol=1e-12, atol=1e-14)


def test_evaluation_uses_the_running_statistics_without_a_collective(backend):
    """``train=False`` (and the default, which is evaluation) on the ranks: BatchNorm1d's
    evaluation output and gradients, no collective, the running statistics untouched."""
    X, G = _data(7)
    p = _params()
    Xb = backend.asarray(X)
    ref = _layer(BatchNorm1d, Xb, "float64", p)
    Yr, bp = ref.forward(Xb, train=False)
    dXr = B.to_numpy(bp(backend.asarray(G)))
    Yr = B.to_numpy(Yr)

    def run(comm):
        _enter(comm)
        lo, hi = ((0, 3), (3, 7))[comm.rank]
        bn = _layer(SyncBatchNorm, Xb, "float64", p)
        out = []
        for kw in ({"train": False}, {}):
            Y, backprop = bn.forward(backend.asarray(X[lo:hi]), **kw)
            dX = backprop(backend.asarray(G[lo:hi]))
            out.append((B.to_numpy(Y), B.to_numpy(dX)))
        return out, _numpy_dict(bn.buffers)

    results, group = on_ranks(2, run)
    assert group.calls == [[], []]
    for rank, (out, bufs) in enumerate(results):
        lo, hi = ((0, 3), (3, 7))[rank]
        for Y, dX in out:
            np.testing.assert_allclose(Y, Yr[lo:hi], rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(dX, dXr[lo:hi], rtol=1e-14, atol=1e-15)
        np.testing.assert_array_equal(bufs["running_mean"], p["running_mean"])
        np.testing.assert_array_equal(bufs["running_var"], p["running_var"])


@pytest.mark.parametrize("train", [True, False])
def test_without_a_communicator_it_is_batchnorm1d(backend, monkeypatch, train):
    """In one process (no communicator, or one of size 1) SyncBatchNorm is BatchNorm1d, in
    training and in evaluation."""
    X, G = _data(5)
    p = _params()
    Xb = backend.asarray(X)

    def run(layer):
        Y, backprop = layer.forward(Xb, train=train)
        dX = backprop(backend.asarray(G))
        return [B.to_numpy(Y), B.to_numpy(dX), *_numpy_dict(layer.grads).values(), *_numpy_dict(layer.buffers).values()]

    want = run(_layer(BatchNorm1d, Xb, "float64", p))
    for comm in (None, distributed.comm.LocalComm()):
        monkeypatch.setattr(distributed, "_CURRENT", comm)
        got = run(_layer(SyncBatchNorm, Xb, "float64", p))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_a_global_batch_of_one_row_is_refused_on_every_rank():
    """One row over all the ranks (1 + 0) has no variance: every rank raises the same one-line
    error naming the global count, and no running statistic moves."""
    X, _ = _data(1)
    p = _params()

    def run(comm):
        _enter(comm)
        bn = _layer(SyncBatchNorm, np.zeros(1), "float64", p)
        try:
            bn.forward(X[: 1 - comm.rank].copy(), train=True)
        finally:
            _tls.bufs = _numpy_dict(bn.buffers)
            np.testing.assert_array_equal(_tls.bufs["running_mean"], p["running_mean"])
            np.testing.assert_array_equal(_tls.bufs["running_var"], p["running_var"])

    errors = _errors_on_ranks(2, run)
    for e in errors:
        assert isinstance(e, ValueError), e
        assert "SyncBatchNorm needs at least 2 samples per global batch in training, got 1" in str(e)


def test_a_wrong_feature_count_is_refused_naming_the_layer():
    """Input with the wrong number of features: a ValueError naming SyncBatchNorm and the shape
    it expects, before any collective."""
    X = np.ones((4, F + 1))

    def run(comm):
        _enter(comm)
        bn = SyncBatchNorm(F, dtype="float64")
        with pytest.raises(ValueError, match=r"^SyncBatchNorm expects input of shape \(N, 3\), got \(4, 4\)$"):
            bn.forward(X, train=True)

    _, group = on_ranks(2, run)
    assert group.calls == [[], []]


def test_it_is_exported_where_documented():
    assert xd.SyncBatchNorm is SyncBatchNorm
    assert distributed.SyncBatchNorm is SyncBatchNorm
