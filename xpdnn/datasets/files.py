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
    X, y, kx, ky = _npz_arrays(path, x_key, y_key, max_bytes)
    X = _as_features(X, f"{path}: array {kx!r}", scale_uint8)
    y = _as_labels(y, f"{path}: array {ky!r}") if y.ndim == 1 else _as_features(y, f"{path}: array {ky!r}", False)
    return X, y


def _npz_arrays(path, x_key, y_key, max_bytes, *, need_y=True):
    """(X, y, x key, y key) of an ``.npz`` archive as stored (checked as :func:`load_npz`
    describes); with ``need_y=False`` y is None unless ``y_key`` names it."""
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

            kx = pick(x_key, _X_KEYS, "X")
            ky = pick(y_key, _Y_KEYS, "y") if need_y or y_key is not None else None
            used = members[kx].file_size + (members[ky].file_size if ky not in (None, kx) else 0)
            if limit is not None and used > limit:
                what = f"arrays {kx!r} and {ky!r}" if ky is not None else f"array {kx!r}"
                raise _too_large(path, f"{what} hold {used} bytes uncompressed", limit)
            X = _read_npy_member(zf, members[kx], path, kx)
            y = None if ky is None else X if ky == kx else _read_npy_member(zf, members[ky], path, ky)
    if X.ndim == 0 or (y is not None and y.ndim == 0):
        shapes = f"{X.shape} and {y.shape}" if y is not None else f"{X.shape}"
        raise DataFileError(f"{path}: X and y must have a sample axis, got shapes {shapes}")
    if y is not None and X.shape[0] != y.shape[0]:
        raise DataFileError(f"shape mismatch in {path}: {kx!r} has {X.shape[0]} samples, {ky!r} has {y.shape[0]}")
    return X, y, kx, ky


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


def load_csv(path, *, label_column: int | str | None = -1, header: bool | None = False, delimiter: str = ",",
             dtype="float32", return_classes: bool = False, max_bytes: int | None = DEFAULT_MAX_BYTES):
    """(X, y) from a CSV table (UTF-8, raw or gzip-compressed, told apart by the gzip magic
    bytes): one sample per row, numeric features, the label in ``label_column`` (the last column
    by default; an index, negative from the end, or a column name from the header; ``None`` for
    no labels, then y is None).

    X: (N, n_columns - 1) in ``dtype``; y: (N,) int64.  Integer labels are kept as they are and
    integral floats (``2.0``) become those integers; class names become indices into their
    sorted unique values, returned as ``classes`` when ``return_classes=True`` (``(X, y,
    classes)``).  Non-integral numeric labels (``3.5``) are an error unless
    ``return_classes=True``, which numbers them by their sorted order too.  An empty or NaN label
    is an error.  ``header=True`` takes the first row as column names, ``header=None`` decides
    from the first two rows (see :func:`load_table`).  Blank lines are ignored.  The file is
    read row by row and refused past ``max_bytes`` bytes of (decompressed) text.  Raises
    :class:`DataFileError` (a ValueError) naming the line and column of a non-numeric or
    non-finite feature, a bad label, a row with the wrong number of columns, or text that is
    not UTF-8.
    """
    t = _read_table(path, _label_chooser(label_column), header=header, delimiter=delimiter, dtype=dtype,
                    max_bytes=max_bytes)
    if t.label_index is None:
        return (t.X, None, None) if return_classes else (t.X, None)
    y, classes = _labels(t.label_cells, t.label_lines, t.path, t.label_index + 1, return_classes)
    return (t.X, y, classes) if return_classes else (t.X, y)


class _Table:
    """What :func:`_read_table` read: features ``X`` (N, D), the label column's raw cells and
    their line numbers, the header's column names (None without a header) and which columns
    became features and label."""

    def __init__(self, path, X, label_cells, label_lines, columns, feature_index, label_index):
        self.path, self.X, self.label_cells, self.label_lines = path, X, label_cells, label_lines
        self.columns, self.feature_index, self.label_index = columns, feature_index, label_index


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def looks_like_header(first: list[str], second: list[str] | None) -> bool:
    """Whether the first row of a table holds column names: some cell of it is not a number
    where the second row has a number in that column (a single row: none of its cells is a
    number).  A header of numbers (``1,2,3``) cannot be told from data: pass ``header=True``."""
    if second is None:
        return bool(first) and not any(_is_number(c) for c in first)
    return any(c and not _is_number(c) and j < len(second) and _is_number(second[j])
               for j, c in enumerate(first))


def _rows(path, limit, delimiter):
    """The non-blank rows of a CSV file as (line number, stripped cells), read incrementally."""
    with _open_data(path, limit) as (f, gz):
        text = io.TextIOWrapper(io.BufferedReader(_Counted(f, limit, path, gz)), encoding="utf-8-sig",
                                newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            for row in reader:
                row = [c.strip() for c in row]
                if any(row):
                    yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise DataFileError(f"{path}: not UTF-8 text (near line {reader.line_num + 1}: {exc.reason}); "
                                f"gzip and plain UTF-8 CSV are supported") from None
        except csv.Error as exc:
            raise DataFileError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None


def _column_index(path, spec, width, columns, what="label_column"):
    """The 0-based index of column ``spec``: an int (negative from the end), a column name of
    the header, or a string holding an int."""
    if isinstance(spec, str):
        if columns is not None and spec in columns:
            if columns.count(spec) > 1:
                raise DataFileError(f"{path}: {what} {spec!r} names {columns.count(spec)} columns of the header")
            return columns.index(spec)
        try:
            spec = int(spec)
        except ValueError:
            if columns is None:
                raise DataFileError(f"{path}: {what} {spec!r} is a column name but the file has no header row "
                                    f"(give a column index, or pass header=True if the first row holds names)") from None
            raise DataFileError(f"{path}: no column named {spec!r}; the columns are "
                                f"{_clip_list(columns)}") from None
    if isinstance(spec, bool) or not isinstance(spec, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, a column name or None, got {spec!r}")
    index = int(spec) + (width if int(spec) < 0 else 0)
    if not 0 <= index < width:
        raise DataFileError(f"{path}: {what}={spec} but rows have {width} columns "
                            f"(indices 0..{width - 1}, or -{width}..-1 from the end)")
    return index


def _clip_list(names, n=12):
    shown = ", ".join(repr(c) for c in names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _label_chooser(label, what="label_column"):
    """A chooser for :func:`_read_table`: every column a feature except ``label`` (None: none)."""
    def choose(path, width, columns):
        if label is None:
            return list(range(width)), None
        lc = _column_index(path, label, width, columns, what)
        if width < 2:
            raise DataFileError(f"{path}: rows have a single column: no features besides the label")
        return [j for j in range(width) if j != lc], lc
    return choose


def _read_table(path, choose, *, header, delimiter, dtype, max_bytes):
    """Read a CSV table: ``choose(path, width, columns)`` returns (feature column indices, label
    column index or None) once the first data row is known; features are parsed as numbers,
    label cells kept as text.  ``header``: True, False or None (decided by
    :func:`looks_like_header`)."""
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise ValueError(f"delimiter must be a single character, got {delimiter!r}")
    path, limit = _existing(path), _limit(max_bytes)
    fmax = float(np.finfo(dtype).max)
    feats, labels, label_lines = array("d"), [], array("q")
    width = first = columns = fi = lc = names = None
    n_rows = 0
    rows = _rows(path, limit, delimiter)
    try:
        head = [r for r in (next(rows, None), next(rows, None)) if r is not None]
        if header is None:
            header = bool(head) and looks_like_header(head[0][1], head[1][1] if len(head) > 1 else None)
        header_line = None
        if header and head:
            header_line, columns = head.pop(0)
        for n, row in _chain(head, rows):
            if width is None:
                width, first = len(row), n
                if columns is not None and len(columns) != width:
                    raise DataFileError(f"{path}: the header (line {header_line}) has {len(columns)} columns but "
                                        f"line {n} has {width}")
                fi, lc = choose(path, width, columns)
                names = columns or [None] * width
            if len(row) != width:
                raise DataFileError(f"{path}: line {n} has {len(row)} columns, expected {width} (as in line {first})")
            for j in fi:
                cell = row[j]
                try:
                    v = float(cell)
                except ValueError:
                    hint = " (is it a header? pass header=True; --header on the command line)" \
                        if n == first and not header else ""
                    raise DataFileError(f"{path}: line {n}, column {j + 1}{_named(names[j])}: {cell!r} is not a "
                                        f"number{hint}") from None
                if not abs(v) <= fmax:
                    raise DataFileError(f"{path}: line {n}, column {j + 1}{_named(names[j])}: {cell!r} is NaN or "
                                        f"Inf (or out of {dtype} range): features must be finite")
                feats.append(v)
            if lc is not None:
                labels.append(row[lc])
                label_lines.append(n)
            n_rows += 1
    finally:
        rows.close()
    if n_rows == 0:
        raise DataFileError(f"{path}: no data rows")
    X = np.frombuffer(feats, dtype=np.float64).astype(dtype).reshape(n_rows, len(fi))
    return _Table(path, X, labels, label_lines, columns, fi, lc)


def _named(name):
    return f" ({name!r})" if name else ""


def _chain(first, rest):
    yield from first
    yield from rest


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


# -- a data set for training or prediction, whatever the file kind (what ``xpdnn train --data`` reads) --

TASKS = ("classify", "regress")
MAX_INFERRED_CLASSES = 20       # integer targets with at most this many values are classes


class Dataset:
    """Features and targets read by :func:`load_dataset`.

    ``X``: (N, D) float32.  ``y``: class indices (N,) int64 into ``classes`` for
    ``task="classify"``; float32 targets (N,) or (N, K) for ``task="regress"``.  ``classes``:
    the original label of each class index (ints, floats or strings; None for regression).
    ``feature_names``: the header's names of the feature columns (None without a header);
    ``target``: the target column's name, or its 0-based index without a header (None for
    other kinds); ``kind``: ``"csv"``, ``"npz"`` or ``"mnist"``; ``task_note``: how the task
    was decided.  ``X_test``/``y_test``: a test set that came with the data (an MNIST
    folder's ``t10k`` files), else None.
    """

    def __init__(self, path, kind, X, y, task, classes=None, feature_names=None, target=None, task_note="",
                 X_test=None, y_test=None):
        self.path, self.kind, self.X, self.y, self.task = str(path), kind, X, y, task
        self.classes, self.feature_names, self.target, self.task_note = classes, feature_names, target, task_note
        self.X_test, self.y_test = X_test, y_test

    def __repr__(self):
        return (f"Dataset({self.kind} {self.path!r}: {self.X.shape[0]} samples, {self.X.shape[1]} features, "
                f"task {self.task})")


def data_kind(path) -> str:
    """``"mnist"`` (a folder of MNIST IDX files), ``"idx"`` (one IDX file), ``"npz"`` or
    ``"csv"``, told from the path and the file's first bytes (after gzip decompression),
    never from its name alone.  A missing path raises FileNotFoundError."""
    path = Path(path)
    if path.is_dir():
        return "mnist"
    _existing(path)
    with open(path, "rb") as raw:
        head = raw.read(4)
        if head[:2] == b"\x1f\x8b":
            raw.seek(0)
            try:
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    head = f.read(4)
            except _GZIP_ERRORS as exc:
                raise DataFileError(f"{path}: corrupt gzip data ({exc})") from None
    if head.startswith((b"PK", b"\x93NUM")):          # a zip archive, or a lone .npy (refused by the .npz reader)
        return "npz"
    if len(head) == 4 and head[:2] == b"\x00\x00" and head[2] in _IDX_TYPES and head[3] > 0:
        return "idx"
    return "csv"


def _default_delimiter(path) -> str:
    name = Path(path).name.lower()
    return "\t" if name.endswith((".tsv", ".tsv.gz", ".tab")) else ","


def _check_task(task):
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)} or None (inferred), got {task!r}")


def _parse_target_cell(cell):
    """int, float, or None for a cell that is not a number."""
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return None


def targets_from_cells(cells, lines, where, task=None):
    """(y, task, classes, note) from a CSV column of target cells (text, with line numbers).

    Names (any cell that is not a number) are classes.  Numbers are classes when ``task`` is
    ``"classify"``, or, left to inference (``task=None``), when every one is an integer (or an
    integral float such as ``2.0``) and there are at most :data:`MAX_INFERRED_CLASSES`
    different ones; non-integral numbers are regression targets.  Many different integers are
    ambiguous: a :class:`DataFileError` asks for the task.  Empty, NaN and Inf targets are
    errors.  Class targets come back as indices into the sorted classes."""
    _check_task(task)
    values, names = [], False
    for cell, n in zip(cells, lines):
        v = _parse_target_cell(cell) if cell else math.nan
        if v is None:
            names = True
        elif not math.isfinite(v):
            raise DataFileError(f"{where}: line {n}: target {cell!r} is {'missing' if not cell else 'NaN or Inf'}")
        values.append(v)
    if names:
        if task == "regress":
            n, cell = next((n, c) for v, c, n in zip(values, cells, lines) if v is None)
            raise DataFileError(f"{where}: line {n}: target {cell!r} is not a number; regression needs numeric "
                                f"targets")
        classes = sorted(set(cells))
        index = {c: i for i, c in enumerate(classes)}
        return (np.asarray([index[c] for c in cells], dtype=np.int64), "classify", classes,
                f"{len(classes)} class names")
    return _numeric_targets(values, where, task)


def _numeric_targets(values, where, task):
    integral = all(float(v).is_integer() for v in values)
    distinct = sorted(set(int(v) if integral else float(v) for v in values))
    note = "as asked"
    if task is None:
        if not integral:
            task, note = "regress", "inferred: the targets are not all integers"
        elif len(distinct) <= MAX_INFERRED_CLASSES:
            task, note = "classify", f"inferred: {len(distinct)} different integer targets"
        else:
            raise DataFileError(f"{where}: the targets are {len(distinct)} different integers: classes or numbers "
                                f"to predict? Say which (task='classify' or 'regress'; --task on the command line)")
    if task == "regress":
        return np.asarray(values, dtype=np.float32), task, None, note
    index = {c: i for i, c in enumerate(distinct)}
    y = np.asarray([index[int(v) if integral else float(v)] for v in values], dtype=np.int64)
    return y, task, distinct, note


def targets_from_array(y, where, task=None):
    """(y, task, classes, note) from a target array (an ``.npz`` member or labels in memory),
    by the rules of :func:`targets_from_cells`: strings are class names; a 1-D numeric y is
    classes or regression targets; a 2-D y is regression targets, or, when every row is one-hot
    (or ``task="classify"`` says so), class probabilities whose argmax is the class."""
    _check_task(task)
    y = np.asarray(y)
    if y.ndim == 0 or y.ndim > 2:
        raise DataFileError(f"{where}: targets must be 1-D (N,) or 2-D (N, K), got shape {y.shape}")
    kind = y.dtype.kind
    if kind in "US":
        if y.ndim != 1:
            raise DataFileError(f"{where}: class names must be a 1-D array, got shape {y.shape}")
        if task == "regress":
            raise DataFileError(f"{where}: has dtype {y.dtype}: regression needs numeric targets")
        names = [str(v) for v in y.tolist()]
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        return (np.asarray([index[c] for c in names], dtype=np.int64), "classify", classes,
                f"{len(classes)} class names")
    if kind not in "biuf":
        raise DataFileError(f"{where} has dtype {y.dtype}: targets must be numbers or class names")
    y = y.astype(np.float64) if kind == "f" else y
    if kind == "f" and not np.isfinite(y).all():
        i = tuple(int(j) for j in np.argwhere(~np.isfinite(y))[0])
        raise DataFileError(f"{where}: target at index {i if y.ndim > 1 else i[0]} is NaN or Inf")
    if y.ndim == 2:
        one_hot = y.shape[1] > 1 and bool(np.all((y == 0) | (y == 1))) and bool(np.all(y.sum(axis=1) == 1))
        if task == "classify" or (task is None and one_hot):
            if np.any(y < 0) or not np.allclose(y.sum(axis=1), 1.0, atol=1e-6):
                raise DataFileError(f"{where}: 2-D class targets must be probabilities (rows of non-negative "
                                    f"numbers summing to 1)")
            note = "inferred: one-hot rows" if task is None else "as asked"
            return (np.argmax(y, axis=1).astype(np.int64), "classify", list(range(y.shape[1])), note)
        return y.astype(np.float32), "regress", None, "inferred: 2-D targets" if task is None else "as asked"
    return _numeric_targets(y.tolist(), where, task)


def load_table(path, *, target: int | str | None = -1, header: bool | None = None, delimiter: str | None = None,
               task: str | None = None, dtype="float32", max_bytes: int | None = DEFAULT_MAX_BYTES) -> Dataset:
    """A CSV table (plain or gzip) as a :class:`Dataset`: one sample per row, numeric features,
    the target in column ``target`` (an index, negative from the end, or a header name; a
    string of digits is a name when the header has it, else an index; None: no target, y is
    None).  ``header=None`` decides whether the first row holds column names
    (:func:`looks_like_header`); ``delimiter=None`` is a tab for ``.tsv`` files, else a comma.
    Targets and task as :func:`targets_from_cells` decides them.  Raises
    :class:`DataFileError` naming the file, line and column of what is wrong."""
    _check_task(task)
    t = _read_table(path, _label_chooser(target, "target"), header=header,
                    delimiter=delimiter or _default_delimiter(path),
                    dtype=dtype, max_bytes=max_bytes)
    names = None if t.columns is None else [t.columns[j] for j in t.feature_index]
    if t.label_index is None:
        return Dataset(path, "csv", t.X, None, task, feature_names=names)
    tname = t.columns[t.label_index] if t.columns is not None else t.label_index
    where = f"{t.path}: target column {tname!r}" if t.columns is not None else \
        f"{t.path}: target column {t.label_index + 1}"
    y, task, classes, note = targets_from_cells(t.label_cells, t.label_lines, where, task)
    return Dataset(path, "csv", t.X, y, task, classes, names, tname, note)


def load_dataset(path, *, target: int | str | None = None, header: bool | None = None, delimiter: str | None = None,
                 x_key: str | None = None, y_key: str | None = None, task: str | None = None,
                 max_bytes: int | None = DEFAULT_MAX_BYTES) -> Dataset:
    """Features and targets for training from any supported file, as a :class:`Dataset`:

    * a CSV table, plain or gzip (:func:`load_table`; ``target`` defaults to the last column);
    * an ``.npz`` archive (:func:`load_npz`'s keys, or ``x_key``/``y_key``); X is flattened to
      (N, D), uint8 pixels scaled to [0, 1];
    * a folder of MNIST/Fashion-MNIST IDX files (:func:`load_mnist_dir`): the ``train`` files,
      and the ``t10k`` files, when present, as ``X_test``/``y_test``.

    The file kind comes from :func:`data_kind`; ``target``/``header``/``delimiter`` apply to
    CSV only and ``x_key``/``y_key`` to ``.npz`` only (given for another kind they are an error,
    not silently ignored).  ``task``: ``"classify"``, ``"regress"`` or None (inferred, see
    :func:`targets_from_cells`)."""
    _check_task(task)
    kind = data_kind(path)
    given = {"target": target, "header": header, "delimiter": delimiter, "x_key": x_key, "y_key": y_key}
    allowed = {"csv": ("target", "header", "delimiter"), "npz": ("x_key", "y_key")}.get(kind, ())
    wrong = [k for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        raise DataFileError(f"{path} is {_KIND_WORDS[kind]}: {' and '.join(wrong)} "
                            f"{'does' if len(wrong) == 1 else 'do'} not apply to it")
    if kind == "csv":
        return load_table(path, target=-1 if target is None else target, header=header, delimiter=delimiter,
                          task=task, max_bytes=max_bytes)
    if kind == "npz":
        X, y, kx, ky = _npz_arrays(path, x_key, y_key, max_bytes)
        X = _as_features(X.reshape(X.shape[0], -1) if X.ndim != 2 else X, f"{path}: array {kx!r}", True)
        y, task, classes, note = targets_from_array(y, f"{path}: array {ky!r}", task)
        return Dataset(path, "npz", X, y, task, classes, task_note=note)
    if kind == "idx":
        raise DataFileError(f"{path} is a single IDX file; give the folder holding the MNIST image and label files")
    X, y = load_mnist_dir(path, "train", max_bytes=max_bytes)
    if task == "regress":
        raise DataFileError(f"{path}: MNIST labels are classes; regression does not apply")
    classes = sorted(int(c) for c in np.unique(y))
    index = np.full(max(classes) + 1, -1, dtype=np.int64)
    index[classes] = np.arange(len(classes))
    X_test = y_test = None
    if _has_mnist_files(path, "t10k"):
        X_test, labels = load_mnist_dir(path, "test", max_bytes=max_bytes)
        unknown = sorted(set(np.unique(labels).tolist()) - set(classes))
        if unknown:
            raise DataFileError(f"{path}: the t10k labels hold classes {unknown[:5]} that the training labels lack")
        y_test = index[labels]
    return Dataset(path, "mnist", X, index[y], "classify", classes, task_note=f"{len(classes)} digit classes",
                   X_test=X_test, y_test=y_test)


_KIND_WORDS = {"csv": "a CSV table", "npz": "an .npz archive", "mnist": "a folder of MNIST IDX files",
               "idx": "an IDX file"}


def _has_mnist_files(directory, prefix) -> bool:
    d = Path(directory)
    return any((d / f"{prefix}-images{sep}idx3-ubyte{ext}").is_file() for sep in ("-", ".") for ext in ("", ".gz"))


def load_features(path, n_features: int, *, feature_names=None, target=None, header: bool | None = None,
                  delimiter: str | None = None, x_key: str | None = None, kind: str = "test",
                  max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Features (N, ``n_features``) float32 to predict from, whatever the file kind:

    * CSV: with a header and ``feature_names`` (the columns a model was trained on), those
      columns in that order (others, the target among them, are ignored); otherwise every
      column, or every column but ``target`` (a 0-based index) when the table has one column
      more than ``n_features``;
    * ``.npz``: the array ``x_key`` (or the first of load_npz's X keys), flattened per sample;
    * an IDX image file, or an MNIST folder (its ``kind`` files: ``"test"`` = t10k, ``"train"``),
      pixels scaled to [0, 1].

    Raises :class:`DataFileError` naming what does not fit (missing columns, a wrong number of
    features, a cell that is not a number)."""
    n_features = int(n_features)
    fkind = data_kind(path)
    given = {"header": header, "delimiter": delimiter, "x_key": x_key}
    allowed = {"csv": ("header", "delimiter"), "npz": ("x_key",)}.get(fkind, ())
    wrong = [k for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        raise DataFileError(f"{path} is {_KIND_WORDS[fkind]}: {' and '.join(wrong)} "
                            f"{'does' if len(wrong) == 1 else 'do'} not apply to it")
    if fkind == "csv":
        X = _read_table(path, _feature_chooser(n_features, feature_names, target), header=header,
                        delimiter=delimiter or _default_delimiter(path), dtype="float32", max_bytes=max_bytes).X
    elif fkind == "npz":
        X, _, kx, _ = _npz_arrays(path, x_key, None, max_bytes, need_y=False)
        X = _as_features(X.reshape(X.shape[0], -1) if X.ndim != 2 else X, f"{path}: array {kx!r}", True)
    else:
        if fkind == "mnist":
            prefix = {"test": "t10k", "train": "train"}.get(kind)
            if prefix is None:
                raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
            d = Path(path)
            names = [d / f"{prefix}-images{sep}idx3-ubyte{ext}" for sep in ("-", ".") for ext in ("", ".gz")]
            hit = next((c for c in names if c.is_file()), None)
            if hit is None:
                raise FileNotFoundError(f"{path}: no {kind} images file (looked for "
                                        f"{', '.join(c.name for c in names)})")
            path = hit
        images = read_idx_images(path, max_bytes=max_bytes)
        X = (images.astype(np.float32) / np.float32(255.0)).reshape(images.shape[0], -1)
    if X.shape[1] != n_features:
        raise DataFileError(f"{path}: {X.shape[1]} features per sample, but the model expects {n_features}")
    return X


def _feature_chooser(n_features, feature_names, target):
    def choose(path, width, columns):
        if columns is not None and feature_names:
            missing = [f for f in feature_names if f not in columns]
            if missing:
                raise DataFileError(f"{path}: no column {missing[0]!r}" + (f" (nor {len(missing) - 1} other(s))"
                                                                          if len(missing) > 1 else "")
                                    + f"; the model was trained on the columns {_clip_list(list(feature_names))}")
            return [columns.index(f) for f in feature_names], None
        if width == n_features:
            return list(range(width)), None
        if width == n_features + 1 and isinstance(target, int) and -width <= target < width:
            t = target % width
            return [j for j in range(width) if j != t], None
        raise DataFileError(f"{path}: rows have {width} columns but the model expects {n_features} features"
                            + (f" (or {n_features + 1} with its target column {target})"
                               if isinstance(target, int) else ""))
    return choose


@contextmanager
def atomic_output(path, *, text: bool = False):
    """Open ``path`` for writing so that it appears whole or not at all: the data go to a
    temporary file in the same folder (``.<name>.<pid>.<random>.tmp``, mode 0666 less the
    umask, as ``open`` gives) that is flushed, fsynced and renamed over ``path`` when the
    ``with`` block ends without an error (the folder is fsynced too, so the rename survives a
    crash), and removed when it raises."""
    import secrets

    path = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with (os.fdopen(fd, "w", newline="", encoding="utf-8") if text else os.fdopen(fd, "wb")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be opened)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
