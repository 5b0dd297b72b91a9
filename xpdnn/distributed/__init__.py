"""Data-parallel training across processes, GPUs and machines, on MPI or torch.distributed.

Every process (a *rank*) holds the whole network and the whole dataset; each step, rank ``r`` of
``size`` trains on its contiguous slice of the global mini-batch (the same seeded permutation on
every rank, nothing is scattered), the gradients are summed over the ranks in ONE packed buffer
(:class:`xpdnn.step.AllReduceGrads`, the step's gradient sink) and every rank applies the same
update, so the ranks stay bitwise identical.  The communication is an existing engine's:

* ``backend="mpi"``: `mpi4py <https://mpi4py.readthedocs.io>`_ over any MPI (``pip install
  "xpdnn[mpi]"`` brings the ``mpich`` wheel); start with ``mpiexec -n 2 xpdnn train``.  CuPy
  arrays go through NCCL (``cupy.cuda.nccl``) with its unique id broadcast over MPI, the way
  ChainerMN's ``pure_nccl`` communicator bootstraps it;
* ``backend="torch"``: ``torch.distributed`` with gloo on the CPU and NCCL on GPUs (CuPy arrays
  are passed zero-copy through DLPack, ordered on CuPy's current stream); start with
  ``torchrun --nproc-per-node 2 -m xpdnn train``;
* ``backend="auto"``: torch under ``torchrun`` (its ``TORCHELASTIC_RUN_ID``/``RANK``
  variables), MPI under ``mpiexec``/``srun`` (PMI/PMIx/Open MPI variables), else one process.

``comm = xd.distributed.init()`` once per process; a :class:`~xpdnn.Trainer` then picks the
communicator up (or takes ``comm=``).  Dropout and other random layers address their numbers
by the GLOBAL row index (:meth:`xpdnn.random.Stream.offset`), so an N-rank run draws exactly the
masks of the one-process run with the same seed, and the losses are summed per rank and divided
by the all-reduced count (exact with unequal shards, class weights and ``ignore_index``).

Faults end the whole job: under MPI an unhandled exception on any rank aborts every rank (the
semantics of ``python -m mpi4py``), and every collective has a deadline (``timeout`` seconds,
default 300, ``XPDNN_DIST_TIMEOUT``) after which the waiting rank reports which collective
timed out and aborts the job; torch.distributed gets the same ``timeout``.
"""

from __future__ import annotations

import os

from .comm import Communicator, DistributedError, LocalComm

__all__ = ["init", "current", "launched", "Communicator", "LocalComm", "DistributedError", "SyncBatchNorm"]

_CURRENT: Communicator | None = None

MPI_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "HYDI_CONTROL_FD",
            "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
TORCH_VARS = ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def launched() -> str | None:
    """The launcher this process runs under, from its environment: ``"torch"`` (torchrun),
    ``"mpi"`` (mpiexec, srun, ...) or None."""
    env = os.environ
    if any(v in env for v in TORCH_VARS) or ("RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env):
        return "torch"
    if any(v in env for v in MPI_VARS):
        return "mpi"
    return None


def _timeout(timeout) -> float:
    if timeout is None:
        timeout = float(os.environ.get("XPDNN_DIST_TIMEOUT", "300"))
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    return timeout


def init(backend: str = "auto", *, timeout: float | None = None, gpu: bool | None = None) -> Communicator:
    """Join the job this process was launched in and return its communicator (also kept as
    :func:`current`, which trainers pick up).  ``backend``: ``"auto"`` (see the module
    docstring), ``"mpi"``, ``"torch"`` or ``"local"`` (one process).  ``timeout``: seconds a
    collective may wait for the other ranks before the job is aborted.  ``gpu``: communicate
    CuPy/CUDA arrays (NCCL); default: when CUDA is available.  A second call returns the
    communicator of the first."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    if backend not in ("auto", "mpi", "torch", "local"):
        raise ValueError(f"backend must be 'auto', 'mpi', 'torch' or 'local', got {backend!r}")
    timeout = _timeout(timeout)
    if backend == "auto":
        backend = launched() or "local"
    if backend == "mpi":
        from .mpi import MPIComm
        comm = MPIComm(timeout=timeout, gpu=gpu)
    elif backend == "torch":
        from .torch import TorchComm
        comm = TorchComm(timeout=timeout, gpu=gpu)
    else:
        comm = LocalComm()
    _CURRENT = comm
    return comm


def current() -> Communicator | None:
    """The communicator :func:`init` made in this process, or None."""
    return _CURRENT


def _forget(comm) -> None:
    global _CURRENT
    if _CURRENT is comm:
        _CURRENT = None


def _adopt(comm) -> None:
    """Make ``comm`` (passed to a Trainer) the current communicator if :func:`init` made none,
    so layers that synchronize (:class:`~xpdnn.SyncBatchNorm`) use it too."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = comm


def __getattr__(name):
    if name == "SyncBatchNorm":
        from ..layers.normalization import SyncBatchNorm
        return SyncBatchNorm
    raise AttributeError(f"module 'xpdnn.distributed' has no attribute {name!r}")
