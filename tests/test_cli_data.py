"""``xpdnn train --data``, ``xpdnn predict``, ``xpdnn info MODEL`` and the readers behind them
(:func:`xpdnn.datasets.files.load_dataset`, ``load_features``): CSV (header or not, gzip, target by
name or index), ``.npz`` and MNIST folders, task inference, and one-line errors with nothing
written half-way."""

import csv
import gzip
import io
import os
import struct
import warnings

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import cli
from xpdnn.cli import main
from xpdnn.datasets.files import (DataFileError, MAX_INFERRED_CLASSES, load_dataset, load_features,
                                  looks_like_header, targets_from_array, targets_from_cells)

QUICK = ["--quiet", "--epochs", "2", "--hidden", "8", "--backend", "numpy"]


def run_cli(capsys, *args):
    """(exit status, stdout, stderr) of ``xpdnn`` run in-process."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, prefix="xpdnn: error: "):
    assert rc not in (0, None), err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(prefix) or lines[-1].startswith("xpdnn ") and ": error: " in lines[-1], err
    if prefix == "xpdnn: error: ":
        assert len(lines) == 1, err
    return lines[-1]


def blobs(n=150, seed=0):
    """Three well separated classes in 4 features."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = np.array([[4.0, 0, 0, 1], [0, 4.0, 0, -1], [0, 0, 4.0, 0]])
    return (centers[y] + rng.normal(size=(n, 4))).astype(np.float32), y


def write_csv(path, X, labels, header=None, label_first=False):
    rows = [[*map(repr, map(float, x)), str(t)] if not label_first else [str(t), *map(repr, map(float, x))]
            for x, t in zip(X, labels)]
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    data = text.getvalue().encode()
    path.write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
    return path


def read_predictions(path_or_text):
    text = path_or_text.read_text() if hasattr(path_or_text, "read_text") else path_or_text
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


# -- the readers -------------------------------------------------------------------------------------

def test_header_detection():
    assert looks_like_header(["a", "b", "label"], ["1", "2", "cat"])
    assert not looks_like_header(["1", "2", "cat"], ["3", "4", "dog"])       # names in the label column only
    assert not looks_like_header(["1", "2", "3"], ["4", "5", "6"])
    assert looks_like_header(["x", "y"], None)
    assert not looks_like_header(["1", "y"], None)


def test_targets_task_inference():
    lines = list(range(1, 7))
    y, task, classes, _ = targets_from_cells(["b", "a", "b", "c", "a", "a"], lines, "t")
    assert task == "classify" and classes == ["a", "b", "c"] and y.tolist() == [1, 0, 1, 2, 0, 0]
    y, task, classes, _ = targets_from_cells(["7", "3", "9.0", "3", "7", "9"], lines, "t")
    assert task == "classify" and classes == [3, 7, 9] and y.tolist() == [1, 0, 2, 0, 1, 2]
    y, task, classes, _ = targets_from_cells(["0.5", "1", "2", "3", "4", "5"], lines, "t")
    assert task == "regress" and classes is None and y.dtype == np.float32
    np.testing.assert_array_equal(y, [0.5, 1, 2, 3, 4, 5])
    many = [str(i) for i in range(MAX_INFERRED_CLASSES + 1)]
    with pytest.raises(DataFileError, match="classes or numbers to predict"):
        targets_from_cells(many, range(len(many)), "t")
    assert targets_from_cells(many, range(len(many)), "t", "regress")[1] == "regress"
    assert targets_from_cells(many[:-1], range(len(many) - 1), "t")[1] == "classify"     # the boundary
    assert targets_from_cells(["0.5", "1.5"], [1, 2], "t", "classify")[2] == [0.5, 1.5]
    with pytest.raises(DataFileError, match=r"line 2: target 'dog' is not a number; regression"):
        targets_from_cells(["1.5", "dog"], [1, 2], "t", "regress")
    with pytest.raises(DataFileError, match=r"line 2: target '' is missing"):
        targets_from_cells(["1", ""], [1, 2], "t")
    with pytest.raises(DataFileError, match=r"line 1: target 'nan' is NaN"):
        targets_from_cells(["nan", "1"], [1, 2], "t")


def test_targets_from_arrays():
    y, task, classes, _ = targets_from_array(np.eye(3)[[0, 2, 1, 2]], "a")
    assert task == "classify" and y.tolist() == [0, 2, 1, 2] and classes == [0, 1, 2]
    y, task, _, _ = targets_from_array(np.random.default_rng(0).normal(size=(5, 2)), "a")
    assert task == "regress" and y.shape == (5, 2) and y.dtype == np.float32
    y, task, classes, _ = targets_from_array(np.array(["x", "y", "x"]), "a")
    assert task == "classify" and classes == ["x", "y"] and y.tolist() == [0, 1, 0]
    with pytest.raises(DataFileError, match="index 1 is NaN"):
        targets_from_array(np.array([0.0, np.nan]), "a")


def test_load_dataset_csv_header_gzip_and_target(tmp_path):
    X, y = blobs(30)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    p = write_csv(tmp_path / "d.csv.gz", X, names, header=["f0", "f1", "f2", "f3", "species"])
    ds = load_dataset(p)
    assert ds.kind == "csv" and ds.task == "classify" and ds.target == "species"
    assert ds.feature_names == ["f0", "f1", "f2", "f3"] and ds.classes == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    with pytest.raises(DataFileError, match=r"column 5 \('species'\): 'setosa' is not a number"):
        load_dataset(p, target="f1")                               # then species is a feature
    r = write_csv(tmp_path / "r.csv", X, y, header=["f0", "f1", "f2", "f3", "k"])
    by_name = load_dataset(r, target="f1", task="regress")          # another column as the target
    np.testing.assert_array_equal(by_name.y, X[:, 1])
    assert by_name.feature_names == ["f0", "f2", "f3", "k"] and by_name.task == "regress"
    q = write_csv(tmp_path / "n.csv", X, y + 5, label_first=True)     # no header, target first, labels 5..7
    ds = load_dataset(q, target=0)
    assert ds.feature_names is None and ds.target == 0 and ds.classes == [5, 6, 7]
    np.testing.assert_array_equal(ds.y, y)
    np.testing.assert_array_equal(load_dataset(q, target="-5").X, ds.X)    # an index given as text


def test_load_dataset_npz_and_mnist(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 3, 2), dtype=np.uint8)
    p = tmp_path / "a.npz"
    np.savez(p, pixels=images, kind=np.arange(12) % 2)
    ds = load_dataset(p, x_key="pixels", y_key="kind")
    assert ds.X.shape == (12, 6) and ds.task == "classify" and ds.classes == [0, 1]
    np.testing.assert_allclose(ds.X, images.reshape(12, 6) / 255.0, rtol=1e-6)
    with pytest.raises(DataFileError, match="no array named 'nope' for X; the archive holds"):
        load_dataset(p, x_key="nope", y_key="kind")
    mnist = write_mnist(tmp_path / "m", n_train=20, n_test=8)
    ds = load_dataset(mnist)
    assert ds.kind == "mnist" and ds.X.shape == (20, 16) and ds.X_test.shape == (8, 16)
    assert ds.classes == sorted(set(ds.classes)) and ds.y_test.max() < len(ds.classes)
    with pytest.raises(DataFileError, match="target does not apply"):
        load_dataset(mnist, target="x")


def write_mnist(folder, n_train, n_test, side=4, seed=0):
    """A tiny MNIST folder: images whose class is which quarter of the image is bright."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 4).astype(np.uint8)
        images = rng.integers(0, 40, (n, side, side)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, q = divmod(int(c), 2)
            images[i, r * 2:r * 2 + 2, q * 2:q * 2 + 2] = 250
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">IIII", 0x803, n, side, side) + images.tobytes()))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return folder


def test_load_csv_takes_a_column_name_and_guesses_the_header(tmp_path):
    from xpdnn.datasets.files import load_csv

    p = tmp_path / "d.csv"
    p.write_text("kind,a,b\ncat,1,2\ndog,3,4\ncat,5,6\n")
    X, y, classes = load_csv(p, header=True, label_column="kind", return_classes=True)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 6]])
    assert y.tolist() == [0, 1, 0] and classes == ["cat", "dog"]
    X2, y2 = load_csv(p, header=None, label_column="kind")        # the header found from the first two rows
    np.testing.assert_array_equal(X2, X)
    (tmp_path / "h.csv").write_text("a,b,c\n1,2\n")
    with pytest.raises(DataFileError, match=r"the header \(line 1\) has 3 columns but line 2 has 2"):
        load_csv(tmp_path / "h.csv", header=True)


def test_load_features_selects_the_trained_columns(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("b,target,a\n2,x,1\n4,y,3\n")
    np.testing.assert_array_equal(load_features(p, 2, feature_names=["a", "b"]), [[1, 2], [3, 4]])
    with pytest.raises(DataFileError, match=r"no column 'c'.*trained on the columns 'a', 'c'"):
        load_features(p, 2, feature_names=["a", "c"])
    q = tmp_path / "q.csv"
    q.write_text("1,0,2\n3,1,4\n")
    np.testing.assert_array_equal(load_features(q, 2, target=1), [[1, 2], [3, 4]])    # the target column dropped
    np.testing.assert_array_equal(load_features(q, 3), [[1, 0, 2], [3, 1, 4]])
    with pytest.raises(DataFileError, match="rows have 3 columns but the model expects 5 features"):
        load_features(q, 5)
    with pytest.raises(DataFileError, match="is a CSV table: x_key does not apply"):
        load_features(q, 3, x_key="X")


# -- xpdnn train --data ------------------------------------------------------------------------------

def test_train_and_predict_on_a_csv_with_class_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    X, y = blobs(150)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    write_csv(tmp_path / "iris.csv", X, names, header=["a", "b", "c", "d", "species"])
    rc, out, err = run_cli(capsys, "train", "--data", "iris.csv", "--target", "species", *QUICK, "--epochs", "15",
                           "--save", "m.xpd")
    assert rc == 0, err
    assert "dataset: iris.csv (CSV, target column 'species'), 114 train / 36 test samples, 4 features, 3 classes" in out
    assert "task: classify (3 class names)" in out
    assert "preprocessing: Standardizer" in out                   # the default for --data
    acc = float(out.split("test accuracy:")[1].split()[0])
    assert acc > 0.9, out
    net = xd.load("m.xpd")
    # predictions as CSV: labels by name, probabilities with --proba; columns found by name, whatever the order
    (tmp_path / "new.csv").write_text("d,c,b,a\n" + "".join(f"{r[3]},{r[2]},{r[1]},{r[0]}\n" for r in X[:20].tolist()))
    rc, out, err = run_cli(capsys, "predict", "m.xpd", "new.csv", "--proba", "-o", "pred.csv")
    assert rc == 0, err
    header, rows = read_predictions(tmp_path / "pred.csv")
    assert header == ["label", "proba_setosa", "proba_versicolor", "proba_virginica"]
    expected = np.array(["setosa", "versicolor", "virginica"])[net.predict(X[:20])]
    assert [r[0] for r in rows] == expected.tolist()
    np.testing.assert_allclose(np.array([r[1:] for r in rows], dtype=np.float64), net.predict_proba(X[:20]),
                               rtol=1e-6, atol=1e-7)
    rc, out, err = run_cli(capsys, "predict", "m.xpd", "iris.csv")        # stdout; the target column is ignored
    assert rc == 0, err
    header, rows = read_predictions(out)
    assert header == ["label"] and len(rows) == 150
    assert np.mean(np.array([r[0] for r in rows]) == names) > 0.9


def test_train_on_headerless_gzip_csv_with_integer_labels(tmp_path, capsys):
    X, y = blobs(90, seed=2)
    p = write_csv(tmp_path / "d.csv.gz", X, y * 10 + 3, label_first=True)     # labels 3, 13, 23 in column 0
    model = tmp_path / "m.xpd"
    rc, out, err = run_cli(capsys, "train", "--data", p, "--target", "0", *QUICK, "--epochs", "10", "--save", model)
    assert rc == 0, err
    assert "target column 0 (0-based)" in out and "3 classes" in out
    assert "task: classify (inferred: 3 different integer targets)" in out
    rc, out, err = run_cli(capsys, "predict", model, p)                     # same layout: the target column dropped
    assert rc == 0, err
    header, rows = read_predictions(out)
    got = np.array([int(r[0]) for r in rows])
    assert set(got) <= {3, 13, 23}
    assert np.mean(got == y * 10 + 3) > 0.9


def test_train_regression_predicts_in_the_targets_units(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    t = 1000.0 + 250.0 * X[:, 0] - 120.0 * X[:, 1] + 0.5 * rng.normal(size=400)     # far from unit scale
    p = write_csv(tmp_path / "r.csv", X, [repr(float(v)) for v in t], header=["x0", "x1", "x2", "price"])
    model = tmp_path / "r.xpd"
    rc, out, err = run_cli(capsys, "train", "--data", p, "--quiet", "--backend", "numpy", "--hidden", "16",
                           "--epochs", "40", "--save", model)
    assert rc == 0, err
    assert "task: regress (inferred: the targets are not all integers)" in out and "1 target to regress" in out
    r2 = float(out.split("R^2:")[1].split()[0])
    assert r2 > 0.95, out
    from sklearn.metrics import r2_score
    _, X_te, _, t_te = xd.datasets.train_test_split(X, t, test_size=0.25, seed=0, stratify=False)
    assert abs(r2 - r2_score(t_te, np.asarray(xd.load(model).predict(X_te))[:, 0])) < 1e-4    # the printed R^2
    rc, out, err = run_cli(capsys, "predict", model, p)
    header, rows = read_predictions(out)
    assert header == ["prediction"]
    pred = np.array([float(r[0]) for r in rows])
    assert np.sqrt(np.mean((pred - t) ** 2)) < 0.1 * np.std(t)          # original units, not standardized
    rc, out, err = run_cli(capsys, "predict", model, p, "--proba")
    assert "--proba" in one_line_error(rc, err) and "no class probabilities" in err


def test_target_scaling_folds_exactly_into_the_last_layer():
    net = cli.build_mlp(3, (5,), 2, seed=1)
    net.initialize(1)
    X = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    before = np.asarray(net(X), dtype=np.float64)
    mean, scale = np.array([10.0, -3.0]), np.array([2.5, 0.5])
    cli._fold_target_scaling(net, mean, scale)
    np.testing.assert_allclose(np.asarray(net(X)), before * scale + mean, rtol=1e-5, atol=1e-5)


def test_preprocessing_is_fitted_on_the_training_split_only(tmp_path, capsys):
    X, y = blobs(120, seed=4)
    X[:, 0] += np.arange(120) / 10.0                   # a drifting column: the split's mean differs from all rows'
    p = write_csv(tmp_path / "d.csv", X, y, header=["a", "b", "c", "d", "y"])
    model = tmp_path / "m.xpd"
    rc, out, err = run_cli(capsys, "train", "--data", p, *QUICK, "--seed", "5", "--save", model)
    assert rc == 0, err
    mean = xd.load(model).preprocessing.get_state()[1]["mean"]
    X_tr, X_te, _, _ = xd.datasets.train_test_split(X, y, test_size=0.25, seed=5)
    np.testing.assert_allclose(mean, X_tr.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert not np.allclose(mean, X.astype(np.float64).mean(axis=0), rtol=1e-4)    # the test can tell


def test_train_on_npz_and_mnist(tmp_path, capsys):
    X, y = blobs(60, seed=6)
    p = tmp_path / "d.npz"
    np.savez(p, feats=X, cls=np.array(["p", "q", "r"])[y])
    rc, out, err = run_cli(capsys, "train", "--data", p, "--x-key", "feats", "--y-key", "cls", *QUICK)
    assert rc == 0, err
    assert "(.npz)" in out and "3 classes" in out
    folder = write_mnist(tmp_path / "mnist", n_train=64, n_test=16)
    model = tmp_path / "mn.xpd"
    rc, out, err = run_cli(capsys, "train", "--data", folder, *QUICK, "--epochs", "20", "--save", model)
    assert rc == 0, err
    assert "64 train / 16 test samples, 16 features, 4 classes (the folder's t10k files as the test set)" in out
    rc, out, err = run_cli(capsys, "predict", model, folder)                # the t10k images
    header, rows = read_predictions(out)
    assert len(rows) == 16 and {r[0] for r in rows} <= {"0", "1", "2", "3"}
    rc, out, err = run_cli(capsys, "predict", model, folder / "train-images-idx3-ubyte.gz")
    assert rc == 0 and len(read_predictions(out)[1]) == 64


def test_the_main_job_still_trains_on_the_digits(capsys):
    rc, out, err = run_cli(capsys, "train", *QUICK)
    assert rc == 0, err
    assert "dataset: digits, 1347 train / 450 test samples, 64 features, 10 classes" in out
    assert "task:" not in out and "preprocessing:" not in out       # digits: no preprocessing by default


# -- bad input: one line, nothing written ---------------------------------------------------------------

@pytest.mark.parametrize("content, flags, message", [
    ("a,b,y\n1,2,0\n3,4\n", [], "line 3 has 2 columns, expected 3 (as in line 2)"),
    ("a,b,y\n1,tall,0\n3,4,1\n", [], "line 2, column 2 ('b'): 'tall' is not a number"),
    ("a,b,y\n1,2,0\n3,4,1\n", ["--target", "price"], "no column named 'price'; the columns are 'a', 'b', 'y'"),
    ("1,2,0\n3,4,1\n", ["--target", "price"], "'price' is a column name but the file has no header row"),
    ("1,2,0\n3,4,1\n", ["--target", "7"], "target=7 but rows have 3 columns"),
    ("a,b,y\n1,2,cat\n3,4,dog\n", ["--task", "regress"], "target 'cat' is not a number; regression"),
    ("a,b,y\n1,2,0\n3,4,0\n", [], "every target is 0: one class"),
    ("a,b,y\n1,2,0\n3,4,1\n", ["--x-key", "X"], "x_key does not apply"),
])
def test_bad_data_is_a_one_line_error_and_nothing_is_saved(tmp_path, capsys, content, flags, message):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    model = tmp_path / "m.xpd"
    rc, out, err = run_cli(capsys, "train", "--data", p, *QUICK, *flags, "--save", model, "--plot", tmp_path / "c.png")
    line = one_line_error(rc, err)
    assert message in line
    assert "Linear" not in out                         # nothing was built
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]     # no model, no plot, no temporary file


def test_other_inputs_with_words_where_numbers_belong(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    X, y = blobs(20)
    df = pd.DataFrame(X, columns=list("abcd")).assign(colour=["red", "blue"] * 10)
    trainer = xd.Trainer(xd.Sequential(xd.Linear(5, 3)), loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1),
                         progress=False)
    with pytest.raises(ValueError) as info:
        trainer.fit(df, y)
    assert "column 'colour' holds a value that is not a number ('red')" in str(info.value)
    assert "\n" not in str(info.value)
    np.save(tmp_path / "x.npy", X)
    rc, out, err = run_cli(capsys, "train", "--data", tmp_path / "x.npy", *QUICK)
    assert "a single .npy array, not an .npz archive" in one_line_error(rc, err)
    (tmp_path / "empty").mkdir()
    rc, out, err = run_cli(capsys, "train", "--data", tmp_path / "empty", *QUICK)
    assert "no train images file" in one_line_error(rc, err)


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "missing.csv"], "argument --data: 'missing.csv' does not exist"),
    (["train", "--target", "y"], "argument --target: needs --data PATH"),
    (["train", "--task", "guess"], "unknown task 'guess'; choose from classify, regress"),
    (["predict", "missing.xpd", "d.csv"], "argument MODEL: 'missing.xpd' does not exist"),
    (["info", "missing.xpd"], "argument MODEL: 'missing.xpd' does not exist"),
    (["export", "missing.xpd", "m.onnx"], "argument MODEL: 'missing.xpd' does not exist"),
])
def test_missing_files_and_misplaced_flags_are_argparse_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("1,2\n")
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2 and out == ""
    assert message in one_line_error(rc, err, prefix=f"xpdnn {args[0]}: error: ")


def test_predict_refuses_data_that_does_not_fit(tmp_path, capsys):
    X, y = blobs(60)
    p = write_csv(tmp_path / "d.csv", X, y, header=["a", "b", "c", "d", "y"])
    model = tmp_path / "m.xpd"
    assert run_cli(capsys, "train", "--data", p, *QUICK, "--save", model)[0] == 0
    out_path = tmp_path / "pred.csv"
    (tmp_path / "wrong.csv").write_text("a,b,x,y\n1,2,3,0\n")
    rc, out, err = run_cli(capsys, "predict", model, tmp_path / "wrong.csv", "-o", out_path)
    assert "no column 'c' (nor 1 other(s)); the model was trained on the columns 'a', 'b', 'c', 'd'" in \
        one_line_error(rc, err)
    (tmp_path / "ragged.csv").write_text("a,b,c,d\n1,2,3,4\n1,2,3\n")
    rc, out, err = run_cli(capsys, "predict", model, tmp_path / "ragged.csv", "-o", out_path)
    assert "line 3 has 3 columns" in one_line_error(rc, err)
    (tmp_path / "text.csv").write_text("a,b,c,d\n1,2,3,four\n")
    rc, out, err = run_cli(capsys, "predict", model, tmp_path / "text.csv", "-o", out_path)
    assert "line 2, column 4 ('d'): 'four' is not a number" in one_line_error(rc, err)
    assert not out_path.exists() and [f for f in os.listdir(tmp_path) if f.startswith(".")] == []
    xd.save(xd.preprocessing.Standardizer().fit(X), tmp_path / "t.xpd")
    rc, out, err = run_cli(capsys, "predict", tmp_path / "t.xpd", p)
    assert "holds a fitted Standardizer alone, not a network" in one_line_error(rc, err)


# -- xpdnn info MODEL --------------------------------------------------------------------------------

def test_info_describes_a_saved_model(tmp_path, capsys):
    X, y = blobs(60)
    p = write_csv(tmp_path / "d.csv", X, np.array(["u", "v", "w"])[y], header=["a", "b", "c", "d", "kind"])
    model = tmp_path / "m.xpd"
    assert run_cli(capsys, "train", "--data", p, *QUICK, "--epochs", "3", "--hidden", "8,6", "--save", model)[0] == 0
    rc, out, err = run_cli(capsys, "info", model)
    assert rc == 0, err
    net = xd.load(model)
    assert f"{net.n_params():,} parameters (float32); 4 input features -> 3 outputs" in out
    assert "Linear(n_in=4, n_out=8" in out and "Linear(n_in=8, n_out=6" in out and "Dropout(rate=0.1)" in out
    assert "preprocessing: Standardizer" in out and "head: softmax" in out
    assert "target column 'kind'; 3 classes: u, v, w; feature columns: a, b, c, d" in out
    assert "training history: 3 epochs; last: loss" in out and "val_accuracy" in out
    assert "optimizer: SGD(lr=0.05" in out
    rc, out, err = run_cli(capsys, "info")                       # without a model: the backends, as before
    assert rc == 0 and "numpy" in out and "--backend auto picks" in out
    plain = tmp_path / "plain.xpd"
    xd.save(net, plain)                                          # no trainer: no history in the file
    rc, out, err = run_cli(capsys, "info", plain)
    assert rc == 0 and "training history: not stored" in out and "trained on" not in out
    xd.save(xd.preprocessing.PCA(2).fit(X), tmp_path / "pca.xpd")
    rc, out, err = run_cli(capsys, "info", tmp_path / "pca.xpd")
    assert rc == 0 and "a fitted PCA(n_components=2" in out and "no network" in out
    (tmp_path / "junk.xpd").write_bytes(b"not a model")
    rc, out, err = run_cli(capsys, "info", tmp_path / "junk.xpd")
    assert "junk.xpd" in one_line_error(rc, err)


def test_a_tampered_dataset_description_is_refused(tmp_path, capsys):
    net = cli.build_mlp(4, (4,), 3)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), epochs=1, progress=False,
                         callbacks=[cli.DatasetInfo({"task": "classify", "classes": ["a", "b", "c"]})])
    X, y = blobs(30)
    trainer.fit(X, y)
    trainer.callbacks[0].info["classes"] = [True, {"x": 1}]        # not what predict can write
    with pytest.raises(xd.ModelFileError, match="classes must be a non-empty list"):
        trainer.save(tmp_path / "m.xpd")
    assert not (tmp_path / "m.xpd").exists()
    with pytest.raises(ValueError, match="unknown dataset fields"):
        cli.DatasetInfo({"colour": "red"})


# -- warnings as report lines ------------------------------------------------------------------------

def test_diagnostics_print_as_single_lines(capsys):
    rc, out, err = run_cli(capsys, "train", "--quiet", "--backend", "numpy", "--epochs", "2", "--hidden", "32,32",
                           "--lr", "0.9", "--diagnostics")
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("xpdnn: diagnostics: ") for line in lines), err
    assert any("ReLU units in layers." in line and "are dead" in line for line in lines)
    assert ".py:" not in err and "on_epoch_end" not in err      # no file:line, no echoed source line


def test_the_cli_changes_warnings_only_while_it_runs(capsys):
    before = warnings.showwarning
    with cli._warnings_as_lines():
        warnings.warn("first line\n   second part", RuntimeWarning)
    assert warnings.showwarning is before
    assert capsys.readouterr().err == "xpdnn: warning: first line second part\n"
    assert main(["info"]) == 0 and warnings.showwarning is before


def test_library_diagnostics_name_the_callers_line():
    """For library users a DiagnosticsWarning stays a warning, attributed to the line that called
    fit (not to the trainer's loop inside xpdnn)."""
    from xpdnn.diagnostics import DeadReLUMonitor, DiagnosticsWarning

    X, y = blobs(32)
    net = xd.Sequential(xd.Linear(4, 8, bias=-100.0), xd.ReLU(), xd.Linear(8, 3))     # every ReLU unit dead
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.01), epochs=1, progress=False,
                         callbacks=[DeadReLUMonitor(X)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(X, y)
    found = [w for w in caught if issubclass(w.category, DiagnosticsWarning)]
    assert found and "100% of the ReLU units in layers.1 are dead" in str(found[0].message)
    assert found[0].filename == __file__
