"""One rank of a data-parallel test job (tests/test_distributed.py starts it under mpiexec or
torchrun, or alone as the one-process reference): ``worker.py SCENARIO OUT_DIR [BACKEND]``.
Rank 0 writes its results to OUT_DIR/SCENARIO-<size>.npz."""

import os
import sys
import time

import numpy as np

import xpdnn as xd
from xpdnn import distributed
from xpdnn.random import keep_mask

scenario, out = sys.argv[1], sys.argv[2]
backend = sys.argv[3] if len(sys.argv) > 3 else "auto"
comm = distributed.init(backend)
rank, size = comm.rank, comm.size


def data(n=203, d=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y % classes


def save(**arrays):
    if rank == 0:
        np.savez(os.path.join(out, f"{scenario}-{size}.npz"), **arrays)


def trained(net, loss, opt, X, y, **kw):
    kw.setdefault("epochs", 3)
    tr = xd.Trainer(net, loss=loss, optimizer=opt, batch_size=kw.pop("batch_size", 16), seed=5, progress=0, **kw)
    return tr, tr.fit(X, y)


def history_arrays(h):
    return {f"h_{k}": np.array(v, dtype=np.float64) for k, v in h.items() if k not in ("time", "samples_per_s")}


if scenario == "smooth":            # tanh + dropout, float32, many steps: weights to float32 rounding
    X, y = data()
    net = xd.Sequential(xd.Linear(10, 32), xd.Tanh(), xd.Dropout(0.3), xd.Linear(32, 3))
    tr, h = trained(net, xd.SoftmaxCrossEntropy(), xd.SGD(lr=0.1, momentum=0.9), X.astype(np.float32), y, epochs=4)
    save(**net.state_arrays(), **history_arrays(h), counter=np.array(tr.rng.counter))
elif scenario == "torch_tensors":   # PyTorch tensors (the packed concat path), float64
    import torch
    X, y = data()
    net = xd.Sequential(xd.Linear(10, 16, dtype="float64"), xd.Tanh(), xd.Dropout(0.3, dtype="float64"),
                        xd.Linear(16, 3, dtype="float64"))
    tr, h = trained(net, xd.SoftmaxCrossEntropy(), xd.Adam(lr=0.01), torch.from_numpy(X), torch.from_numpy(y))
    save(**{k: v.numpy() for k, v in net.state_arrays().items()}, **history_arrays(h))
elif scenario == "masks":           # the masks a rank draws in training equal the one-process masks' rows
    rows, seen = [], []

    class Spy(xd.Dropout):
        def forward(self, X, *, train=False, rng=None):
            first = rng.first_row
            Y, bp = super().forward(X, train=train, rng=rng)
            seen.append((rng.counter - 1, first, X.shape[0], np.asarray(Y != 0), np.asarray(X != 0)))
            return Y, bp

    X, y = data(n=61)
    net = xd.Sequential(xd.Linear(10, 12, dtype="float64"), xd.ReLU(), Spy(0.4, dtype="float64"),
                        xd.Linear(12, 3, dtype="float64"))
    trained(net, xd.SoftmaxCrossEntropy(), xd.SGD(lr=0.05), X, y, epochs=2, batch_size=10)
    # the rank's rows of the one-process mask of the whole (10-row) batch, where the input is nonzero
    ok = all(np.array_equal(kept, keep_mask(5, c, (10, 12), 0.4)[first:first + n] & nonzero)
             for c, first, n, kept, nonzero in seen if n and first + n <= 10)
    ok = ok and all(np.array_equal(kept, keep_mask(5, c, (n, 12), 0.4, offset=first * 12) & nonzero)
                    for c, first, n, kept, nonzero in seen)
    firsts = comm.allgather_values([seen[0][1]])[:, 0]
    save(ok=np.array(ok), firsts=firsts, steps=np.array(len(seen)))
elif scenario == "weighted":        # unequal shards, class weights, ignore_index, float64: exact
    X, y = data(n=97)
    y = y.copy()
    y[::7] = -100
    net = xd.Sequential(xd.Linear(10, 8, dtype="float64"), xd.Tanh(), xd.Linear(8, 3, dtype="float64"))
    loss = xd.SoftmaxCrossEntropy(weight=[1.0, 2.5, 0.5], ignore_index=-100)
    tr, h = trained(net, loss, xd.Adam(lr=0.02), X, y, batch_size=7)
    save(**net.state_arrays(), **history_arrays(h))
elif scenario == "batchnorm":       # SyncBatchNorm over ranks == BatchNorm1d in one process
    X, y = data()
    bn = xd.SyncBatchNorm if size > 1 else xd.BatchNorm1d
    net = xd.Sequential(xd.Linear(10, 16, dtype="float64"), bn(16, dtype="float64"), xd.Tanh(),
                        xd.Linear(16, 3, dtype="float64"))
    tr, h = trained(net, xd.SoftmaxCrossEntropy(), xd.SGD(lr=0.1, momentum=0.9), X, y, batch_size=17, drop_last=True)
    save(**net.state_arrays(), **history_arrays(h))
elif scenario == "earlystop":       # early stopping and ReduceLROnPlateau decide alike on every rank
    X, y = data()
    net = xd.Sequential(xd.Linear(10, 8, dtype="float64"), xd.Tanh(), xd.Linear(8, 3, dtype="float64"))
    opt = xd.SGD(lr=0.5)
    stop = xd.EarlyStopping(monitor="val_loss", patience=2)
    tr = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=opt, batch_size=8, epochs=30, seed=5,
                    progress=0, callbacks=[xd.ReduceLROnPlateau(patience=1, factor=0.5), stop])
    h = tr.fit(X[:150], y[:150], validation=(X[150:], y[150:]))
    everyone = comm.allgather_values([tr.epoch, opt.lr, float(np.sum(net.state_arrays()["layers.0.W"]))])
    save(everyone=everyone, **history_arrays(h))
elif scenario == "nan":             # a NaN on one rank's shard only: every rank stops, none hangs
    X, y = data()

    class Flaky(xd.SoftmaxCrossEntropy):   # the loss of one rank's shard turns NaN at its 4th step
        calls = 0

        def __call__(self, Z, y, **kw):
            loss, dZ = super().__call__(Z, y, **kw)
            Flaky.calls += 1
            return (loss * np.nan, dZ) if rank == size - 1 and Flaky.calls == 4 else (loss, dZ)

    net = xd.Sequential(xd.Linear(10, 8, dtype="float64"), xd.Tanh(), xd.Linear(8, 3, dtype="float64"))
    try:
        trained(net, Flaky(), xd.SGD(lr=0.1), X, y, epochs=1, snapshot_every=1)
        result = 0.0
    except xd.TrainingError:
        result = 1.0
    everyone = comm.allgather_values([result, float(np.sum(net.state_arrays()["layers.0.W"]))])
    save(everyone=everyone)
elif scenario == "resume":          # 2 epochs, checkpoint (rank 0 writes), then the rest at this rank count
    X, y = data()
    ck = os.path.join(out, "resume.xpd")
    make = lambda: xd.Sequential(xd.Linear(10, 8, dtype="float64"), xd.Tanh(), xd.Dropout(0.2, dtype="float64"),
                                 xd.Linear(8, 3, dtype="float64"))
    if sys.argv[4] == "first":
        net = make()
        tr, h = trained(net, xd.SoftmaxCrossEntropy(), xd.Adam(lr=0.01), X, y, epochs=2)
        tr.save(ck)
    else:
        net = make()
        tr = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.Adam(lr=0.01), batch_size=16, seed=5,
                        progress=0, epochs=4)
        tr.restore(ck)
        h = tr.fit(X, y)
        save(**net.state_arrays(), **history_arrays(h))
elif scenario == "raise":           # rank 1 raises in the middle of training
    X, y = data()

    class Boom(xd.Callback):
        def on_batch_end(self, trainer, step, logs):
            if rank == 1 and step == 3:
                raise RuntimeError("planted failure on rank 1")

    net = xd.Sequential(xd.Linear(10, 8), xd.Tanh(), xd.Linear(8, 3))
    xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=8, epochs=50,
               seed=5, progress=0, callbacks=[Boom()]).fit(X.astype(np.float32), y)
    save(done=np.array(1))
elif scenario in ("hang", "kill"):  # rank 1 hangs (or is killed) in the middle of training
    X, y = data()

    class Stall(xd.Callback):
        def on_batch_end(self, trainer, step, logs):
            if rank == 1 and step == 3:
                if scenario == "kill":
                    os.kill(os.getpid(), 9)
                time.sleep(3600)

    net = xd.Sequential(xd.Linear(10, 8), xd.Tanh(), xd.Linear(8, 3))
    xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=8, epochs=50,
               seed=5, progress=0, callbacks=[Stall()]).fit(X.astype(np.float32), y)
    save(done=np.array(1))
elif scenario == "mismatch":        # ranks started with different data: a clear error on every rank
    X, y = data(n=203 + rank)
    net = xd.Sequential(xd.Linear(10, 3))
    try:
        trained(net, xd.SoftmaxCrossEntropy(), xd.SGD(lr=0.1), X, y)
        msg = ""
    except distributed.DistributedError as exc:
        msg = str(exc)
    save(msg=np.array(msg))
else:
    raise SystemExit(f"unknown scenario {scenario}")
comm.close()
