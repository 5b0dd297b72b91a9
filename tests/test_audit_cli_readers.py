"""Regression tests for the audit of the data-file readers and the ``xpdnn`` command line:
decompression limits, one clear error for malformed files, dtypes that ``Trainer.fit`` accepts,
and one-line errors (never tracebacks) for bad command-line input."""

import gzip
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import cli, devices
from xpdnn.cli import main
from xpdnn.datasets.files import (DEFAULT_MAX_BYTES, DataFileError, DataFileTooLarge, load_csv, load_mnist,
                                  load_npz, read_idx, read_idx_images)


def idx_header(shape, kind=0x08):
    return struct.pack(">I", (kind << 8) | len(shape)) + b"".join(struct.pack(">I", s) for s in shape)


def gzip_stream(path, head, chunk, repeats):
    """A gzip file of ``head`` followed by ``chunk`` ``repeats`` times, compressed as it goes."""
    co = zlib.compressobj(9, zlib.DEFLATED, 31)       # wbits 31: gzip container
    with open(path, "wb") as f:
        f.write(co.compress(head))
        for _ in range(repeats):
            f.write(co.compress(chunk))
        f.write(co.flush())


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# -- size limits ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_idx_gzip_bomb_is_refused_before_decompressing(tmp_path):
    p = tmp_path / "bomb-images-idx3-ubyte.gz"
    shape = (1024, 256, 256)                         # 64 MiB of zeros, about 64 KiB compressed
    gzip_stream(p, idx_header(shape), bytes(1 << 20), 64)
    assert p.stat().st_size < 1 << 20

    def read():
        with pytest.raises(DataFileTooLarge, match=r"shape \(1024, 256, 256\).*max_bytes=1048576"):
            read_idx_images(p, max_bytes=1 << 20)
    assert peak_bytes(read) < 4 << 20
    assert read_idx_images(p, max_bytes=None).shape == shape       # None: no limit
    with pytest.raises(DataFileTooLarge):
        load_mnist(p, p, max_bytes=1 << 20)


def test_idx_default_limit_is_2_gib(tmp_path):
    assert DEFAULT_MAX_BYTES == 2 << 30
    p = tmp_path / "big.gz"
    p.write_bytes(gzip.compress(idx_header((3072, 1024, 1024)) + bytes(1000)))   # promises 3 GiB
    with pytest.raises(DataFileTooLarge, match="3221225488 bytes decompressed"):
        read_idx(p)
    with pytest.raises(DataFileError, match="truncated data"):
        read_idx(p, max_bytes=None)                  # without a limit it is read (and is truncated)
    raw = tmp_path / "raw"
    raw.write_bytes(idx_header((10,)) + bytes(10))
    with pytest.raises(DataFileTooLarge, match="the file is 18 bytes"):
        read_idx(raw, max_bytes=17)
    assert read_idx(raw, max_bytes=18).shape == (10,)
    with pytest.raises(ValueError, match="max_bytes"):
        read_idx(raw, max_bytes=-1)


@pytest.mark.slow
def test_csv_gzip_bomb_is_refused_while_reading(tmp_path):
    p = tmp_path / "bomb.csv.gz"
    gzip_stream(p, b"", b"1,2,0\n" * 100_000, 100)  # 60 MB of text
    assert p.stat().st_size < 1 << 20

    def read():
        with pytest.raises(DataFileTooLarge, match="max_bytes=1048576"):
            load_csv(p, max_bytes=1 << 20)
    assert peak_bytes(read) < 16 << 20


def test_npz_limit_counts_uncompressed_sizes(tmp_path):
    p = tmp_path / "z.npz"
    np.savez_compressed(p, X=np.zeros((4096, 256), np.float32), y=np.zeros(4096, np.int64))   # 4 MiB
    with pytest.raises(DataFileTooLarge, match="arrays 'X' and 'y'"):
        load_npz(p, max_bytes=1 << 20)
    X, y = load_npz(p, max_bytes=8 << 20)
    assert X.shape == (4096, 256)


# -- malformed files: one clear error --------------------------------------------------------------

def test_truncated_and_corrupt_npz_are_data_file_errors(tmp_path):
    p = tmp_path / "a.npz"
    np.savez_compressed(p, X=np.random.default_rng(0).normal(size=(200, 5)), y=np.arange(200))
    blob = p.read_bytes()
    t = tmp_path / "t.npz"
    for cut in (len(blob) // 2, len(blob) - 10, 30):
        t.write_bytes(blob[:cut])
        with pytest.raises(DataFileError, match=str(t)):
            load_npz(t)
    c = tmp_path / "c.npz"
    bad = bytearray(blob)
    for i in range(200, 600):                       # scramble compressed data of the first member
        bad[i] ^= 0x5A
    c.write_bytes(bytes(bad))
    with pytest.raises(DataFileError, match=str(c)):
        load_npz(c)


def test_npz_with_a_huge_header_shape_is_refused_without_allocating(tmp_path):
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000, 10), }"
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    p = tmp_path / "h.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("X.npy", npy)
        z.writestr("y.npy", npy)
    with pytest.raises(DataFileError, match=r"'X'.*shape \(1000000000000, 10\)"):
        load_npz(p)


def test_npz_never_unpickles_and_names_other_problems(tmp_path):
    p = tmp_path / "o.npz"
    np.savez(p, X=np.array([{"a": 1}] * 3, dtype=object), y=np.arange(3))
    with pytest.raises(DataFileError, match="unpickling"):
        load_npz(p)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataFileError, match="single .npy"):
        load_npz(tmp_path / "one.npy")
    np.savez(p, X=np.array(["a", "b"]), y=np.arange(2))
    with pytest.raises(DataFileError, match="features must be real numbers"):
        load_npz(p)
    with pytest.raises(DataFileError, match="not a regular file"):
        load_npz(tmp_path)


def test_csv_gzip_reads_like_plain(tmp_path):
    text = "a,b,label\n1,2,0\n3.5,-4,2\n5,6e1,1\n"
    (tmp_path / "d.csv").write_text(text)
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(text.encode()))
    X, y = load_csv(tmp_path / "d.csv", header=True)
    Xg, yg = load_csv(tmp_path / "d.csv.gz", header=True)
    np.testing.assert_array_equal(Xg, X)
    np.testing.assert_array_equal(yg, y)
    assert yg.dtype == np.int64


def test_csv_malformed_inputs_are_data_file_errors(tmp_path):
    p = tmp_path / "d.csv"
    p.write_bytes(b"1,2,0\n\xff\xfe,3,1\n")
    with pytest.raises(DataFileError, match="not UTF-8"):
        load_csv(p)
    p.write_text("1," + "9" * 200_000 + ",0\n")    # longer than the csv module's field limit
    with pytest.raises(DataFileError, match="malformed CSV"):
        load_csv(p)
    p.write_text("1,1e39,0\n")                     # finite in float64, Inf in float32
    with pytest.raises(DataFileError, match="line 1, column 2"):
        load_csv(p)
    assert load_csv(p, dtype="float64")[0][0, 1] == 1e39
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(b"1,2,0\n" * 1000)[:-20])
    with pytest.raises(DataFileError, match="gzip"):
        load_csv(tmp_path / "t.csv.gz")


# -- labels and dtypes -----------------------------------------------------------------------------

def test_csv_labels_nan_missing_float_and_non_integral(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2,0\n3,4,nan\n")
    with pytest.raises(DataFileError, match=r"line 2, column 3: label 'nan'"):
        load_csv(p)
    p.write_text("1,2,cat\n3,4,\n")
    with pytest.raises(DataFileError, match=r"line 2, column 3: label '' is missing"):
        load_csv(p)
    p.write_text("1,2,0.0\n3,4,9.0\n5,6,3\n")
    X, y = load_csv(p)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 9, 3])
    p.write_text("1,2,0\n3,4,2.5\n")
    with pytest.raises(DataFileError, match=r"line 2, column 3: label '2.5' is not an integer"):
        load_csv(p)
    _, y, classes = load_csv(p, return_classes=True)      # asked for: numbered by sorted value
    np.testing.assert_array_equal(y, [0, 1])
    assert classes == [0.0, 2.5]
    p.write_text("2,1,0\n4,3,99999999999999999999\n")
    with pytest.raises(DataFileError, match="int64"):
        load_csv(p)


def test_npz_dtypes_are_what_fit_accepts(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 12), dtype=np.uint8)
    p = tmp_path / "img.npz"
    np.savez(p, x_train=pixels, y_train=(np.arange(40) % 3).astype(np.uint8))
    X, y = load_npz(p)
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X, pixels / 255.0, rtol=1e-6)      # as load_mnist scales its pixels
    X_raw, _ = load_npz(p, scale_uint8=False)
    np.testing.assert_array_equal(X_raw, pixels.astype(np.float32))
    net = xd.Sequential(xd.Linear(12, 3))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), batch_size=8, epochs=1,
                         progress=False)
    assert len(trainer.fit(X, y)["loss"]) == 1

    np.savez(p, X=np.arange(6, dtype=np.int16).reshape(3, 2) - 3, y=np.array([0.0, 1.0, 2.0]))
    X, y = load_npz(p)
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, [[-3, -2], [-1, 0], [1, 2]])    # other integers: values as they are
    np.testing.assert_array_equal(y, [0, 1, 2])
    np.savez(p, X=np.ones((3, 2), np.float16), y=np.arange(3))
    assert load_npz(p)[0].dtype == np.float32
    np.savez(p, X=np.ones((3, 2)), y=np.array([0.0, np.nan, 2.0]))
    with pytest.raises(DataFileError, match=r"array 'y': label nan at index 1"):
        load_npz(p)
    np.savez(p, X=np.ones((3, 2)), y=np.array([0.0, 1.5, 2.0]))
    with pytest.raises(DataFileError, match=r"array 'y': label 1.5 at index 1 is not an integer"):
        load_npz(p)
    np.savez(p, X=np.array([[1.0, np.inf]]), y=np.zeros(1))
    with pytest.raises(DataFileError, match=r"array 'X' holds NaN or Inf \(first at index \(0, 1\)\)"):
        load_npz(p)


# -- command line ----------------------------------------------------------------------------------

FAST = ["train", "--quiet", "--epochs", "1", "--hidden", "8"]


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of ``xpdnn`` run in-process."""
    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs: 0 is out of range"),
    (["--epochs", "many"], "--epochs: 'many' is not an integer"),
    (["--batch-size", "0"], "--batch-size: 0 is out of range"),
    (["--lr", "0"], "--lr: 0.0 is out of range"),
    (["--lr", "nan"], "--lr: 'nan' is not a finite number"),
    (["--lr", "inf"], "--lr: 'inf' is not a finite number"),
    (["--dropout", "1"], r"--dropout: 1.0 is out of range: must be in \[0.0, 1.0\)"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--momentum", "1"], "--momentum"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--test-size", "1.5"], r"--test-size: 1.5 is out of range: must be in \(0.0, 1.0\)"),
    (["--test-size", "-0.5"], "--test-size: -0.5 is out of range"),
    (["--test-size", "1"], "--test-size"),
    (["--seed", "-1"], "--seed: -1 is out of range"),
    (["--seed", str(2 ** 64)], "--seed"),
    (["--hidden", "256,abc"], "--hidden: '256,abc': 'abc' is not a layer size"),
    (["--hidden", "0"], "--hidden: '0': layer sizes must be positive"),
    (["--hidden", "16,,8"], "--hidden"),
    (["--activation", "swish"], "unknown activation 'swish'; choose from relu, tanh, sigmoid"),
    (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'; choose from sgd, nesterov, adam"),
    (["--backend", "jax"], "unknown backend 'jax'; choose from auto, numpy, cupy, torch, array_api_strict"),
    (["--preprocess", "pca:x"], "K must be a positive integer"),
    (["--preprocess", "zca:3"], "only pca and pca-whiten take :K"),
    (["--preprocess", "whiten"], "unknown preprocessing 'whiten'; choose from none, mean"),
    (["--save", ""], "--save: the path is empty"),
])
def test_train_bad_flags_are_one_line_argparse_errors(capsys, flags, message):
    rc, out, err = run_cli(capsys, *FAST, *flags)
    assert rc == 2
    assert out == ""                                   # nothing ran
    last = err.strip().splitlines()[-1]
    assert last.startswith("xpdnn train: error: argument ")
    assert re.search(message, last), last
    assert "Traceback" not in err


def test_train_save_path_is_checked_before_training(capsys, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    for path, message in ((tmp_path / "missing" / "m.xpd", "does not exist"), (tmp_path, "is a directory"),
                          (tmp_path / "afile" / "m.xpd", "is not a folder")):
        rc, out, err = run_cli(capsys, *FAST, "--save", str(path))
        assert rc == 2 and out == "" and "Traceback" not in err
        assert message in err.strip().splitlines()[-1]

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(cli.tempfile, "mkstemp", refuse)
    rc, out, err = run_cli(capsys, *FAST, "--save", str(tmp_path / "m.xpd"))
    assert rc == 2 and out == ""
    assert "cannot write in" in err and "Permission denied" in err
    monkeypatch.undo()
    rc, out, err = run_cli(capsys, *FAST, "--save", str(tmp_path / "m.xpd"))
    assert rc == 0 and (tmp_path / "m.xpd").is_file()
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".xpdnn")] == []    # the probe is gone


def test_train_names_are_case_insensitive(capsys):
    rc, out, err = run_cli(capsys, *FAST, "--activation", "ReLU", "--optimizer", "ADAM", "--backend", "NumPy",
                           "--preprocess", "PCA:16")
    assert rc == 0, err
    assert "backend: numpy" in out and "trained 1 epochs" in out


def test_train_too_large_mlp_is_refused_before_allocating(capsys, monkeypatch):
    rc, out, err = run_cli(capsys, *FAST, "--hidden", "100000000")
    assert rc == 1
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("xpdnn: error: --hidden: a 64-100000000-10 MLP has 7,500,000,010 parameters")
    assert "trained" not in out
    monkeypatch.setattr(cli, "_available_bytes", lambda backend: 1 << 20)
    rc, out, err = run_cli(capsys, *FAST, "--hidden", "4096")
    assert rc == 1 and "needs about" in err and "available memory (1 MiB)" in err
    assert "Linear" not in out                         # the net was never built


def test_train_cupy_without_cuda_names_the_problem(capsys, monkeypatch):
    why = ("CuPy sees no CUDA device (CUDARuntimeError: cudaErrorInsufficientDriver: CUDA driver version is "
           "insufficient for CUDA runtime version)")
    monkeypatch.setattr(devices, "cuda_available", lambda: (False, why))
    rc, out, err = run_cli(capsys, *FAST, "--backend", "cupy")
    assert rc == 1
    assert len(err.strip().splitlines()) == 1
    assert "no usable CUDA device" in err and "--backend auto would pick numpy" in err
    assert "insufficient" not in err
    rc, out, err = run_cli(capsys, *FAST, "--backend", "auto")
    assert rc == 0 and "backend: numpy (no usable CUDA device" in out and "insufficient" not in out


def test_train_runtime_failures_are_one_line(capsys):
    rc, out, err = run_cli(capsys, *FAST, "--test-size", "0.001")     # rounds to no test sample per class
    assert rc == 1 and err.startswith("xpdnn: error: --test-size 0.001 leaves") and err.count("\n") == 1
    rc, out, err = run_cli(capsys, *FAST, "--preprocess", "pca:1000")
    assert rc == 1 and "K must be <= 64" in err and err.count("\n") == 1
    rc, out, err = run_cli(capsys, "train", "--quiet", "--epochs", "3", "--hidden", "8", "--lr", "1e10")
    assert rc == 1 and err.startswith("xpdnn: error: loss became NaN or Inf") and err.count("\n") == 1


def test_bench_bad_input_fails_before_running(capsys, tmp_path):
    quick = ["bench", "--only", "W1", "--peers", "xpdnn-numpy", "--scale", "0.01", "--repeat", "1", "--warmup", "0",
             "--no-memory", "--quiet"]
    for flags, message in ((["--seed", "-1"], "--seed: -1 is out of range"),
                           (["--json", str(tmp_path / "no" / "r.json")], "--json: "),
                           (["--plot", str(tmp_path)], "--plot: "),
                           (["--scale", "inf"], "--scale: inf is not a finite number")):
        rc, out, err = run_cli(capsys, *quick, *flags)
        assert rc == 2, (flags, out, err)
        assert err.strip().splitlines()[-1].startswith("xpdnn bench: error: argument " + message.split(":")[0])
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["info"], ["train", "--epochs", "1", "--hidden", "8"]])
def test_closed_pipe_exits_quietly(args):
    """``xpdnn info | head -1``: the reader closes the pipe; exit status 1 and nothing on stderr,
    as in the Python docs' note on SIGPIPE."""
    p = subprocess.Popen([sys.executable, "-u", "-m", "xpdnn.cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    p.stdout.close()                                  # before the child can have written anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 1
    assert err == ""
