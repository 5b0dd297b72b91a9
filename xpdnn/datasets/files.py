"""Readers for data files on disk: MNIST / Fashion-MNIST IDX files (raw or gzip), ``.npz``
archives (never unpickled) and CSV tables.  All return host NumPy arrays; malformed files raise
ValueError naming the file and the problem."""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

IDX_IMAGES = 0x00000803     # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS = 0x00000801     # unsigned bytes, 1 dimension (N,)

# IDX type byte -> big-endian NumPy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return raw


def read_idx(path, expect_magic: int | None = None) -> np.ndarray:
    """Any IDX file (raw or ``.gz``) as a native-endian NumPy array of the shape its header gives.

    The header is the magic number ``0x0000TTDD`` (TT the element type, DD the number of
    dimensions) followed by DD big-endian uint32 sizes; the data follow in big-endian C order.
    ``expect_magic`` (e.g. :data:`IDX_IMAGES`) rejects any other kind of IDX file.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX file (4-byte magic number)")
    magic = int.from_bytes(data[:4], "big")
    kind, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or kind not in _IDX_TYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file: bad magic number 0x{magic:08x}"
                         + (f" (expected 0x{expect_magic:08x})" if expect_magic is not None else ""))
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expect_magic:08x} "
                         f"({_describe(expect_magic)}); got {_describe(magic)}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[kind])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header
    if body < expected:
        raise ValueError(f"{path}: truncated data: the header promises shape {shape} ({expected} bytes) "
                         f"but only {body} bytes follow it")
    if body > expected:
        raise ValueError(f"{path}: {body - expected} unexpected trailing bytes after the {expected} bytes "
                         f"of data for shape {shape}")
    arr = np.frombuffer(data, dtype=dtype, offset=header, count=expected // dtype.itemsize).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _describe(magic: int) -> str:
    if magic == IDX_IMAGES:
        return "IDX images: uint8, 3 dimensions"
    if magic == IDX_LABELS:
        return "IDX labels: uint8, 1 dimension"
    kind = _IDX_TYPES.get((magic >> 8) & 0xFF, "unknown type")
    return f"IDX {np.dtype(kind).name if kind != 'unknown type' else kind}, {magic & 0xFF} dimensions"


def read_idx_images(path) -> np.ndarray:
    """MNIST-style image file (magic 0x00000803) -> uint8 (N, rows, cols)."""
    return read_idx(path, IDX_IMAGES)


def read_idx_labels(path) -> np.ndarray:
    """MNIST-style label file (magic 0x00000801) -> uint8 (N,)."""
    return read_idx(path, IDX_LABELS)


def load_mnist(images_path, labels_path, *, flatten: bool = True, dtype="float32"):
    """(X, y) from an MNIST or Fashion-MNIST image/label file pair (raw or ``.gz``).

    X: (N, rows * cols) (or (N, rows, cols) with ``flatten=False``) pixel values scaled to [0, 1]
    in ``dtype``; y: (N,) int64.  Raises ValueError if the two files disagree on N.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"shape mismatch: {images_path} holds {images.shape[0]} images but "
                         f"{labels_path} holds {labels.shape[0]} labels")
    X = images.astype(dtype) / np.asarray(255.0, dtype=dtype)
    if flatten:
        X = X.reshape(X.shape[0], -1)
    return X, labels.astype(np.int64)


def load_mnist_dir(directory, kind: str = "train", **kwargs):
    """(X, y) from a directory holding the standard MNIST/Fashion-MNIST file names:
    ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (``kind="train"``) or
    ``t10k-...`` (``kind="test"``), with or without ``.gz``.  kwargs go to :func:`load_mnist`."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(kind)
    if prefix is None:
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    directory = Path(directory)
    found = []
    for what, nd in (("images", 3), ("labels", 1)):
        names = [f"{prefix}-{what}-idx{nd}-ubyte", f"{prefix}-{what}.idx{nd}-ubyte"]
        cands = [directory / (n + ext) for n in names for ext in ("", ".gz")]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            looked = ", ".join(c.name for c in cands)
            raise FileNotFoundError(f"{directory}: no {kind} {what} file (looked for {looked})")
        found.append(hit)
    return load_mnist(*found, **kwargs)


_X_KEYS = ("X", "x", "data", "x_train", "images")
_Y_KEYS = ("y", "labels", "target", "targets", "y_train")


def load_npz(path, x_key: str | None = None, y_key: str | None = None):
    """(X, y) from a NumPy ``.npz`` archive, loaded with ``allow_pickle=False``.

    Without keys, X is the first of ``X, x, data, x_train, images`` present and y the first of
    ``y, labels, target, targets, y_train``.  Raises ValueError for missing keys (listing the
    archive's keys), object (pickled) arrays, or X and y with different numbers of samples.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive with X and y")
    with archive:
        keys = list(archive.files)

        def pick(key, defaults, what):
            if key is not None:
                if key not in keys:
                    raise ValueError(f"{path}: no array named {key!r} for {what}; the archive holds {keys}")
                return key
            for k in defaults:
                if k in keys:
                    return k
            raise ValueError(f"{path}: cannot tell which array is {what} (tried {list(defaults)}); "
                             f"the archive holds {keys}: pass {'x_key' if what == 'X' else 'y_key'}=")

        kx, ky = pick(x_key, _X_KEYS, "X"), pick(y_key, _Y_KEYS, "y")
        try:
            X, y = archive[kx], archive[ky]
        except ValueError as exc:
            raise ValueError(f"{path}: holds object arrays, which would need unpickling "
                             f"(refused: allow_pickle=False): {exc}") from None
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{path}: X and y must have a sample axis, got shapes {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"shape mismatch in {path}: {kx!r} has {X.shape[0]} samples, {ky!r} has {y.shape[0]}")
    return X, y


def load_csv(path, *, label_column: int | None = -1, header: bool = False, delimiter: str = ",",
             dtype="float32", return_classes: bool = False):
    """(X, y) from a CSV table: one sample per row, numeric features, the label in
    ``label_column`` (the last column by default; ``None`` for no labels, then y is None).

    X: (N, n_columns - 1) in ``dtype``; y: (N,) int64.  Integer labels are kept as they are;
    any other labels (class names, non-integer numbers) become indices into their sorted unique
    values, returned as ``classes`` when ``return_classes=True`` (``(X, y, classes)``).
    ``header=True`` skips the first row.  Blank lines are ignored.  Raises ValueError naming
    the row and column of a non-numeric feature or a row with the wrong number of columns.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(fh, delimiter=delimiter))]
    rows = [(n, r) for n, r in rows if any(r)]
    if header:
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: no data rows")
    width = len(rows[0][1])
    lc = None
    if label_column is not None:
        lc = int(label_column) + (width if int(label_column) < 0 else 0)
        if not 0 <= lc < width:
            raise ValueError(f"{path}: label_column={label_column} but rows have {width} columns")
        if width < 2:
            raise ValueError(f"{path}: rows have a single column: no features besides the label")
    feats, labels = [], []
    for n, row in rows:
        if len(row) != width:
            raise ValueError(f"{path}: line {n} has {len(row)} columns, expected {width} (as in line {rows[0][0]})")
        vals = []
        for j, cell in enumerate(row):
            if j == lc:
                labels.append(cell)
                continue
            try:
                vals.append(float(cell))
            except ValueError:
                hint = " (is it a header? pass header=True)" if n == rows[0][0] and not header else ""
                raise ValueError(f"{path}: line {n}, column {j + 1}: {cell!r} is not a number{hint}") from None
        feats.append(vals)
    X = np.asarray(feats, dtype=dtype)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{path}: features contain NaN or Inf")
    if lc is None:
        return (X, None, None) if return_classes else (X, None)
    y, classes = _labels(labels)
    return (X, y, classes) if return_classes else (X, y)


def _labels(cells):
    """Label strings -> (int64 labels, classes): integers as they are; other numbers become
    indices into their sorted unique values, anything else indices into the sorted strings."""
    try:
        values = [float(c) for c in cells]
    except ValueError:
        values = None
    if values is not None and all(np.isfinite(v) and v == int(v) for v in values):
        y = np.asarray([int(v) for v in values], dtype=np.int64)
        return y, sorted(set(y.tolist()))
    keys = values if values is not None else cells
    classes = sorted(set(keys))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[c] for c in keys], dtype=np.int64), classes


def save_npz(path, X, y) -> None:
    """Write X and y to ``path`` as an uncompressed ``.npz`` (keys ``X`` and ``y``), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, X=np.asarray(X), y=np.asarray(y))
    os.replace(tmp, path)
