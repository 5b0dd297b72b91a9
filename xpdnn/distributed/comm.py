"""The communicator interface the trainer uses, and the one-process communicator.

A :class:`Communicator` offers the few collectives data-parallel training needs: a sum of one
array over the ranks (:meth:`~Communicator.allreduce`, in place where the array library allows
it), a broadcast, a barrier, and small host vectors of numbers (:meth:`~Communicator.allreduce_values`,
:meth:`~Communicator.allgather_values`).  The engines in :mod:`.mpi` and :mod:`.torch` implement
two host primitives and, for device arrays, their own fast paths.
"""

from __future__ import annotations

import sys

import numpy as np

from .. import _backend as B


class DistributedError(RuntimeError):
    """The ranks of a data-parallel job disagree (different data, settings or state), or a
    collective failed or timed out."""


class Communicator:
    """A group of ``size`` processes; this one is ``rank`` (``local_rank`` on its machine)."""

    backend = "local"
    rank, size, local_rank = 0, 1, 0
    timeout = 300.0

    # -- what an engine implements ------------------------------------------------------------
    def _allreduce_host_(self, a: np.ndarray) -> None:
        """Sum the C-contiguous NumPy array ``a`` over the ranks, in place."""

    def _broadcast_host_(self, a: np.ndarray, root: int) -> None:
        """Overwrite ``a`` with rank ``root``'s ``a``."""

    def barrier(self) -> None:
        """Wait until every rank got here."""

    def abort(self, message: str, code: int = 1):
        """End every rank of the job now, after writing ``message`` to stderr."""
        sys.stderr.write(f"xpdnn.distributed: {message}\n")
        sys.stderr.flush()
        raise SystemExit(code)

    def close(self) -> None:
        """Leave the job (the communicator cannot be used afterwards)."""
        from . import _forget
        _forget(self)

    # -- built on those -----------------------------------------------------------------------
    def allreduce(self, buf):
        """The sum of ``buf`` (an array of any supported library) over the ranks.  NumPy arrays
        are summed in place and returned; others come back as a new array next to ``buf``
        (engines with a device path sum device arrays in place)."""
        if self.size == 1:
            return buf
        if B.is_numpy(buf) and buf.flags.c_contiguous and buf.flags.writeable:
            self._allreduce_host_(buf)
            return buf
        host = np.ascontiguousarray(B.to_numpy(buf)).copy()
        self._allreduce_host_(host)
        return B.from_numpy(host, like=buf)

    def broadcast(self, buf, root: int = 0):
        """Rank ``root``'s ``buf`` on every rank (NumPy in place, others a new array)."""
        if self.size == 1:
            return buf
        if B.is_numpy(buf) and buf.flags.c_contiguous and buf.flags.writeable:
            self._broadcast_host_(buf, root)
            return buf
        host = np.ascontiguousarray(B.to_numpy(buf)).copy()
        self._broadcast_host_(host, root)
        return B.from_numpy(host, like=buf)

    def allreduce_values(self, values) -> np.ndarray:
        """The per-position sums over the ranks of a short list of numbers, as float64."""
        a = np.array([float(v) for v in values], dtype=np.float64)
        if self.size > 1:
            self._allreduce_host_(a)
        return a

    def allgather_values(self, values) -> np.ndarray:
        """Every rank's list of numbers: a (size, len(values)) float64 array, row r from rank r."""
        a = np.zeros((self.size, len(values)), dtype=np.float64)
        a[self.rank] = [float(v) for v in values]
        if self.size > 1:
            self._allreduce_host_(a)
        return a

    def check_same(self, what: str, **values) -> None:
        """Raise :class:`DistributedError` on every rank unless every rank passed the same
        ``values`` (numbers), naming the first that differs and each rank's value."""
        names = list(values)
        table = self.allgather_values([values[k] for k in names])
        for j, name in enumerate(names):
            col = table[:, j]
            if not (col == col[0]).all():
                per_rank = ", ".join(f"rank {r}: {v:g}" for r, v in enumerate(col))
                raise DistributedError(f"the ranks disagree on {what}: {name} differs ({per_rank}); every rank "
                                       "must be started with the same data and settings")

    def broadcast_params(self, *modules, root: int = 0) -> None:
        """Give every rank rank ``root``'s parameters and buffers of ``modules`` (layers with
        ``state_arrays``), one packed buffer per dtype."""
        if self.size == 1:
            return
        for module in modules:
            arrays = module.state_arrays()
            groups: dict[str, list[str]] = {}
            for k, v in arrays.items():
                groups.setdefault(B.dtype_name(v.dtype), []).append(k)
            out = {}
            for dtype, keys in sorted(groups.items()):
                host = [np.ascontiguousarray(B.to_numpy(arrays[k])).reshape(-1) for k in keys]
                packed = np.concatenate(host) if host else np.zeros(0, dtype=dtype)
                self._broadcast_host_(packed, root)
                start = 0
                for k, h in zip(keys, host):
                    out[k] = packed[start:start + h.size].reshape(tuple(arrays[k].shape)).copy()
                    start += h.size
            like = next(iter(arrays.values()), None)
            module.load_state_arrays({k: B.from_numpy(v, like=like) for k, v in out.items()})

    def __repr__(self):
        return f"<{type(self).__name__} backend={self.backend!r} rank={self.rank} size={self.size}>"


class LocalComm(Communicator):
    """One process: every collective is the identity (``xd.distributed.init()`` outside a
    launcher)."""
