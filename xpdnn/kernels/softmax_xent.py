"""Fused softmax cross-entropy on CuPy arrays: one kernel launch computes every row's loss and
the gradient, without an N x C temporary (``softmax_xent.cu`` has the algorithm).

:class:`xpdnn.losses.cross_entropy.SoftmaxCrossEntropy` calls :func:`softmax_xent` for CuPy
logits with integer labels; its portable code is the reference this kernel is tested against.
The CUDA source is compiled on first use, never at import.
"""

from __future__ import annotations

import numpy as np

from ._compile import get_function, read_source

SOURCE = "softmax_xent.cu"
WARP_VPT = (1, 2, 4, 8, 16, 32)          # register slots per lane of the warp-per-row kernels
MAX_WARP_C = 32 * WARP_VPT[-1]           # larger C: a block per row
BLOCK = 512                              # XENT_BLOCK in the source
WARP_ROWS = 4                            # rows per block of the warp kernels (128 threads)
PREPASS_THREADS = 512
SUFFIX = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
_NO_BAD_ROW = (1 << 64) - 1
_REDUCTION_CODE = {"none": 0, "sum": 1, "mean": 2}


def kernel_names() -> list[str]:
    """Every ``extern "C"`` kernel in the source (what the NVRTC test expects to find)."""
    names = [f"xent_prepass_{s}" for s in ("f32", "f64")]
    for s in SUFFIX.values():
        names += [f"xent_warp{v}_{s}" for v in WARP_VPT] + [f"xent_block_{s}"]
    return names


def _logits_type(Z, logits_dtype):
    name = str(Z.dtype)
    if logits_dtype is not None:
        if logits_dtype != "bfloat16" or name != "uint16":
            raise TypeError("logits_dtype='bfloat16' is for bfloat16 bit patterns stored as uint16; "
                            f"got logits_dtype={logits_dtype!r} with dtype {name}")
        return "bfloat16"
    if name not in SUFFIX:
        raise TypeError(f"the fused softmax cross-entropy takes float16, bfloat16, float32 or float64 logits, got {name}")
    return name


def fused_available(Z) -> bool:
    """Whether :func:`softmax_xent` can take these logits (a 2-D CuPy array of a supported dtype)."""
    try:
        import cupy
    except ImportError:
        return False
    return isinstance(Z, cupy.ndarray) and Z.ndim == 2 and str(Z.dtype) in SUFFIX


def plan(C: int) -> tuple[str, int]:
    """Which kernel family runs C classes: ``("warp", VPT)`` or ``("block", BLOCK)``."""
    if C <= MAX_WARP_C:
        need = -(-C // 32)
        return "warp", next(v for v in WARP_VPT if v >= need)
    return "block", BLOCK


def launch_config(N: int, C: int, tname: str, z_ptr: int, ldz: int, g_ptr: int, ldg: int, itemsize: int):
    """``(kernel name, grid, block, vec)`` for the row kernel: ``vec`` is 1 when every row of
    the logits and of the gradient starts on a 16-byte boundary (so 16-byte loads and stores
    are legal), else 0."""
    aligned = (z_ptr % 16 == 0 and g_ptr % 16 == 0
               and (N == 1 or ((ldz * itemsize) % 16 == 0 and (ldg * itemsize) % 16 == 0)))
    kind, size = plan(C)
    if kind == "warp":
        return f"xent_warp{size}_{SUFFIX[tname]}", -(-N // WARP_ROWS), 32 * WARP_ROWS, int(aligned)
    return f"xent_block_{SUFFIX[tname]}", N, BLOCK, int(aligned)


def softmax_xent(Z, y, *, weight=None, ignore_index=None, label_smoothing=0.0, reduction="mean",
                 inplace=False, logits_dtype=None, check=True, weight_sum=None):
    """Softmax cross-entropy of CuPy logits against integer labels, fused.

    Z: (N, C) CuPy array, float16 / float32 / float64, or bfloat16 (a ``bfloat16`` dtype, or
    uint16 bit patterns with ``logits_dtype="bfloat16"``).  y: (N,) integer labels on the same
    device.  weight: (C,) class weights or None.  Semantics are those of
    :class:`~xpdnn.losses.cross_entropy.SoftmaxCrossEntropy` (PyTorch's, except that a mean over
    no rows is 0 with a zero gradient).

    Returns ``(loss, dZ)``: loss is a 0-d array (the (N,) row losses for ``reduction="none"``)
    in float32 for 16- and 32-bit logits and float64 for float64; dZ has Z's shape and dtype.
    With ``inplace=True`` dZ is written into Z's buffer (Z is returned, its logits lost) when Z
    has unit column stride; otherwise a new array.

    Labels are checked on the device; a label outside ``[0, C)`` that is not ``ignore_index``
    raises ValueError (each call reads one 8-byte word back from the device for that: one
    synchronisation).  Such rows never read outside the row: they count as ignored.  With
    ``check=False`` (the trainer, which validated every label before training) nothing is read
    back: a bad label turns the loss into NaN on the device instead.  ``weight_sum`` is
    ``sum(weight)`` (as the kernel's accumulation type rounds the weights) when the caller knows
    it; otherwise it is read back from the device, one more synchronisation.
    """
    import cupy

    if reduction not in _REDUCTION_CODE:
        raise ValueError(f"reduction must be one of {tuple(_REDUCTION_CODE)}, got {reduction!r}")
    if not isinstance(Z, cupy.ndarray) or Z.ndim != 2:
        raise TypeError("Z must be a 2-D CuPy array of logits")
    tname = _logits_type(Z, logits_dtype)
    if not isinstance(y, cupy.ndarray) or y.ndim != 1:
        raise TypeError("y must be a 1-D CuPy array of integer labels")
    if y.dtype.kind not in "iu":
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    N, C = (int(n) for n in Z.shape)
    if y.shape[0] != N:
        raise ValueError(f"{N} rows of logits but {y.shape[0]} labels")
    if C < 1:
        raise ValueError("the logits have no classes (C = 0)")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    acc = np.float64 if tname == "float64" else np.float32
    item = Z.dtype.itemsize

    with cupy.cuda.Device(Z.device.id):
        if y.device.id != Z.device.id:
            raise ValueError(f"labels on device {y.device.id}, logits on device {Z.device.id}")
        if N == 0:
            loss = cupy.zeros((0,) if reduction == "none" else (), dtype=acc)
            return loss, (Z if inplace else cupy.empty_like(Z))
        if Z.strides[1] != item or Z.strides[0] % item or (N > 1 and Z.strides[0] < C * item):
            Z = cupy.ascontiguousarray(Z)
        ldz = Z.strides[0] // item if N > 1 else C
        if inplace:
            G, ldg = Z, ldz
        else:
            G, ldg = cupy.empty((N, C), dtype=Z.dtype), C
        y64 = cupy.ascontiguousarray(y, dtype=cupy.int64)
        if weight is None:
            w, has_w, wsum = cupy.zeros(1, dtype=acc), 0, float(C)
        else:
            w = cupy.ascontiguousarray(cupy.asarray(weight), dtype=acc)
            if w.shape != (C,):
                raise ValueError(f"weight must have shape ({C},), got {tuple(w.shape)}")
            has_w = 1
            wsum = float(w.astype(cupy.float64).sum()) if weight_sum is None else float(weight_sum)
        has_ignore = 0 if ignore_index is None else 1
        ign = np.int64(0 if ignore_index is None else int(ignore_index))
        den = cupy.empty(1, dtype=cupy.float64)
        bad = cupy.empty(1, dtype=cupy.uint64)
        row_loss = cupy.empty(N, dtype=acc)
        source = read_source(SOURCE)

        prepass = get_function(source, f"xent_prepass_{'f64' if acc is np.float64 else 'f32'}")
        prepass((1,), (PREPASS_THREADS,), (y64, w, np.int32(has_w), np.int64(N), np.int64(C), ign,
                                           np.int32(has_ignore), den, bad))

        name, grid, block, vec = launch_config(N, C, tname, Z.data.ptr, ldz, G.data.ptr, ldg, item)
        args = (Z, np.int64(ldz), G, np.int64(ldg), y64, w, np.int32(has_w), np.int64(N), np.int64(C), ign,
                np.int32(has_ignore), np.float64(eps), np.float64(wsum), np.int32(_REDUCTION_CODE[reduction]),
                den, row_loss, np.int32(vec))
        get_function(source, name)((grid,), (block,), args)
        loss = row_loss if reduction == "none" else row_loss.sum()
        if not check:
            return loss + cupy.where(bad[0] == np.uint64(_NO_BAD_ROW), 0.0, cupy.nan).astype(loss.dtype), G
        first_bad = int(bad.get()[0])
        if first_bad != _NO_BAD_ROW:
            label = int(y64[first_bad].get())
            raise ValueError(f"y[{first_bad}] = {label} is not a class label: labels must be in [0, {C - 1}]"
                             + ("" if ignore_index is None else f" or equal ignore_index={int(ignore_index)}"))
    return loss, G
