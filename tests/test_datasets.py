import gzip
import struct
import threading

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.datasets.files import (load_csv, load_mnist, load_mnist_dir, load_npz,
                                  read_idx, read_idx_images, read_idx_labels, save_npz)
from xpdnn.datasets.streaming import BatchStream, mover
from xpdnn.datasets.toy import spirals, xor


def test_xor_points():
    X, y = xor()
    assert X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(X, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, np.logical_xor(X[:, 0], X[:, 1]).astype(int))
    # no linear model fits XOR: the least-squares fit predicts 0.5 everywhere (seed 004)
    A = np.c_[X, np.ones(4)]
    w = np.linalg.lstsq(A, y.astype(float), rcond=None)[0]
    np.testing.assert_allclose(A @ w, 0.5, atol=1e-6)


def test_spirals_shape_labels_and_seed():
    X, y = spirals(50, 4, seed=1)
    assert X.shape == (200, 2) and y.shape == (200,) and X.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(y), [50] * 4)
    np.testing.assert_allclose(np.hypot(X[:, 0], X[:, 1])[:50], np.linspace(0, 1, 50), atol=1e-6)
    np.testing.assert_array_equal(spirals(50, 4, seed=1)[0], X)
    assert not np.array_equal(spirals(50, 4, seed=2)[0], X)
    X0, _ = spirals(50, 4, noise=0.0, dtype="float64")
    # without noise arm j is arm 0 rotated by 4j radians
    t0 = np.arctan2(X0[1:50, 0], X0[1:50, 1])
    t1 = np.arctan2(X0[51:100, 0], X0[51:100, 1])
    np.testing.assert_allclose(np.angle(np.exp(1j * (t1 - t0 - 4.0))), 0, atol=1e-9)
    with pytest.raises(ValueError, match="n_classes"):
        spirals(10, 0)


def test_spirals_not_linearly_separable_but_learnable():
    import xpdnn as xd

    X, y = spirals(100, 3, seed=0)
    A = np.c_[X, np.ones(len(X))]
    W = np.linalg.lstsq(A, np.eye(3)[y], rcond=None)[0]
    assert np.mean(np.argmax(A @ W, axis=1) == y) < 0.7
    net = xd.Sequential(xd.Linear(2, 100), xd.ReLU(), xd.Linear(100, 3))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=1.0, momentum=0.9),
                         batch_size=300, epochs=300, seed=0, progress=False)
    assert trainer.fit(X, y)["accuracy"][-1] > 0.95


def idx_bytes(arr, magic=None):
    """An IDX file written by hand: magic, big-endian uint32 sizes, big-endian data."""
    codes = {np.uint8: 0x08, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
    arr = np.asarray(arr)
    if magic is None:
        magic = (codes[arr.dtype.type] << 8) | arr.ndim
    head = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def mnist_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7).astype(np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    return tmp_path, images, labels


def test_idx_header_is_big_endian_as_in_mnist(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    a = read_idx_images(p)
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, [[[1, 2, 3]], [[4, 5, 6]]])


def test_read_mnist_pair_raw_and_gz(mnist_files):
    d, images, labels = mnist_files
    np.testing.assert_array_equal(read_idx_images(d / "train-images-idx3-ubyte"), images)
    np.testing.assert_array_equal(read_idx_labels(d / "train-labels-idx1-ubyte.gz"), labels)
    X, y = load_mnist(d / "train-images-idx3-ubyte", d / "train-labels-idx1-ubyte.gz")
    assert X.shape == (7, 12) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X, images.reshape(7, 12) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)
    X2, y2 = load_mnist_dir(d, "train", flatten=False, dtype="float64")
    assert X2.shape == (7, 4, 3) and X2.dtype == np.float64
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist_dir(d, "test")


def test_read_idx_other_types(tmp_path):
    for arr in (np.arange(6, dtype=np.int32).reshape(2, 3) - 3, np.linspace(-1, 1, 5).astype(np.float32),
                np.array([[1e300, -2.5]])):
        p = tmp_path / "a.idx"
        p.write_bytes(idx_bytes(arr))
        out = read_idx(p)
        assert out.dtype == arr.dtype.newbyteorder("=") and out.dtype.isnative
        np.testing.assert_array_equal(out, arr)


def test_idx_wrong_magic(tmp_path, mnist_files):
    d, images, labels = mnist_files
    with pytest.raises(ValueError, match="wrong magic number 0x00000801, expected 0x00000803"):
        read_idx_images(d / "train-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="wrong magic number 0x00000803, expected 0x00000801"):
        read_idx_labels(d / "train-images-idx3-ubyte")
    p = tmp_path / "bad"
    p.write_bytes(b"\x12\x34\x08\x03" + idx_bytes(images)[4:])
    with pytest.raises(ValueError, match="bad magic number 0x12340803"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx_images(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="too short"):
        read_idx(p)


def test_idx_truncated(tmp_path, mnist_files):
    d, images, labels = mnist_files
    raw = idx_bytes(images)
    p = tmp_path / "t"
    p.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"truncated data: the header promises shape \(7, 4, 3\) \(84 bytes\)"):
        read_idx_images(p)
    p.write_bytes(raw[:10])
    with pytest.raises(ValueError, match="truncated header"):
        read_idx_images(p)
    p.write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        read_idx_images(p)
    p.write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(ValueError, match="gzip"):
        read_idx_images(p)


def test_mnist_count_mismatch(tmp_path, mnist_files):
    d, images, labels = mnist_files
    (tmp_path / "l").write_bytes(idx_bytes(labels[:5]))
    with pytest.raises(ValueError, match="7 images but .* 5 labels"):
        load_mnist(d / "train-images-idx3-ubyte", tmp_path / "l")


def test_npz(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    p = tmp_path / "d.npz"
    save_npz(p, X, y)
    X2, y2 = load_npz(p)
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    np.savez(p, x_train=X, y_train=y, x_test=X[:1], y_test=y[:1])
    np.testing.assert_array_equal(load_npz(p)[0], X)
    np.testing.assert_array_equal(load_npz(p, "x_test", "y_test")[1], y[:1])
    with pytest.raises(ValueError, match=r"no array named 'feat'.*\['x_train', 'y_train', 'x_test', 'y_test'\]"):
        load_npz(p, x_key="feat")
    np.savez(p, a=X, b=y)
    with pytest.raises(ValueError, match="cannot tell which array is X"):
        load_npz(p)
    np.savez(p, X=X, y=y[:3])
    with pytest.raises(ValueError, match="shape mismatch.*4 samples.*3"):
        load_npz(p)
    np.savez(p, X=np.array([{"a": 1}] * 4, dtype=object), y=y)
    with pytest.raises(ValueError, match="pickl"):
        load_npz(p)
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(p)


def test_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,label\n1,2,0\n3.5,-4,2\n\n5,6e1,1\n")
    X, y = load_csv(p, header=True)
    np.testing.assert_allclose(X, [[1, 2], [3.5, -4], [5, 60]])
    np.testing.assert_array_equal(y, [0, 2, 1])
    assert X.dtype == np.float32 and y.dtype == np.int64
    with pytest.raises(ValueError, match=r"line 1, column 1: 'a' is not a number \(is it a header"):
        load_csv(p)
    X0, y0, classes = load_csv(p, header=True, label_column=0, dtype="float64", return_classes=True)
    assert X0.dtype == np.float64
    np.testing.assert_allclose(X0[:, 1], [0, 2, 1])
    np.testing.assert_array_equal(y0, [0, 1, 2])     # non-integer labels: indices of sorted values
    assert classes == [1.0, 3.5, 5.0]
    Xn, yn = load_csv(p, header=True, label_column=None)
    assert Xn.shape == (3, 3) and yn is None
    p.write_text("5.1;3.5;setosa\n6.2;2.9;versicolor\n4.9;3.0;setosa\n")
    X, y, classes = load_csv(p, delimiter=";", return_classes=True)
    assert classes == ["setosa", "versicolor"]
    np.testing.assert_array_equal(y, [0, 1, 0])
    p.write_text("1,2,0\n3,4\n")
    with pytest.raises(ValueError, match="line 2 has 2 columns, expected 3"):
        load_csv(p)
    p.write_text("1,x,0\n")
    with pytest.raises(ValueError, match="column 2: 'x' is not a number"):
        load_csv(p)
    p.write_text("1,nan,0\n")
    with pytest.raises(ValueError, match="NaN"):
        load_csv(p)
    p.write_text("a,b\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_csv(p, header=True)
    with pytest.raises(FileNotFoundError):
        load_csv(tmp_path / "missing.csv")


def collect(stream):
    Xs, ys = [], []
    for Xb, yb in stream:
        Xs.append(B.to_numpy(Xb))
        ys.append(B.to_numpy(yb))
    return Xs, ys


def test_batch_stream_every_sample_once_and_reproducible(backend):
    N = 103
    X = np.arange(N * 3, dtype=np.float64).reshape(N, 3)
    y = np.arange(N)
    like = backend.asarray(np.zeros(1))
    s = BatchStream(X, y, batch_size=10, shuffle=True, seed=5, to=mover(like))
    assert len(s) == 11
    seen = []
    for Xb, yb in s:
        assert B.namespace(Xb) is backend.xp and B.namespace(yb) is backend.xp
        Xh, yh = B.to_numpy(Xb), B.to_numpy(yb)
        np.testing.assert_array_equal(Xh[:, 0], yh * 3)     # rows stay paired with their labels
        seen.append(yh)
    assert [len(b) for b in seen] == [10] * 10 + [3]
    order0 = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(order0), y)
    np.testing.assert_array_equal(order0, np.random.default_rng([5, 0]).permutation(N))
    assert s.epoch == 1
    order1 = np.concatenate(collect(s)[1])
    np.testing.assert_array_equal(np.sort(order1), y)
    assert not np.array_equal(order0, order1)
    again = BatchStream(X, y, batch_size=10, shuffle=True, seed=5)
    np.testing.assert_array_equal(np.concatenate(collect(again)[1]), order0)
    assert not np.array_equal(np.concatenate(collect(BatchStream(X, y, 10, seed=6))[1]), order0)
    plain = np.concatenate(collect(BatchStream(X, y, 10, shuffle=False))[1])
    np.testing.assert_array_equal(plain, y)
    assert len(BatchStream(X, y, 10, drop_last=True)) == 10
    assert sum(len(b) for b in collect(BatchStream(X, y, 10, drop_last=True))[1]) == 100


def test_batch_stream_memmap(tmp_path, backend):
    N = 57
    images = np.random.default_rng(0).integers(0, 256, (N, 6), dtype=np.uint8)
    np.save(tmp_path / "X.npy", images)
    np.save(tmp_path / "y.npy", np.arange(N))
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    y = np.load(tmp_path / "y.npy", mmap_mode="r")
    assert isinstance(X, np.memmap)
    s = BatchStream(X, y, batch_size=8, seed=1, dtype="float32", to=mover(backend.asarray(np.zeros(1))))
    Xs, ys = collect(s)
    assert all(b.dtype == np.float32 for b in Xs)
    order = np.concatenate(ys)
    np.testing.assert_array_equal(np.sort(order), np.arange(N))
    np.testing.assert_array_equal(np.concatenate(Xs), images[order].astype(np.float32))


def test_batch_stream_prefetches_in_background_and_stops_early():
    X = np.zeros((100, 2))
    moved = []
    ready = threading.Event()

    def to(a):
        moved.append(threading.current_thread().name)
        if len(moved) >= 3:
            ready.set()
        return a

    it = iter(BatchStream(X, None, batch_size=10, to=to, prefetch=1))
    Xb, yb = next(it)
    assert yb is None and Xb.shape == (10, 2)
    # while we hold batch 1, batch 2 waits in the queue and batch 3 is moved, blocked on the full queue
    assert ready.wait(5)
    assert moved and all(n == "xpdnn-batchstream" for n in moved)
    it.close()                # leaving early stops the worker
    assert not any(t.name == "xpdnn-batchstream" and t.is_alive() for t in threading.enumerate())


def test_batch_stream_errors():
    X = np.zeros((10, 2))
    with pytest.raises(ValueError, match="10 samples but y has 9"):
        BatchStream(X, np.zeros(9))
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(X, None, batch_size=0)
    with pytest.raises(TypeError, match="host NumPy"):
        BatchStream([[1.0]], None)

    def broken(a):
        raise RuntimeError("device is full")

    with pytest.raises(RuntimeError, match="device is full"):
        list(BatchStream(X, None, batch_size=3, to=broken))
