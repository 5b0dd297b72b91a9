"""Readers for data files on disk: MNIST / Fashion-MNIST IDX files (raw or gzip), ``.npz``
archives (never unpickled) and CSV tables (raw or gzip).  All return host NumPy arrays.

Every reader reads incrementally and stops at ``max_bytes`` bytes of (decompressed) data,
:data:`DEFAULT_MAX_BYTES` (2 GiB) unless told otherwise (``max_bytes=None``: no limit), so a small
compressed file cannot expand into gigabytes.  A file that is malformed, truncated, of the wrong
kind or over the limit raises :class:`DataFileError` (a ValueError) naming the file and the
problem; a missing file raises FileNotFoundError.

What comes back is what :meth:`xpdnn.Trainer.fit` accepts: features in floating point (integer
features become float32 as they are, except uint8 pixels, which are scaled to [0, 1] as in the
MNIST reader) and class labels as int64 (integral floats such as ``2.0`` become ``2``; NaN or
non-integral labels are refused).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import zipfile
import zlib
from array import array
from contextlib import contextmanager
from pathlib import Path

import numpy as np

IDX_IMAGES = 0x00000803     # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS = 0x00000801     # unsigned bytes, 1 dimension (N,)

# IDX type byte -> big-endian NumPy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

DEFAULT_MAX_BYTES = 2 << 30     # 2 GiB of decompressed data per file
_CHUNK = 1 << 20
_GZIP_ERRORS = (OSError, EOFError, zlib.error)   # gzip.BadGzipFile is an OSError


class DataFileError(ValueError):
    """A data file that cannot be read as asked: malformed, truncated, of the wrong kind, or
    holding more than ``max_bytes`` of data.  The message names the file and the problem."""


class DataFileTooLarge(DataFileError):
    """A data file holding more (decompressed) data than the reader's ``max_bytes``."""


def _limit(max_bytes):
    if max_bytes is None:
        return None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative integer or None, got {max_bytes!r}")
    return int(max_bytes)


def _too_large(path, what, limit):
    return DataFileTooLarge(f"{path}: {what}, over the limit of max_bytes={limit} bytes; pass a larger "
                            f"max_bytes= (or max_bytes=None for no limit) to read it")


def _existing(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise DataFileError(f"{path}: not a regular file")
    return path


@contextmanager
def _open_data(path: Path, limit):
    """Yield ``(stream, gz)``: the file's bytes, decompressed on the fly when it starts with the
    gzip magic bytes (RFC 1952, section 2.3.1)."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if not gz:
            size = os.fstat(raw.fileno()).st_size
            if limit is not None and size > limit:
                raise _too_large(path, f"the file is {size} bytes", limit)
            yield raw, False
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:
            yield f, True


def _read_upto(f, n: int, path, gz: bool) -> bytearray:
    """Up to ``n`` bytes from ``f``, read in chunks, so memory follows the data actually there
    rather than a size a header claims."""
    buf = bytearray()
    try:
        while len(buf) < n:
            chunk = f.read(min(_CHUNK, n - len(buf)))
            if not chunk:
                break
            buf += chunk
    except _GZIP_ERRORS as exc:
        if not gz:
            raise
        raise DataFileError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return buf


def read_idx(path, expect_magic: int | None = None, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Any IDX file (raw or ``.gz``) as a native-endian NumPy array of the shape its header gives.

    The header is the magic number ``0x0000TTDD`` (TT the element type, DD the number of
    dimensions) followed by DD big-endian uint32 sizes; the data follow in big-endian C order
    (the format as published with the MNIST database, http://yann.lecun.com/exdb/mnist/).
    ``expect_magic`` (e.g. :data:`IDX_IMAGES`) rejects any other kind of IDX file.  A file whose
    header promises more than ``max_bytes`` bytes is refused before its data are read.
    """
    path, limit = _existing(path), _limit(max_bytes)
    with _open_data(path, limit) as (f, gz):
        head = _read_upto(f, 4, path, gz)
        if len(head) < 4:
            raise DataFileError(f"{path}: {len(head)} bytes is too short for an IDX file (4-byte magic number)")
        magic = int.from_bytes(head, "big")
        kind, ndim = head[2], head[3]
        if head[:2] != b"\x00\x00" or kind not in _IDX_TYPES or ndim == 0:
            raise DataFileError(f"{path}: not an IDX file: bad magic number 0x{magic:08x}"
                                + (f" (expected 0x{expect_magic:08x})" if expect_magic is not None else ""))
        if expect_magic is not None and magic != expect_magic:
            raise DataFileError(f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expect_magic:08x} "
                                f"({_describe(expect_magic)}); got {_describe(magic)}")
        header = 4 + 4 * ndim
        dims = _read_upto(f, 4 * ndim, path, gz)
        if len(dims) < 4 * ndim:
            raise DataFileError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, "
                                f"file has {4 + len(dims)}")
        shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
        dtype = np.dtype(_IDX_TYPES[kind])
        expected = math.prod(shape) * dtype.itemsize
        if limit is not None and header + expected > limit:
            raise _too_large(path, f"the header promises shape {shape} ({header + expected} bytes"
                             f"{' decompressed' if gz else ''})", limit)
        body = _read_upto(f, expected, path, gz)
        if len(body) < expected:
            raise DataFileError(f"{path}: truncated data: the header promises shape {shape} ({expected} bytes) "
                                f"but only {len(body)} bytes follow it")
        extra = len(_read_upto(f, _CHUNK, path, gz))
        if extra:
            more = "" if extra < _CHUNK else "at least "
            raise DataFileError(f"{path}: {more}{extra} unexpected trailing bytes after the {expected} bytes "
                                f"of data for shape {shape}")
    arr = np.frombuffer(body, dtype=dtype, count=expected // dtype.itemsize).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _describe(magic: int) -> str:
    if magic == IDX_IMAGES:
        return "IDX images: uint8, 3 dimensions"
    if magic == IDX_LABELS:
        return "IDX labels: uint8, 1 dimension"
    kind = _IDX_TYPES.get((magic >> 8) & 0xFF, "unknown type")
    return f"IDX {np.dtype(kind).name if kind != 'unknown type' else kind}, {magic & 0xFF} dimensions"


def read_idx_images(path, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """MNIST-style image file (magic 0x00000803) -> uint8 (N, rows, cols)."""
    return read_idx(path, IDX_IMAGES, max_bytes=max_bytes)


def read_idx_labels(path, *, max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """MNIST-style label file (magic 0x00000801) -> uint8 (N,)."""
    return read_idx(path, IDX_LABELS, max_bytes=max_bytes)


def load_mnist(images_path, labels_path, *, flatten: bool = True, dtype="float32",
               max_bytes: int | None = DEFAULT_MAX_BYTES):
    """(X, y) from an MNIST or Fashion-MNIST image/label file pair (raw or ``.gz``).

    X: (N, rows * cols) (or (N, rows, cols) with ``flatten=False``) uint8 pixel values divided
    by 255, so in [0, 1], in ``dtype``; y: (N,) int64.  ``max_bytes`` limits each file's
    decompressed size.  Raises ValueError if the two files disagree on N.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    images = read_idx_images(images_path, max_bytes=max_bytes)
    labels = read_idx_labels(labels_path, max_bytes=max_bytes)
    if images.shape[0] != labels.shape[0]:
        raise DataFileError(f"shape mismatch: {images_path} holds {images.shape[0]} images but "
                            f"{labels_path} holds {labels.shape[0]} labels")
    X = images.astype(dtype) / np.asarray(255.0, dtype=dtype)
    if flatten:
        X = X.reshape(X.shape[0], -1)
    return X, labels.astype(np.int64)


def load_mnist_dir(directory, kind: str = "train", **kwargs):
    """(X, y) from a directory holding the standard MNIST/Fashion-MNIST file names:
    ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (``kind="train"``) or
    ``t10k-...`` (``kind="test"``), with or without ``.gz``.  kwargs (``flatten``, ``dtype``,
    ``max_bytes``) go to :func:`load_mnist`."""
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
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError)


def load_npz(path, x_key: str | None = None, y_key: str | None = None, *,
             max_bytes: int | None = DEFAULT_MAX_BYTES, scale_uint8: bool = True):
    """(X, y) from a NumPy ``.npz`` archive (a zip of ``.npy`` files), never unpickled.

    Without keys, X is the first of ``X, x, data, x_train, images`` present and y the first of
    ``y, labels, target, targets, y_train``.  Each array's ``.npy`` header (format described in
    ``numpy.lib.format``) is checked against the member's size, and the uncompressed data of X
    and y together against ``max_bytes``, before any data are read.

    X comes back in floating point: float32/float64 as stored, float16 as float32, uint8 (image
    pixels) divided by 255 into [0, 1] as float32 (as :func:`load_mnist` does; ``scale_uint8=False``
    keeps the values 0..255), other integers and booleans as float32 values.  A 1-D y comes back
    as int64 class labels (integral floats such as ``2.0`` accepted); a y with more dimensions
    (one-hot, soft or regression targets) in floating point like X, without scaling.
    Raises :class:`DataFileError` (a ValueError) for a file that is not an ``.npz`` archive, a
    truncated or corrupt one, missing keys (listing the archive's keys), object arrays (they
    would need unpickling), non-numeric, NaN/Inf or non-integral labels, or X and y with
    different numbers of samples.
    """
    path, limit = _existing(path), _limit(max_bytes)
    with open(path, "rb") as raw:
        if raw.read(6) == b"\x93NUMPY":
            raise DataFileError(f"{path}: a single .npy array, not an .npz archive with X and y")
        raw.seek(0)
        try:
            zf = zipfile.ZipFile(raw)
        except _ZIP_ERRORS as exc:
            raise DataFileError(f"{path}: not a readable .npz archive ({exc})") from None
        with zf:
            members = {}
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                members.setdefault(key, info)
            keys = list(members)

            def pick(key, defaults, what):
                if key is not None:
                    if key not in keys:
                        raise DataFileError(f"{path}: no array named {key!r} for {what}; the archive holds {keys}")
                    return key
                for k in defaults:
                    if k in keys:
                        return k
                raise DataFileError(f"{path}: cannot tell which array is {what} (tried {list(defaults)}); "
                                    f"the archive holds {keys}: pass {'x_key' if what == 'X' else 'y_key'}=")

            kx, ky = pick(x_key, _X_KEYS, "X"), pick(y_key, _Y_KEYS, "y")
            used = members[kx].file_size + (members[ky].file_size if ky != kx else 0)
            if limit is not None and used > limit:
                raise _too_large(path, f"arrays {kx!r} and {ky!r} hold {used} bytes uncompressed", limit)
            X = _read_npy_member(zf, members[kx], path, kx)
            y = X if ky == kx else _read_npy_member(zf, members[ky], path, ky)
    if X.ndim == 0 or y.ndim == 0:
        raise DataFileError(f"{path}: X and y must have a sample axis, got shapes {X.shape} and {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise DataFileError(f"shape mismatch in {path}: {kx!r} has {X.shape[0]} samples, {ky!r} has {y.shape[0]}")
    X = _as_features(X, f"{path}: array {kx!r}", scale_uint8)
    y = _as_labels(y, f"{path}: array {ky!r}") if y.ndim == 1 else _as_features(y, f"{path}: array {ky!r}", False)
    return X, y


def _read_npy_member(zf, info, path, key) -> np.ndarray:
    """One ``.npy`` member of an open zip, header first: the data are read (in chunks) only once
    the header's shape and dtype match the member's size and hold no Python objects."""
    where = f"{path}: array {key!r}"
    if not info.filename.endswith(".npy"):
        raise DataFileError(f"{where} is not a .npy member ({info.filename!r})")
    fmt = np.lib.format
    try:
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise DataFileError(f"{where}: unsupported .npy format version {version}")
            if dtype.hasobject:
                raise DataFileError(f"{where} holds Python objects, which would need unpickling "
                                    f"(refused: allow_pickle=False)")
            start = f.tell()
            nbytes = math.prod(shape) * dtype.itemsize
            if start + nbytes != info.file_size:
                raise DataFileError(f"{where}: corrupt .npy header: it promises shape {shape} of {dtype} "
                                    f"({nbytes} bytes) but the member holds {info.file_size - start} bytes of data")
            data = bytearray()
            while len(data) < nbytes:
                chunk = f.read(min(_CHUNK, nbytes - len(data)))
                if not chunk:
                    raise DataFileError(f"{where}: truncated data ({len(data)} of {nbytes} bytes)")
                data += chunk
    except DataFileError:
        raise
    except _ZIP_ERRORS as exc:
        raise DataFileError(f"{where}: corrupt or truncated archive member ({type(exc).__name__}: {exc})") from None
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return arr.reshape(shape, order="F" if fortran else "C")


def _as_features(X, where, scale_uint8):
    """Features -> floating point (see :func:`load_npz`), refusing NaN/Inf and non-numbers."""
    kind, size = X.dtype.kind, X.dtype.itemsize
    if kind == "f":
        X = X.astype(np.float32 if size < 4 else np.float64 if size > 8 else X.dtype.newbyteorder("="), copy=False)
    elif kind == "u" and size == 1 and scale_uint8:
        X = X.astype(np.float32) / np.float32(255.0)
    elif kind in "biu":
        X = X.astype(np.float32)
    else:
        raise DataFileError(f"{where} has dtype {X.dtype}: features must be real numbers")
    with np.errstate(over="ignore", invalid="ignore"):     # a finite sum proves every element finite
        finite = bool(np.isfinite(np.sum(X, dtype=np.float64)))
    if not finite and not np.isfinite(X).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(X))[0])
        raise DataFileError(f"{where} holds NaN or Inf (first at index {first})")
    return X


def _as_labels(y, where):
    """1-D class labels -> int64: integers as they are, integral floats converted."""
    kind = y.dtype.kind
    if kind in "bi" or (kind == "u" and y.dtype.itemsize < 8):
        return y.astype(np.int64)
    if kind == "u":
        if y.size and int(y.max()) > np.iinfo(np.int64).max:
            raise DataFileError(f"{where}: label {int(y.max())} does not fit in int64")
        return y.astype(np.int64)
    if kind != "f":
        raise DataFileError(f"{where} has dtype {y.dtype}: labels must be integers")
    y = y.astype(np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFileError(f"{where}: label {float(y[i])} at index {i} is NaN or infinite")
    frac = (y != np.round(y)) | (np.abs(y) >= 2.0 ** 63)
    if frac.any():
        i = int(np.argmax(frac))
        raise DataFileError(f"{where}: label {float(y[i])!r} at index {i} is not an integer; class labels must be "
                            f"integers (integral floats such as 2.0 are accepted)")
    return y.astype(np.int64)


class _Counted(io.RawIOBase):
    """A readable stream over ``f`` that raises :class:`DataFileTooLarge` once more than
    ``limit`` bytes have come through."""

    def __init__(self, f, limit, path, gz):
        self._f, self._limit, self._path, self._gz, self.count = f, limit, path, gz, 0

    def readable(self):
        return True

    def readinto(self, b):
        try:
            n = self._f.readinto(b)
        except _GZIP_ERRORS as exc:
            if not self._gz:
                raise
            raise DataFileError(f"{self._path}: corrupt or truncated gzip data ({exc})") from None
        self.count += n
        if self._limit is not None and self.count > self._limit:
            raise _too_large(self._path, f"more than {self._limit} bytes of "
                             f"{'decompressed ' if self._gz else ''}text", self._limit)
        return n


def load_csv(path, *, label_column: int | None = -1, header: bool = False, delimiter: str = ",",
             dtype="float32", return_classes: bool = False, max_bytes: int | None = DEFAULT_MAX_BYTES):
    """(X, y) from a CSV table (UTF-8, raw or gzip-compressed, told apart by the gzip magic
    bytes): one sample per row, numeric features, the label in ``label_column`` (the last column
    by default; ``None`` for no labels, then y is None).

    X: (N, n_columns - 1) in ``dtype``; y: (N,) int64.  Integer labels are kept as they are and
    integral floats (``2.0``) become those integers; class names become indices into their
    sorted unique values, returned as ``classes`` when ``return_classes=True`` (``(X, y,
    classes)``).  Non-integral numeric labels (``3.5``) are an error unless
    ``return_classes=True``, which numbers them by their sorted order too.  An empty or NaN label
    is an error.  ``header=True`` skips the first row.  Blank lines are ignored.  The file is
    read row by row and refused past ``max_bytes`` bytes of (decompressed) text.  Raises
    :class:`DataFileError` (a ValueError) naming the line and column of a non-numeric or
    non-finite feature, a bad label, a row with the wrong number of columns, or text that is
    not UTF-8.
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be a single character, got {delimiter!r}")
    path, limit = _existing(path), _limit(max_bytes)
    fmax = float(np.finfo(dtype).max)
    feats, labels, label_lines = array("d"), [], array("q")
    width = lc = first = None
    n_rows = 0
    with _open_data(path, limit) as (f, gz):
        text = io.TextIOWrapper(io.BufferedReader(_Counted(f, limit, path, gz)), encoding="utf-8-sig",
                                newline="")
        reader = csv.reader(text, delimiter=delimiter)
        skip = header
        try:
            for row in reader:
                n = reader.line_num
                row = [c.strip() for c in row]
                if not any(row):
                    continue
                if skip:
                    skip = False
                    continue
                if width is None:
                    width, first = len(row), n
                    if label_column is not None:
                        lc = int(label_column) + (width if int(label_column) < 0 else 0)
                        if not 0 <= lc < width:
                            raise DataFileError(f"{path}: label_column={label_column} but rows have {width} columns")
                        if width < 2:
                            raise DataFileError(f"{path}: rows have a single column: no features besides the label")
                if len(row) != width:
                    raise DataFileError(f"{path}: line {n} has {len(row)} columns, expected {width} (as in line {first})")
                for j, cell in enumerate(row):
                    if j == lc:
                        labels.append(cell)
                        label_lines.append(n)
                        continue
                    try:
                        v = float(cell)
                    except ValueError:
                        hint = " (is it a header? pass header=True)" if n == first and not header else ""
                        raise DataFileError(f"{path}: line {n}, column {j + 1}: {cell!r} is not a number{hint}") from None
                    if not abs(v) <= fmax:
                        raise DataFileError(f"{path}: line {n}, column {j + 1}: {cell!r} is NaN or Inf "
                                            f"(or out of {dtype} range): features must be finite")
                    feats.append(v)
                n_rows += 1
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{path}: not UTF-8 text (near line {reader.line_num + 1}: {exc.reason}); "
                                f"gzip and plain UTF-8 CSV are supported") from None
        except csv.Error as exc:
            raise DataFileError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
    if n_rows == 0:
        raise DataFileError(f"{path}: no data rows")
    X = np.frombuffer(feats, dtype=np.float64).astype(dtype).reshape(n_rows, -1)
    if lc is None:
        return (X, None, None) if return_classes else (X, None)
    y, classes = _labels(labels, label_lines, path, lc + 1, return_classes)
    return (X, y, classes) if return_classes else (X, y)


def _labels(cells, lines, path, column, numbered_ok):
    """Label strings -> (int64 labels, classes): integers and integral floats as those integers;
    class names (any non-number) become indices into the sorted names; non-integral numbers
    too when ``numbered_ok``, else they are an error.  Empty and NaN/Inf labels are an error."""
    values = []
    for cell, n in zip(cells, lines):
        try:
            v = int(cell)
        except ValueError:
            try:
                v = float(cell) if cell else math.nan
            except ValueError:               # a class name
                values = None
                continue
        if not math.isfinite(v):
            raise DataFileError(f"{path}: line {n}, column {column}: label {cell!r} is "
                                f"{'missing' if not cell else 'NaN or Inf'}")
        if values is not None:
            values.append(v)
    if values is None:
        classes = sorted(set(cells))
        index = {c: i for i, c in enumerate(classes)}
        return np.asarray([index[c] for c in cells], dtype=np.int64), classes
    for v, cell, n in zip(values, cells, lines):
        if v != int(v):
            if numbered_ok:
                classes = sorted(set(values))
                index = {c: i for i, c in enumerate(classes)}
                return np.asarray([index[c] for c in values], dtype=np.int64), classes
            raise DataFileError(f"{path}: line {n}, column {column}: label {cell!r} is not an integer; class "
                                f"labels must be integers (integral floats such as 2.0 are accepted) or names "
                                f"(pass return_classes=True to number non-integer values by their sorted order)")
        if not -2 ** 63 <= int(v) < 2 ** 63:
            raise DataFileError(f"{path}: line {n}, column {column}: label {cell!r} does not fit in int64")
    y = np.asarray([int(v) for v in values], dtype=np.int64)
    return y, sorted(set(y.tolist()))


def save_npz(path, X, y) -> None:
    """Write X and y to ``path`` as an uncompressed ``.npz`` (keys ``X`` and ``y``), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, X=np.asarray(X), y=np.asarray(y))
    os.replace(tmp, path)
