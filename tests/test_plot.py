"""``xd.plot_history`` and ``xpdnn train --plot``: the curves drawn are the history's numbers,
files are written whole (or not at all), and a missing matplotlib is one clear error."""

import os
import sys

import pytest

import xpdnn as xd
from xpdnn.cli import main

matplotlib = pytest.importorskip("matplotlib")

HISTORY = {"loss": [1.2, 0.7, 0.5, 0.41], "val_loss": [1.3, 0.9, None, 0.6], "accuracy": [0.5, 0.7, 0.8, 0.85],
           "val_accuracy": [0.45, 0.6, 0.7, 0.75], "lr": [0.1] * 4, "time": [0.1] * 4}


def lines_of(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_the_curves_are_the_history(tmp_path):
    fig = xd.plot_history(HISTORY, tmp_path / "c.png")
    loss_ax, acc_ax = fig.axes
    got = lines_of(loss_ax)
    assert got["training"] == ([1, 2, 3, 4], HISTORY["loss"])
    assert got["validation"] == ([1, 2, 4], [1.3, 0.9, 0.6])          # an epoch without a value is left out
    assert lines_of(acc_ax)["validation"] == ([1, 2, 3, 4], HISTORY["val_accuracy"])
    assert loss_ax.get_ylabel() == "loss" and acc_ax.get_ylabel() == "accuracy"
    blob = (tmp_path / "c.png").read_bytes()
    assert blob.startswith(b"\x89PNG\r\n\x1a\n")
    image = matplotlib.image.imread(str(tmp_path / "c.png"))
    assert image.shape[1] > image.shape[0] > 100                      # two panels side by side
    assert os.listdir(tmp_path) == ["c.png"]                          # no temporary file left


def test_regression_history_has_one_panel_and_other_formats(tmp_path):
    fig = xd.plot_history({"loss": [3.0, 2.0], "val_loss": [3.5, 2.5]}, tmp_path / "c.svg", title="run 1")
    assert len(fig.axes) == 1 and fig._suptitle.get_text() == "run 1"
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:400]
    xd.plot_history({"loss": [3.0, 2.0]}, tmp_path / "c.pdf")
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")


def test_a_trainer_or_its_history(tmp_path):
    X, y = xd.datasets.spirals(20, seed=0)
    net = xd.Sequential(xd.Linear(2, 8), xd.Tanh(), xd.Linear(8, 3))
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), epochs=3, progress=False)
    history = trainer.fit(X, y)
    fig = xd.plot_history(trainer)
    assert lines_of(fig.axes[0])["training"][1] == history["loss"]
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_bad_input_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"cannot tell the image format of .*c\.xyz.*\.png"):
        xd.plot_history(HISTORY, tmp_path / "c.xyz")
    with pytest.raises(ValueError, match="no loss values to plot"):
        xd.plot_history({"accuracy": [0.5]}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no loss values"):
        xd.plot_history({}, tmp_path / "c.png")
    with pytest.raises(TypeError, match="history must be the dict"):
        xd.plot_history([1, 2], tmp_path / "c.png")
    assert os.listdir(tmp_path) == []


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(Figure, "savefig", broken)
    (tmp_path / "c.png").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        xd.plot_history(HISTORY, tmp_path / "c.png")
    assert os.listdir(tmp_path) == ["c.png"] and (tmp_path / "c.png").read_bytes() == b"old"


def test_without_matplotlib_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)         # import matplotlib raises ImportError
    with pytest.raises(ImportError, match=r"plotting needs matplotlib: pip install 'xpdnn\[plot\]'"):
        xd.plot_history(HISTORY, tmp_path / "c.png")
    try:
        rc = main(["train", "--quiet", "--epochs", "1", "--hidden", "4", "--plot", str(tmp_path / "c.png")])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 1 and os.listdir(tmp_path) == []


def test_cli_plot(tmp_path, capsys):
    path = tmp_path / "curves.png"
    assert main(["train", "--quiet", "--backend", "numpy", "--epochs", "3", "--hidden", "8", "--plot", str(path)]) == 0
    out, err = capsys.readouterr()
    assert f"learning curves written to {path}" in out
    assert path.read_bytes().startswith(b"\x89PNG")
    try:
        rc = main(["train", "--quiet", "--epochs", "1", "--hidden", "4", "--plot", str(tmp_path / "c.txt")])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 1 and err.startswith("xpdnn: error: cannot tell the image format") and err.count("\n") == 1
    assert "trained" not in out                                   # refused before training
