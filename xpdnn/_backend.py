"""Backend handling: namespaces, devices, dtypes and host<->device moves.

Generic code never imports NumPy for computation; it asks the data for its namespace
(``xp = namespace(X, W)``) once per call.  This module is the only place that knows how
individual libraries (NumPy, CuPy, PyTorch, array-api-strict) move data to and from the host.
"""

from __future__ import annotations

import operator

import numpy as np
import array_api_compat
from array_api_compat import array_namespace, device as _device

FLOAT_DTYPES = ("float32", "float64")


_NUMPY_NS = array_namespace(np.empty(0))


def namespace(*arrays):
    """The Array API namespace shared by ``arrays``; a clear error if they mix libraries."""
    arrays = [a for a in arrays if a is not None]
    if arrays and all(type(a) is np.ndarray for a in arrays):     # the hot case, without the lookup
        return _NUMPY_NS
    try:
        return array_namespace(*arrays)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays})
        raise TypeError(
            "arrays from different array libraries were mixed: " + ", ".join(kinds)
            + "; convert them to one library first"
        ) from exc


def device(x):
    return _device(x)


def same_device(*arrays) -> None:
    """Raise if ``arrays`` (all of one library) live on different devices."""
    devs = [device(a) for a in arrays if a is not None]
    for d in devs[1:]:
        if d != devs[0]:
            raise ValueError(f"arrays live on different devices: {devs[0]} and {d}")


def is_numpy(x) -> bool:
    return array_api_compat.is_numpy_array(x)


def is_cupy(x) -> bool:
    return array_api_compat.is_cupy_array(x)


def is_torch(x) -> bool:
    return array_api_compat.is_torch_array(x)


def is_jax(x) -> bool:
    return array_api_compat.is_jax_array(x)


def on_accelerator(x) -> bool:
    """Whether ``x`` lives on a GPU (CuPy, or a PyTorch/JAX array off the CPU)."""
    if is_cupy(x):
        return True
    if is_torch(x):
        return x.device.type != "cpu"
    if is_jax(x):
        return any(d.platform != "cpu" for d in x.devices())
    return False


# -- updates that work on immutable arrays ----------------------------------------------------
# ``a = iadd(a, b)``: in place where the library allows it (the result is ``a`` itself), a new
# array where it does not (JAX).  Callers always store the result back, so no update is lost.
def mutable(a) -> bool:
    return not is_jax(a)


def _update(op, iop):
    def update(a, b):
        return iop(a, b) if mutable(a) else op(a, b)
    return update


iadd = _update(operator.add, operator.iadd)
isub = _update(operator.sub, operator.isub)
imul = _update(operator.mul, operator.imul)
idiv = _update(operator.truediv, operator.itruediv)


def has_views(a) -> bool:
    """Whether slices and reshapes of ``a`` are writable views of its memory that ufuncs and
    ``out=`` write through (NumPy, CuPy): a flat buffer can then hold many arrays."""
    return is_numpy(a) or is_cupy(a)


def zeros_into(a):
    """``a`` filled with zeros (in place where allowed)."""
    if mutable(a):
        a[...] = 0
        return a
    return namespace(a).zeros_like(a)


def is_array(x) -> bool:
    return array_api_compat.is_array_api_obj(x)


def may_alias(a, b) -> bool:
    """Whether arrays ``a`` and ``b`` may share memory (NumPy: by their bounds; elsewhere only
    when they are the same object, which is all that matters where xpdnn writes in place)."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(np.may_share_memory(a, b))
    return False


def dtype_name(dtype) -> str:
    """'float32', 'int64', ... for a dtype of any library."""
    name = str(dtype)
    if name.startswith("<class"):
        return np.dtype(dtype).name
    return name.rsplit(".", 1)[-1].rstrip("'>")


def resolve_dtype(xp, name: str):
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {name!r}")
    return getattr(xp, name)


def to_numpy(x) -> np.ndarray:
    """A host NumPy copy (or view) of ``x``."""
    if isinstance(x, np.ndarray):
        return x
    if is_cupy(x):
        return x.get()
    if is_torch(x):
        return x.detach().cpu().numpy()
    if isinstance(x, (int, float, list, tuple, np.generic)):
        return np.asarray(x)
    try:
        return np.from_dlpack(x)
    except (TypeError, BufferError, RuntimeError):
        return np.asarray(x)


def from_numpy(a: np.ndarray, like):
    """Move a host array into the library and onto the device of ``like``."""
    xp = array_namespace(like)
    a = np.ascontiguousarray(a)
    if isinstance(like, np.ndarray):
        return a if a.flags.writeable else a.copy()
    if is_cupy(like):
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.asarray(a)
    if is_torch(like):
        import torch

        return torch.from_numpy(a.copy()).to(like.device)
    return xp.asarray(a, device=device(like))


def to_float(x) -> float:
    """Read a 0-d array as a Python float (one host sync)."""
    return float(to_numpy(x))


def check_floating(X, what="X"):
    xp = namespace(X)
    if not xp.isdtype(X.dtype, "real floating"):
        raise TypeError(f"{what} must be a floating-point array, got dtype {dtype_name(X.dtype)}")


def add_at_labels(G, y, delta):
    """``G[i, y[i]] += delta[i]`` for every row i of G (N, C), in place where the library
    allows, and returns G.  ``y`` (N,) must hold valid column indices.  NumPy, CuPy and PyTorch
    index with (rows, y); other libraries use the standard's boolean-mask assignment (one True
    per row, so the values land in row order)."""
    xp = namespace(G)
    N, C = G.shape
    if is_numpy(G) or is_cupy(G) or is_torch(G):
        rows = xp.arange(N, device=device(G))
        G[rows, y] += delta
        return G
    hot = xp.arange(C, device=device(G))[None, :] == y[:, None]
    if not mutable(G):                   # JAX: a new array
        return xp.where(hot, G + delta[:, None], G)
    G[hot] = xp.take_along_axis(G, y[:, None], axis=1)[:, 0] + delta
    return G


def check_finite(X, what="X"):
    """Raise if ``X`` holds NaN or Inf.  One pass and no N-sized temporary in the usual case: a
    finite sum proves every element finite (a NaN or Inf makes the sum NaN or Inf); only a sum
    that is not finite (bad values, or an overflow) is followed by the element-wise test."""
    xp = namespace(X)
    if not xp.isdtype(X.dtype, ("real floating", "complex floating")):
        return
    with np.errstate(over="ignore", invalid="ignore"):      # NumPy's warnings for that overflow
        if bool(xp.isfinite(xp.sum(X))):
            return
    if not bool(xp.all(xp.isfinite(X))):
        raise ValueError(f"{what} contains NaN or Inf values")


def as_array(X, what="X"):
    """Accept Array API arrays as they are; lists/tuples and array-likes (a pandas DataFrame or
    Series through ``to_numpy``, anything with ``__array__``) as NumPy arrays.  A column of
    non-numbers (strings, categories) is a ValueError naming it."""
    if is_array(X):
        return X
    if isinstance(X, (list, tuple)):
        return np.asarray(X)
    if hasattr(X, "to_numpy") or hasattr(X, "__array__"):
        A = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X)
        if A.dtype == object:
            A = _numeric(A, X, what)
        return A
    raise TypeError(f"{what} must be an array (NumPy, CuPy, PyTorch, array-api-strict) or a pandas "
                    f"DataFrame/Series, got {type(X).__name__}")


def _numeric(A, X, what):
    """An object array from a table as float64, or a ValueError naming the first column (of
    ``X.columns`` when it has them) that holds something else than numbers."""
    try:
        return A.astype(np.float64)
    except (TypeError, ValueError):
        pass
    columns = list(getattr(X, "columns", [])) or [getattr(X, "name", None)]
    cols = A.reshape(A.shape[0], -1).T if A.ndim > 1 else A[None, :]
    for name, col in zip(columns, cols):
        for v in col:
            try:
                float(v)
            except (TypeError, ValueError):
                where = f" column {name!r}" if name is not None else ""
                raise ValueError(f"{what}{where} holds a value that is not a number ({v!r}); convert or "
                                 "drop non-numeric columns first") from None
    raise ValueError(f"{what} holds values that are not numbers; convert or drop non-numeric columns first")
