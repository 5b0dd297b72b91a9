"""The torch.distributed engine: gloo on the CPU, NCCL on GPUs (``torchrun`` rendezvous).

``torchrun --nproc-per-node N -m xpdnn train`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :class:`TorchComm` joins that process group (``env://``, see
PyTorch's "Distributed communication package" docs) unless the program made one already.
NumPy arrays are passed to gloo as tensors sharing their memory; CuPy arrays are passed to NCCL
zero-copy through DLPack, with torch told to run on CuPy's current stream
(``torch.cuda.ExternalStream``), so the all-reduce is ordered after the kernels that wrote the
buffer.  Collectives get the process group's ``timeout``; a rank that hangs or died makes the
others raise :class:`~xpdnn.distributed.DistributedError` after it, and ``torchrun`` then stops
every worker and exits non-zero.
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from .. import _backend as B
from .comm import Communicator, DistributedError


class TorchComm(Communicator):
    backend = "torch"

    def __init__(self, *, timeout: float = 300.0, gpu: bool | None = None):
        try:
            import torch
            import torch.distributed as dist
        except ImportError as exc:
            raise ImportError("backend='torch' needs PyTorch: pip install torch") from exc
        self.torch, self.dist = torch, dist
        self.timeout = float(timeout)
        self.owns = not dist.is_initialized()
        if self.owns:
            use_nccl = torch.cuda.is_available() if gpu is None else bool(gpu)
            if use_nccl:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if use_nccl else "gloo",
                                    timeout=datetime.timedelta(seconds=self.timeout))
        self.engine = dist.get_backend()
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.engine == "nccl" else torch.device("cpu")

    def _run(self, what, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:          # gloo/NCCL timeouts and a peer's closed connection
            raise DistributedError(f"rank {self.rank} of {self.size}: {what} failed (another rank hung, died or "
                                   f"raised; timeout {self.timeout:g} s): {exc}") from exc

    def _tensor_op(self, what, a: np.ndarray, op) -> None:
        t = self.torch.from_numpy(a)
        if self.device.type == "cpu":
            self._run(what, op, t)
        else:
            d = t.to(self.device)
            self._run(what, op, d)
            a[...] = d.cpu().numpy()

    def _allreduce_host_(self, a: np.ndarray) -> None:
        self._tensor_op("an allreduce", a, self.dist.all_reduce)

    def _broadcast_host_(self, a: np.ndarray, root: int) -> None:
        self._tensor_op("a broadcast", a, lambda t: self.dist.broadcast(t, src=root))

    def barrier(self) -> None:
        if self.size > 1:
            self._allreduce_host_(np.zeros(1))        # a collective with the group's timeout

    def abort(self, message: str, code: int = 1):
        import sys
        sys.stderr.write(f"xpdnn.distributed: {message}\n")
        sys.stderr.flush()
        os._exit(code)                                # torchrun sees the exit and stops the others

    def allreduce(self, buf):
        if self.size == 1:
            return buf
        torch = self.torch
        if isinstance(buf, torch.Tensor) and buf.device == self.device:
            self._run("an allreduce", self.dist.all_reduce, buf)
            return buf
        if B.is_cupy(buf) and self.device.type == "cuda":
            import cupy
            stream = torch.cuda.ExternalStream(cupy.cuda.get_current_stream().ptr)
            with torch.cuda.stream(stream):
                self._run("an allreduce", self.dist.all_reduce, torch.from_dlpack(buf))
            return buf
        return super().allreduce(buf)

    def close(self) -> None:
        if self.owns and self.dist.is_initialized():
            self.dist.destroy_process_group()
        super().close()
