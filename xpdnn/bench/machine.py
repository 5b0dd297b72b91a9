"""What the report records about the machine (CPU, cores, memory, BLAS pools, GPUs, load) and
the library versions, and :func:`set_threads`, which gives every thread pool the same count."""

from __future__ import annotations

import os
import platform
import sys


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


def machine_info() -> dict:
    """CPU model, cores, memory, BLAS libraries and their threads (threadpoolctl), GPUs, load."""
    info = {
        "cpu": _cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(),
        "usable_cores": usable_cores(), "memory_gb": _mem_total_gb(),
        "os": platform.platform(), "hostname": platform.node(), "gpus": _gpu_names(),
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
                 "threadpoolctl"):
        if name in ("torch", "cupy", "sklearn", "array_api_strict") and name not in sys.modules:
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
