"""Properties of :class:`xpdnn.step.AllReduceGrads`, the data-parallel gradient sink, checked in
this process (tests/MUTATION.md): ``tests/test_distributed.py`` runs real MPI/gloo jobs in
subprocesses, which a mutation run cannot trace.

The ranks here are threads of this process, one per rank, each with its own network, loss,
optimizer and trainer, joined by :class:`ThreadComm`, an in-memory :class:`Communicator`: it
implements the two host primitives and the barrier an engine implements (``_allreduce_host_``,
``_broadcast_host_``, ``barrier``; the base class builds ``allreduce``, ``allreduce_values``,
``allgather_values``, ``check_same`` and ``broadcast_params`` on them, as for MPI and gloo).
Every rank sums the contributions in rank order, so the ranks stay bitwise equal, and a
collective whose buffers differ in shape or dtype between ranks fails on every rank (a real
engine would hang or mix up data).

The properties: N ranks follow the one-process run (weights, history) to float64 rounding with
unequal shards, a rank without rows, class weights and ``ignore_index``, sums and regression
losses; one all-reduce of one packed buffer per step; on NumPy the gradients are views of that
buffer (its last slot the loss) into which the weight GEMMs write; other libraries (PyTorch,
array-api-strict) take the concat path with the same numbers and dtypes; a NaN on one rank's
shard stops every rank alike.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn import distributed
from xpdnn.distributed.comm import Communicator, DistributedError, LocalComm
from xpdnn.layers.base import ACCUMULATE, Layer
from xpdnn.random import Stream
from xpdnn.step import AllReduceGrads, Step, StepGrads

BARRIER_TIMEOUT = 10.0       # seconds: a rank left waiting fails the test instead of hanging it


# -- the in-memory communicator ----------------------------------------------------------------

class _Group:
    """What the ranks of one job share: a barrier, one slot per rank, each rank's log."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=BARRIER_TIMEOUT)
        self.slots = [None] * size
        self.calls = [[] for _ in range(size)]      # per rank: (collective, number of elements)


class ThreadComm(Communicator):
    """Rank ``rank`` of a job whose ranks are threads of this process."""

    backend = "threads"

    def __init__(self, group, rank):
        self.group, self.rank, self.size, self.local_rank = group, rank, group.size, rank

    def _exchange(self, a):
        g = self.group
        g.slots[self.rank] = np.array(a, copy=True)
        g.barrier.wait()
        got = list(g.slots)
        g.barrier.wait()                            # everyone has read the slots before they are reused
        kinds = {(x.shape, x.dtype.str) for x in got}
        if len(kinds) > 1:
            raise DistributedError(f"the ranks passed different buffers to one collective: {sorted(kinds)}")
        return got

    def _allreduce_host_(self, a):
        self.group.calls[self.rank].append(("allreduce", a.size))
        got = self._exchange(a)
        total = got[0].copy()
        for x in got[1:]:
            total += x
        a[...] = total

    def allreduce(self, buf):
        """NumPy through the base class (in place); a CuPy array in place too, as the engines'
        device paths (NCCL) do it."""
        if self.size > 1 and B.is_cupy(buf):
            host = np.ascontiguousarray(B.to_numpy(buf)).copy()
            self._allreduce_host_(host)
            buf[...] = B.from_numpy(host, like=buf)
            return buf
        return super().allreduce(buf)

    def _broadcast_host_(self, a, root):
        self.group.calls[self.rank].append(("broadcast", a.size))
        a[...] = self._exchange(a)[root]

    def barrier(self):
        self.group.calls[self.rank].append(("barrier", 0))
        self.group.barrier.wait()


class CopyingThreadComm(ThreadComm):
    """An engine without a device path for the array: the sum comes back as a new array (what
    :meth:`Communicator.allreduce` does for every array it cannot sum in place)."""

    def allreduce(self, buf):
        if self.size == 1:
            return buf
        host = np.array(B.to_numpy(buf), copy=True)
        self._allreduce_host_(host)
        return B.from_numpy(host, like=buf)


def run_ranks(size, fn, comm_type=None):
    """``fn(comm)`` on ``size`` thread ranks; returns (results, errors, group).  A rank that
    raises breaks the barrier, so the others fail at their next collective instead of waiting."""
    group = _Group(size)
    results, errors = [None] * size, [None] * size
    comm_type = comm_type or ThreadComm

    def target(r):
        try:
            results[r] = fn(comm_type(group, r))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors[r] = exc
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(4 * BARRIER_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a rank is still running"
    return results, errors, group


def on_ranks(size, fn, comm_type=None):
    """Like :func:`run_ranks`, re-raising a rank's error (the first one that is not a broken barrier)."""
    results, errors, group = run_ranks(size, fn, comm_type)
    raised = [e for e in errors if e is not None]
    if raised:
        real = [e for e in raised if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or raised)[0]
    return results, group


@pytest.fixture(autouse=True)
def _no_current_communicator(monkeypatch):
    """A Trainer given a communicator adopts it as ``distributed.current()``; put it back."""
    monkeypatch.setattr(distributed, "_CURRENT", None)


# -- networks, data, reference runs ------------------------------------------------------------

class _ScalarGain(Layer):
    """``Y = g X`` with a 0-d parameter ``g`` (a scalar parameter has one slot in the buffer)."""

    def __init__(self, value: float = 1.25, dtype: str = "float64"):
        super().__init__(dtype)
        self.value = float(value)
        self.set_parameters(g=np.asarray(self.value))

    def get_config(self):
        return {"value": self.value, "dtype": self.dtype}

    def reset_parameters(self, rng=None):
        self.set_parameters(g=np.asarray(self.value))

    def forward(self, X, *, train=False, rng=None):
        xp = B.namespace(X)
        g = self.params["g"]
        Y = X * g

        def backprop(dY, sink=ACCUMULATE):
            sink.add(self, "g", xp.reshape(xp.sum(dY * X), tuple(g.shape)))
            return dY * g

        return Y, backprop


class _Float32Shift(Layer):
    """``Y = X + b`` whose parameter ``b`` (and its gradient) stay float32 in a float64 net:
    the gradients then have two dtypes, which no single flat buffer holds."""

    def __init__(self, n: int, dtype: str = "float64"):
        super().__init__(dtype)
        self.n = int(n)
        self.reset_parameters()

    def get_config(self):
        return {"n": self.n, "dtype": self.dtype}

    def reset_parameters(self, rng=None):
        self.params["b"] = np.linspace(-0.5, 0.5, self.n).astype(np.float32)
        self._reset_grads()

    def keep_float32(self):
        """Back to float32 after ``Sequential.to`` cast every parameter to the layer's dtype."""
        b = self.params["b"]
        self.params["b"] = B.namespace(b).astype(b, B.namespace(b).float32)
        self._reset_grads()

    def forward(self, X, *, train=False, rng=None):
        xp = B.namespace(X)
        b = self.params["b"]
        Y = X + xp.astype(b, X.dtype)

        def backprop(dY, sink=ACCUMULATE):
            sink.add(self, "b", xp.astype(xp.sum(dY, axis=0), b.dtype))
            return dY

        return Y, backprop


def mlp(dtype="float64", dropout=0.0):
    layers = [xd.Linear(5, 7, dtype=dtype), xd.Tanh(dtype=dtype)]
    if dropout:
        layers.append(xd.Dropout(dropout, dtype=dtype))
    return xd.Sequential(*layers, xd.Linear(7, 3, dtype=dtype))


NETS = {
    "mlp": mlp,
    "gain": lambda: xd.Sequential(xd.Linear(5, 4, dtype="float64"), _ScalarGain(), xd.Tanh(dtype="float64"),
                                  xd.Linear(4, 3, dtype="float64")),
    "one_param": lambda: xd.Sequential(xd.Linear(5, 3, use_bias=False, dtype="float64")),
    "mixed": lambda: xd.Sequential(xd.Linear(5, 4, dtype="float64"), _Float32Shift(4), _ScalarGain(),
                                   xd.Tanh(dtype="float64"), xd.Linear(4, 3, dtype="float64")),
}


def data(n, *, seed=0, d=5, classes=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (np.arange(n) * 7 + rng.integers(0, classes, n)) % classes
    return X, y.astype(np.int64)


def to_numpy_dict(arrays):
    return {k: np.array(B.to_numpy(v), copy=True) for k, v in arrays.items()}


def history(h):
    return {k: np.asarray(v, dtype=np.float64) for k, v in h.items() if k not in ("time", "samples_per_s")}


def train(comm, make_net, make_loss, X, y, *, optimizer, batch_size, epochs=3, **kw):
    net = make_net()
    tr = xd.Trainer(net, loss=make_loss(), optimizer=optimizer(), batch_size=batch_size, epochs=epochs, seed=5,
                    progress=0, comm=comm, **kw)
    h = tr.fit(X, y)
    return to_numpy_dict(net.state_arrays()), history(h), tr


def assert_same_run(got, ref, rtol=1e-11, atol=1e-13):
    (w, h, _), (w1, h1, _) = got, ref
    assert set(w) == set(w1)
    for k in w1:
        np.testing.assert_allclose(w[k], w1[k], rtol=rtol, atol=atol, err_msg=k)
    assert set(h) == set(h1)
    for k in h1:
        np.testing.assert_allclose(h[k], h1[k], rtol=rtol, atol=atol, err_msg=k)


OPTIMIZERS = {
    "adam": lambda: xd.Adam(lr=0.05),
    # plain SGD on NumPy fuses into the GEMM in one process; data-parallel must not
    "sgd": lambda: xd.SGD(lr=0.2, momentum=0.9),
}


# -- N ranks follow the one-process run ----------------------------------------------------------

@pytest.mark.parametrize("ranks, n, batch_size", [
    (2, 10, 7),          # shards of 3 and 4, then a remainder batch of 3: 1 and 2
    (3, 10, 4),          # shards 1/1/2, and a remainder of 2 rows: rank 0 has none
    (3, 11, 3),          # one row per rank, then 0/1/1
])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_ranks_follow_the_one_process_run(backend, ranks, n, batch_size, opt):
    X, y = data(n)
    Xb, yb = backend.asarray(X), backend.asarray(y)
    make = lambda: mlp(dropout=0.25)
    kw = dict(optimizer=OPTIMIZERS[opt], batch_size=batch_size, epochs=3)
    ref = train(LocalComm(), make, xd.SoftmaxCrossEntropy, Xb, yb, **kw)
    runs, group = on_ranks(ranks, lambda comm: train(comm, make, xd.SoftmaxCrossEntropy, Xb, yb, **kw))
    for got in runs:
        assert_same_run(got, ref)
    for w, _, _ in runs[1:]:                       # the ranks stay bitwise equal
        for k in w:
            np.testing.assert_array_equal(w[k], runs[0][0][k], err_msg=k)
    # one all-reduce of the packed gradients and loss per step, on every rank
    steps = 3 * -(-n // batch_size)
    size = make().n_params() + 1
    for calls in group.calls:
        assert sum(1 for kind, m in calls if kind == "allreduce" and m == size) == steps
        assert calls == group.calls[0]


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("case", ["weighted", "sum", "mse"])
def test_weighted_summed_and_regression_losses_follow_the_one_process_run(ranks, case):
    """Unequal shards (batches of 7) with class weights and ignored labels, a summed loss and a
    mean squared error give the one-process run."""
    X, y = data(23, seed=1)
    if case == "weighted":
        y = y.copy()
        y[::4] = -100
        make_loss = lambda: xd.SoftmaxCrossEntropy(weight=[1.0, 2.5, 0.5], ignore_index=-100)
    elif case == "sum":
        make_loss = lambda: xd.SoftmaxCrossEntropy(reduction="sum")
    else:
        make_loss = xd.MSE
        y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2], np.cos(X[:, 3])], axis=1)
    kw = dict(optimizer=lambda: xd.Adam(lr=0.02), batch_size=7, epochs=2)
    ref = train(LocalComm(), mlp, make_loss, X, y, **kw)
    runs, _ = on_ranks(ranks, lambda comm: train(comm, mlp, make_loss, X, y, **kw))
    for got in runs:
        assert_same_run(got, ref)


# -- one step: the gradient and loss of the global batch ---------------------------------------

def one_step(comm, make_net, make_loss, X, y, *, like=None):
    """One Step on ``comm``'s contiguous shard of the global batch (X, y), as the trainer takes
    it (``comm=None``: the whole batch through the one-process sink); returns (loss, gradients
    by parameter key, the net, the sink)."""
    net = make_net()
    net.initialize(3)
    if like is not None and not B.is_numpy(like):     # (moving would make a 0-d parameter (1,))
        net.to(like=like)
    for _, layer in net.named_layers():
        if isinstance(layer, _Float32Shift):
            layer.keep_float32()
    rows = X.shape[0]
    lo, hi = (comm.rank * rows // comm.size, (comm.rank + 1) * rows // comm.size) if comm else (0, rows)
    sink = AllReduceGrads((net,), comm) if comm else StepGrads((net,))
    step = Step(net, make_loss(), xd.SGD(lr=0.1), sink=sink)
    rng = Stream(3)
    rng.first_row = lo
    seen = []
    loss, _ = step(X[lo:hi, ...], y[lo:hi, ...], rng, seen.append, global_rows=rows)
    assert len(seen) == 1 and seen[0] is loss            # the guard saw the loss the step returns
    grads = {f"{path}/{name}": layer.grads[name] for path, layer, name in net.parameters()}
    return loss, grads, net, sink


def assert_same_step(got, ref, rtol=1e-12, atol=1e-14):
    """The same loss and gradients (dtype, shape, values: to float64 rounding, float32 rounding
    for float32 ones, which the ranks round before they are summed)."""
    loss, grads = got[0], got[1]
    loss1, grads1 = ref[0], ref[1]
    assert B.dtype_name(loss.dtype) == B.dtype_name(loss1.dtype)
    np.testing.assert_allclose(B.to_numpy(loss), B.to_numpy(loss1), rtol=rtol, atol=atol)
    assert set(grads) == set(grads1)
    for k in grads1:
        assert B.dtype_name(grads[k].dtype) == B.dtype_name(grads1[k].dtype), k
        assert tuple(grads[k].shape) == tuple(grads1[k].shape), k
        tol = dict(rtol=max(rtol, 2e-6), atol=max(atol, 1e-7)) if B.dtype_name(grads1[k].dtype) == "float32" \
            else dict(rtol=rtol, atol=atol)
        np.testing.assert_allclose(B.to_numpy(grads[k]), B.to_numpy(grads1[k]), err_msg=k, **tol)


LOSSES = {
    "plain": xd.SoftmaxCrossEntropy,
    "weighted": lambda: xd.SoftmaxCrossEntropy(weight=[1.0, 2.5, 0.5], ignore_index=-100),
    "ignore": lambda: xd.SoftmaxCrossEntropy(ignore_index=-100),
    "small_weights": lambda: xd.SoftmaxCrossEntropy(weight=[0.1, 0.05, 0.2]),   # summed weights < 1
    "sum": lambda: xd.SoftmaxCrossEntropy(reduction="sum"),
    "mse": xd.MSE,
}


def targets(case, n, seed=2):
    X, y = data(n, seed=seed)
    if case in ("weighted", "ignore"):
        y = y.copy()
        y[1::3] = -100                    # some shards have no counted label at all
    if case == "mse":
        y = np.stack([np.sin(X[:, 0]), X[:, 1] - X[:, 2], X[:, 3] * X[:, 4]], axis=1)
    return X, y


STEP_CASES = [("mlp", case) for case in sorted(LOSSES)] + \
    [(net, case) for net in sorted(NETS) if net != "mlp" for case in ("plain", "weighted")]


@pytest.mark.parametrize("ranks, rows", [(2, 7), (3, 2), (3, 3), (2, 1)])
@pytest.mark.parametrize("net, case", STEP_CASES)
def test_one_step_gives_the_global_batchs_gradient_and_loss(backend, net, case, ranks, rows):
    """Every rank ends the step with the one-process gradient and loss of the whole batch, in
    their dtypes; shards of 0, 1 and more rows; a 0-d parameter, a single parameter and
    parameters of two dtypes."""
    X, y = targets(case, rows)
    Xb, yb = backend.asarray(X), backend.asarray(y)
    make_net, make_loss = NETS[net], LOSSES[case]
    ref = one_step(None, make_net, make_loss, Xb, yb, like=Xb)
    runs, _ = on_ranks(ranks, lambda comm: one_step(comm, make_net, make_loss, Xb, yb, like=Xb))
    for got in runs:
        assert_same_step(got, ref)


@pytest.mark.parametrize("case", ["plain", "weighted", "mse"])
def test_a_sum_returned_as_a_new_array_still_reaches_the_gradients(backend, case):
    """An engine that returns the all-reduced buffer as a new array (no in-place path for it):
    the gradients, views of the sink's buffer, still end up summed over the ranks."""
    X, y = targets(case, 7)
    Xb, yb = backend.asarray(X), backend.asarray(y)
    ref = one_step(None, mlp, LOSSES[case], Xb, yb, like=Xb)
    runs, _ = on_ranks(2, lambda comm: one_step(comm, mlp, LOSSES[case], Xb, yb, like=Xb), CopyingThreadComm)
    for got in runs:
        assert_same_step(got, ref)


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_global_batch_without_counted_labels_has_zero_loss_and_gradient(backend, ranks):
    """Every label of the global batch ignored: the weighted mean's denominator is 0 on every
    rank; the loss and gradient are 0, as in one process (no division by zero)."""
    X, _ = data(5)
    y = np.full(5, -100, dtype=np.int64)
    Xb, yb = backend.asarray(X), backend.asarray(y)
    for make_loss in (LOSSES["weighted"], LOSSES["ignore"]):
        ref = one_step(None, mlp, make_loss, Xb, yb, like=Xb)
        assert float(B.to_numpy(ref[0])) == 0.0
        runs, _ = on_ranks(ranks, lambda comm: one_step(comm, mlp, make_loss, Xb, yb, like=Xb))
        for got in runs:
            assert_same_step(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("ranks, rows", [(2, 7), (3, 3), (3, 2), (2, 1)])
def test_a_net_without_parameters_still_gets_the_global_loss(backend, ranks, rows):
    """No gradient to pack: the buffer holds the loss alone, summed over the ranks."""
    X, y = targets("mse", rows)
    Xb, yb = backend.asarray(X[:, :3]), backend.asarray(y)
    make_net = lambda: xd.Sequential(xd.Tanh(dtype="float64"))
    ref = one_step(None, make_net, xd.MSE, Xb, yb, like=Xb)
    runs, _ = on_ranks(ranks, lambda comm: one_step(comm, make_net, xd.MSE, Xb, yb, like=Xb))
    for got in runs:
        assert_same_step(got, ref)


@pytest.mark.parametrize("ranks, rows", [(2, 7), (3, 7), (3, 2)])
def test_float32_steps_keep_float32_loss_and_gradients(backend, ranks, rows):
    """A float32 net: the global loss and gradients stay float32 (the buffer, or the concat
    path, is not widened, not even by a rank without rows), to float32 rounding of the
    one-process step."""
    X, y = data(rows, seed=4)
    Xb, yb = backend.asarray(X, dtype=np.float32), backend.asarray(y)
    make_net = lambda: mlp("float32")
    ref = one_step(None, make_net, xd.SoftmaxCrossEntropy, Xb, yb, like=Xb)
    assert B.dtype_name(ref[0].dtype) == "float32"
    runs, _ = on_ranks(ranks, lambda comm: one_step(comm, make_net, xd.SoftmaxCrossEntropy, Xb, yb, like=Xb))
    for got in runs:
        assert_same_step(got, ref, rtol=2e-6, atol=1e-7)


# -- the packed buffer on NumPy ----------------------------------------------------------------

def test_numpy_gradients_are_views_of_one_buffer_whose_last_slot_is_the_loss(monkeypatch):
    """After ``finish`` every gradient is a view of one flat buffer, in parameter order, with
    nothing between them and the loss in the last slot; the weight GEMMs write into those
    views; the buffer is kept from step to step; a step's loss is not changed by the next."""
    from xpdnn import kernels

    gemm_outs = []
    real = kernels.matmul_tn

    def spy(dY, X, out=None):
        res = real(dY, X, out=out)
        gemm_outs.append((out, res))
        return res

    monkeypatch.setattr(kernels, "matmul_tn", spy)
    X, y = data(9, seed=6)

    def run(comm):
        net = NETS["gain"]()
        net.initialize(0)
        sink = AllReduceGrads((net,), comm)
        step = Step(net, xd.SoftmaxCrossEntropy(), xd.SGD(lr=0.1), sink=sink)
        rows, lo, hi = 9, comm.rank * 9 // comm.size, (comm.rank + 1) * 9 // comm.size
        out = []
        for k in range(3):
            loss, _ = step(X[lo:hi], y[lo:hi], Stream(0), lambda loss: None, global_rows=rows)
            params = list(net.parameters())
            buf = sink.buffer
            assert isinstance(buf, np.ndarray) and buf.ndim == 1
            assert buf.size == sum(int(np.prod(layer.params[n].shape)) for _, layer, n in params) + 1
            start = 0
            for _, layer, name in params:
                g = layer.grads[name]
                assert g.shape == layer.params[name].shape and g.dtype == layer.params[name].dtype
                assert np.shares_memory(g, buf)
                n = int(np.prod(g.shape))
                np.testing.assert_array_equal(buf[start:start + n], np.reshape(g, -1))
                assert g.__array_interface__["data"][0] == buf[start:].__array_interface__["data"][0]
                start += n
            assert start == buf.size - 1
            assert float(buf[-1]) == float(loss) == float(sink.loss)
            out.append((buf, float(loss), loss))
        return out

    runs, _ = on_ranks(2, run)
    for out in runs:
        assert out[0][0] is out[1][0] is out[2][0]             # one buffer for the whole run
        for _, value, loss in out:
            assert float(loss) == value                           # not overwritten by a later step
    # every weight GEMM of the sinks wrote into the gradient's slot
    ours = [(o, r) for o, r in gemm_outs if o is not None]
    assert len(ours) == 2 * 3 * 2                               # 2 ranks, 3 steps, 2 Linear layers
    for out, res in ours:
        assert res is out and out.base is not None
    ref = one_step(None, NETS["gain"], xd.SoftmaxCrossEntropy, X, y)
    runs1, _ = on_ranks(2, lambda comm: one_step(comm, NETS["gain"], xd.SoftmaxCrossEntropy, X, y))
    for got in runs1:
        assert_same_step(got, ref)


def test_binding_moves_the_old_gradients_into_the_buffer():
    """``begin`` moves the gradients into the buffer: their values are kept, and they keep the
    parameters' shapes and dtype."""
    net = NETS["gain"]()
    net.initialize(0)
    rng = np.random.default_rng(0)
    before = {}
    for path, layer, name in net.parameters():
        layer.grads[name] = rng.standard_normal(layer.params[name].shape)
        before[(path, name)] = layer.grads[name].copy()
    sink = AllReduceGrads((net,), LocalComm())
    sink.begin()
    for path, layer, name in net.parameters():
        g = layer.grads[name]
        assert np.shares_memory(g, sink.buffer)
        assert g.shape == before[(path, name)].shape
        np.testing.assert_array_equal(g, before[(path, name)])


class _Sub(np.ndarray):
    """A NumPy subclass: ``kernels.matmul_tn`` returns a new product for it, not ``out``."""


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_the_sink_sums_accumulates_and_zeroes_like_the_step_sink(library):
    """Driven directly: a parameter's second gradient in a step accumulates (a shared layer), a
    product ``matmul_tn`` does not write into the slot is copied there, a parameter without a
    gradient is zeroed; ``finish`` sums everything and the shares over the ranks."""
    if library == "torch":
        torch = pytest.importorskip("torch")
        conv = lambda a: torch.from_numpy(a.copy())      # backprop hands over new arrays
    else:
        conv = lambda a: a.copy()
    rng = np.random.default_rng(1)
    parts = [{"dY": rng.standard_normal((4, 2)), "X": rng.standard_normal((4, 3)), "b1": rng.standard_normal(2),
              "b2": rng.standard_normal(2), "dY2": rng.standard_normal((4, 2)), "X2": rng.standard_normal((4, 3)),
              "share": float(r + 1) / 8} for r in range(3)]

    def run(comm):
        lin, other = xd.Linear(3, 2, dtype="float64"), xd.Linear(2, 2, dtype="float64")
        net = xd.Sequential(lin, xd.Tanh(dtype="float64"), other)
        net.initialize(0)
        if library == "torch":
            net.to(like=conv(np.zeros(1)))
        sink = AllReduceGrads((net,), comm)
        p = parts[comm.rank]
        for k in range(2):                                      # two steps: the second reuses the buffer
            sink.begin()
            X1 = p["X"].view(_Sub) if library == "numpy" else conv(p["X"])
            sink.matmul_grad(lin, "W", conv(p["dY"]), X1)
            sink.matmul_grad(lin, "W", conv(p["dY2"]), conv(p["X2"]))
            sink.add(lin, "b", conv(p["b1"]))
            sink.add(lin, "b", conv(p["b2"]))
            stale = other.grads["W"]
            stale += 1.0                                        # no gradient for `other` this step
            sink.share = B.namespace(lin.params["W"]).asarray(p["share"], dtype=lin.params["W"].dtype)
            sink.finish()
        return ({k: np.array(B.to_numpy(v)) for k, v in
                 [("W", lin.grads["W"]), ("b", lin.grads["b"]), ("oW", other.grads["W"]),
                  ("ob", other.grads["b"])]}, float(B.to_numpy(sink.loss)))

    runs, _ = on_ranks(3, run)
    W = sum(p["dY"].T @ p["X"] + p["dY2"].T @ p["X2"] for p in parts)
    b = sum(p["b1"] + p["b2"] for p in parts)
    for grads, loss in runs:
        np.testing.assert_allclose(grads["W"], W, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(grads["b"], b, rtol=1e-13, atol=1e-14)
        np.testing.assert_array_equal(grads["oW"], np.zeros((2, 2)))
        np.testing.assert_array_equal(grads["ob"], np.zeros(2))
        assert loss == pytest.approx(sum(p["share"] for p in parts), rel=1e-15)


# -- the NaN guard reads the global loss ---------------------------------------------------------

@pytest.mark.parametrize("ranks", [2, 3])
def test_a_nan_on_one_ranks_shard_stops_every_rank_alike(ranks):
    """The loss of the last rank's shard turns NaN at its 4th step: every rank raises
    TrainingError (none waits for the others) and rolls back to the same weights."""
    X, y = data(40, seed=3)

    def run(comm):
        class Flaky(xd.SoftmaxCrossEntropy):
            calls = 0

            def __call__(self, Z, y, **kw):
                loss, dZ = super().__call__(Z, y, **kw)
                Flaky.calls += 1
                return (loss * np.nan, dZ) if comm.rank == comm.size - 1 and Flaky.calls == 4 else (loss, dZ)

        net = mlp()
        tr = xd.Trainer(net, loss=Flaky(), optimizer=xd.SGD(lr=0.1), batch_size=7, epochs=1, seed=5, progress=0,
                        comm=comm, snapshot_every=1)
        with pytest.raises(xd.TrainingError, match="epoch 1, step 4"):
            tr.fit(X, y)
        return to_numpy_dict(net.state_arrays()), tr.global_step

    runs, _ = on_ranks(ranks, run)
    [(w1, steps1)], _ = on_ranks(1, run)                 # the same fault in one process
    for w, steps in runs:
        assert steps == steps1 < 4
        for k in w:
            np.testing.assert_array_equal(w[k], runs[0][0][k], err_msg=k)
            np.testing.assert_allclose(w[k], w1[k], rtol=1e-12, atol=1e-14, err_msg=k)


# -- what data-parallel training refuses ---------------------------------------------------------

@pytest.mark.parametrize("case", ["loss with parameters", "fused_step=True"])
def test_every_rank_refuses_before_any_collective(case):
    """A loss with parameters and ``fused_step=True`` are refused on every rank before any
    collective starts (no rank is left waiting) and before any state changes."""
    X, y = data(12)

    def run(comm):
        if case == "fused_step=True":
            net = mlp()
            tr = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), fused_step=True,
                            comm=comm, progress=0)
        else:
            net = xd.Sequential(xd.Linear(5, 6, dtype="float64"))
            tr = xd.Trainer(net, loss=xd.HierarchicalSoftmax(6, 3), optimizer=xd.SGD(lr=0.1), comm=comm,
                            progress=0)
        with pytest.raises(ValueError, match=case.split("=")[0]):
            tr.fit(X, y)
        return tr.epoch, tr.global_step, getattr(net, "fresh", None)

    runs, group = on_ranks(2, run)
    assert runs == [(0, 0, True)] * 2
    assert group.calls == [[], []]
