"""Mini-batches streamed from host arrays that may not fit in device memory (NumPy arrays or
memory-mapped ``.npy`` files opened with ``np.load(path, mmap_mode="r")``), with the next batch
read and moved to the device by a background thread while the current one is used."""

from __future__ import annotations

import queue
import threading

import numpy as np

from .. import _backend as B


def mover(like):
    """A ``to`` callable for :class:`BatchStream` that puts a host batch into the library and
    onto the device of the array ``like`` (e.g. a CuPy or PyTorch CUDA tensor)."""
    return lambda host: B.from_numpy(host, like=like)


_DONE = object()


class BatchStream:
    """Iterate over ``(Xb, yb)`` mini-batches of host arrays X (N, ...) and y (N, ...).

    Every ``iter()`` is one epoch that yields each sample exactly once, in ``ceil(N /
    batch_size)`` batches (the last one shorter; ``drop_last=True`` drops it).  With ``shuffle``
    epoch ``e`` visits the samples in the order of NumPy's ``default_rng([seed, e]).permutation(N)``
    (the :class:`~xpdnn.Trainer` convention), so the order is reproducible from ``seed``; the
    epoch counter advances after each full pass and can be set with ``set_epoch``.

    A background thread gathers each batch from X / y (rows sorted before reading, so a memmap
    is read in file order), casts X to ``dtype`` if given, and calls ``to(host_array)`` on X and
    y to move them (default: keep the NumPy arrays; see :func:`mover`).  Up to ``prefetch``
    batches wait ready.  ``y=None`` yields ``(Xb, None)``.  Errors in the thread are re-raised
    in the consumer; leaving the loop early stops the thread.
    """

    def __init__(self, X, y=None, batch_size: int = 64, shuffle: bool = True, seed: int = 0, to=None, *,
                 dtype: str | None = None, prefetch: int = 2, drop_last: bool = False):
        if not isinstance(X, np.ndarray):
            raise TypeError(f"X must be a host NumPy array or memmap, got {type(X).__name__}; "
                            "stream device arrays with the Trainer instead")
        if X.ndim < 1 or X.shape[0] == 0:
            raise ValueError(f"X must have at least one sample, got shape {X.shape}")
        if y is not None:
            if not isinstance(y, np.ndarray):
                raise TypeError(f"y must be a host NumPy array or memmap, got {type(y).__name__}")
            if y.shape[0] != X.shape[0]:
                raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(prefetch) < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if dtype is not None and dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32', 'float64' or None, got {dtype!r}")
        if to is not None and not callable(to):
            raise TypeError("to must be a callable that moves a host NumPy array (see xpdnn.datasets.streaming.mover)")
        self.X, self.y = X, y
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.to, self.dtype, self.prefetch, self.drop_last = to, dtype, int(prefetch), bool(drop_last)
        self.epoch = 0

    def __len__(self):
        N = self.X.shape[0]
        return N // self.batch_size if self.drop_last else -(-N // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The sample order (N,) int64 of ``epoch``."""
        N = self.X.shape[0]
        if self.shuffle:
            return np.random.default_rng([self.seed, int(epoch)]).permutation(N).astype(np.int64)
        return np.arange(N, dtype=np.int64)

    def _gather(self, A, idx):
        if not self.shuffle:
            return np.ascontiguousarray(A[idx[0]:idx[-1] + 1])
        # read rows in ascending index order (sequential on a memmap), then restore batch order
        sort = np.argsort(idx, kind="stable")
        rows = A[idx[sort]]
        out = np.empty_like(rows)
        out[sort] = rows
        return out

    def _batches(self, epoch):
        order = self.order(epoch)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            Xb = self._gather(self.X, idx)
            if self.dtype is not None:
                Xb = Xb.astype(self.dtype, copy=False)
            yb = None if self.y is None else self._gather(self.y, idx)
            if self.to is not None:
                Xb = self.to(Xb)
                yb = None if yb is None else self.to(yb)
            yield Xb, yb

    def __iter__(self):
        epoch = self.epoch
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item):
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for item in self._batches(epoch):
                    if not put(item):
                        return
                put(_DONE)
            except BaseException as exc:   # handed to the consumer
                put(exc)

        worker = threading.Thread(target=produce, name="xpdnn-batchstream", daemon=True)
        worker.start()
        finished = False
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()
            if finished:
                self.epoch = epoch + 1
