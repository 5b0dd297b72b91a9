"""What the report records about the machine (CPU, cores, memory, BLAS pools, GPUs, load,
the environment variables that steer the libraries) and the library versions;
:func:`set_threads`, which gives every thread pool the same count; and :class:`LoadProbe`, which
measures how busy the machine was while a round ran."""

from __future__ import annotations

import os
import platform
import sys
import time


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor()
    except Exception:
        return platform.processor() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_names() -> list:
    names = []
    try:
        from ..devices import cuda_available

        if cuda_available()[0]:
            import cupy

            for i in range(cupy.cuda.runtime.getDeviceCount()):
                name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
                names.append(name.decode() if isinstance(name, bytes) else str(name))
    except Exception:
        pass
    if not names and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names


def _mem_total_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None


ENV_PREFIXES = ("OPENBLAS_", "OMP_", "MKL_", "GOTO", "XPDNN_", "NUMBA_")
BLAS_FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
"""Variables that override what OpenBLAS detects about the CPU: its kernels and its blocking."""


def library_env(environ=None) -> dict:
    """The environment variables that steer BLAS, OpenMP, numba and xpdnn, as set."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items()) if k.startswith(ENV_PREFIXES)}


def jit_status() -> str:
    """xpdnn's compiled-kernel line (:func:`xpdnn.kernels.jit_status`)."""
    from .. import kernels

    return kernels.jit_status()


def machine_info() -> dict:
    """CPU model, cores, memory, BLAS libraries and their threads (threadpoolctl), GPUs, load."""
    info = {
        "cpu": _cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(),
        "usable_cores": usable_cores(), "memory_gb": _mem_total_gb(),
        "os": platform.platform(), "hostname": platform.node(), "gpus": _gpu_names(),
        "jit": jit_status(),
    }
    try:
        info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "prefix", "version", "num_threads",
                                                     "architecture", "threading_layer")}
                               for d in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def versions() -> dict:
    import importlib

    out = {"python": platform.python_version()}
    for name in ("xpdnn", "numpy", "array_api_compat", "array_api_strict", "torch", "sklearn", "cupy",
                 "threadpoolctl", "numba"):
        if name in ("torch", "cupy", "sklearn", "array_api_strict", "numba") and name not in sys.modules:
            # only report what this run actually imported (importing CuPy can be slow)
            continue
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            pass
    return out


_LIMITS = []


def set_threads(n: int) -> dict:
    """Use ``n`` threads everywhere: BLAS/OpenMP pools (threadpoolctl), PyTorch intra-op threads
    and, for subprocesses, the usual environment variables.  Returns what was set."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    done = {"threads": n}
    try:
        from threadpoolctl import threadpool_limits

        _LIMITS.append(threadpool_limits(limits=n))
        done["threadpoolctl"] = True
    except ImportError:
        done["threadpoolctl"] = False
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
        done["torch"] = n
    return done


def _cpu_busy():
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (None elsewhere).
    Busy is user + nice + system + irq + softirq over all CPUs; steal is time the hypervisor gave
    this VM's CPUs to others."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq) / hz, steal / hz


NOISY_OTHERS = 0.25
"""A round during which other processes (and the hypervisor's steal) kept this many cores busy
on average, or more, is marked noisy."""


class LoadProbe:
    """How busy the machine was between construction and :meth:`stop`: this process's CPU time
    against wall time (all its threads), and the cores that *other* processes and steal kept
    busy (the machine's busy time from /proc/stat less this process's), with the 1-minute load
    average at the end.  ``others_cores`` is None where /proc/stat is missing."""

    def __init__(self):
        self.t0, self.p0, self.s0 = time.perf_counter(), time.process_time(), _cpu_busy()

    def stop(self) -> dict:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        cpu = time.process_time() - self.p0
        out = {"wall_s": wall, "cpu_s": cpu, "cpu_over_wall": cpu / wall, "others_cores": None}
        s1 = _cpu_busy()
        if self.s0 is not None and s1 is not None:
            busy, steal = s1[0] - self.s0[0], s1[1] - self.s0[1]
            out["others_cores"] = max(0.0, busy - cpu) / wall + max(0.0, steal) / wall
        try:
            out["loadavg1"] = round(os.getloadavg()[0], 2)
        except OSError:
            pass
        return out


def noisy(load: dict, spare: float = 0.0) -> bool:
    """Whether a :class:`LoadProbe` reading says the round shared the machine: other processes
    kept more than ``spare`` cores (those the run leaves idle: usable cores - its threads) plus
    :data:`NOISY_OTHERS` busy."""
    others = load.get("others_cores")
    return others is not None and others >= spare + NOISY_OTHERS
