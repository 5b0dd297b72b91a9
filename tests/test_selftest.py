"""``xpdnn selftest`` (xpdnn/selftest.py) on the CPU: the kernel section runs against fake CUDA
kernels on NumPy arrays (a correct one passes every variant, a wrong one fails only its own
variants and the exit status), the history comparison catches real differences, the CLI
writes its JSON report and returns 1 when anything disagrees."""

import json
import types

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn import cli, selftest
from xpdnn.devices import cuda_available
from xpdnn.kernels import check
from xpdnn.kernels import softmax_xent as real_xent
from xpdnn.layers.dropout import dropout_mask
from xpdnn.losses.cross_entropy import SoftmaxCrossEntropy


@pytest.fixture(autouse=True)
def fresh():
    check.reset()
    yield
    check.reset()


def _fake_cuda(monkeypatch, xent_bad=lambda Z: False, dropout_bad=lambda X: False):
    """Point the self-test at fake kernels on NumPy arrays; ``*_bad(array)`` decides, per call,
    whether the fake returns a slightly wrong result."""
    def softmax_xent(Z, y, *, weight=None, weight_sum=None, ignore_index=None, label_smoothing=0.0,
                     reduction="mean", inplace=False, check=True):
        half = Z.dtype == np.float16                   # accumulate in float32, as the kernel does
        loss, G = SoftmaxCrossEntropy(weight=None if weight is None else B.to_numpy(weight), ignore_index=ignore_index,
                                      label_smoothing=label_smoothing, reduction=reduction,
                                      fused=False)(Z.astype(np.float32) if half else Z, y)
        G = G.astype(np.float16) if half else G
        return (loss * (1 + 1e-3), G) if xent_bad(Z) else (loss, G)

    def dropout(X, rate, seed, counter, offset=0):
        Y = X * dropout_mask(X, rate, seed, counter, offset)
        return Y * np.asarray(1.0000001, dtype=Y.dtype) if dropout_bad(X) else Y

    xent = types.SimpleNamespace(SUFFIX=real_xent.SUFFIX, WARP_VPT=real_xent.WARP_VPT, MAX_WARP_C=real_xent.MAX_WARP_C,
                                 launch_config=real_xent.launch_config, softmax_xent=softmax_xent)
    monkeypatch.setattr(selftest, "_cuda_kernels",
                        lambda: (xent, types.SimpleNamespace(dropout=dropout), lambda dtype: np.zeros(16, dtype=dtype)))


DTYPES = ("float32", "float64")


def test_correct_kernels_pass_every_variant(monkeypatch):
    _fake_cuda(monkeypatch)
    rows = selftest.kernel_checks(DTYPES)
    assert len(rows) == len(check.all_variants(real_xent, DTYPES)) == 2 * (2 * 7 + 2)
    assert {r["status"] for r in rows} == {"pass"}, [r for r in rows if r["status"] != "pass"]
    assert {r["variant"] for r in rows} >= {"xent_warp32_f32/vec16", "xent_block_f64/scalar", "vec16", "element"}


def test_a_wrong_variant_fails_alone(monkeypatch):
    _fake_cuda(monkeypatch, xent_bad=lambda Z: Z.shape[1] > real_xent.MAX_WARP_C,
               dropout_bad=lambda X: check.dropout_variant(X) == "element")
    rows = selftest.kernel_checks(DTYPES)
    failed = {(r["kernel"], r["dtype"], r["variant"]) for r in rows if r["status"] == "fail"}
    assert failed == {("softmax_xent", d, f"xent_block_{s}/{v}") for d, s in (("float32", "f32"), ("float64", "f64"))
                      for v in ("vec16", "scalar")} | {("dropout", d, "element") for d in DTYPES}
    assert all("times the tolerance" in r["detail"] or "differ bitwise" in r["detail"]
               for r in rows if r["status"] == "fail")


def test_without_cuda_the_kernels_are_skipped_with_a_reason(monkeypatch):
    monkeypatch.setattr(selftest, "_cuda_kernels", lambda: (None, None, "CuPy sees no CUDA device (test)"))
    rows = selftest.kernel_checks()
    assert rows and {r["status"] for r in rows} == {"skip"}
    assert all(r["reason"] == "CuPy sees no CUDA device (test)" for r in rows)
    assert {r["status"] for r in selftest.bandwidth()} == {"skip"}


def test_history_comparison():
    ref = {"loss": [1.0, 0.5], "val_loss": [0.9, 0.6], "accuracy": [0.5, 0.8], "val_accuracy": [0.5, 0.9]}
    assert selftest.compare_histories(ref, ref) == ""
    near = {**ref, "loss": [1.0, 0.5 * (1 + 5e-5)], "val_accuracy": [0.5, 0.9 + 1 / 360]}
    assert selftest.compare_histories(near, ref) == ""
    assert "loss differs" in selftest.compare_histories({**ref, "loss": [1.0, 0.5 * (1 + 3e-4)]}, ref)
    assert "val_accuracy" in selftest.compare_histories({**ref, "val_accuracy": [0.5, 0.91]}, ref)
    assert "val_loss" in selftest.compare_histories({**ref, "val_loss": [0.9, float("nan")]}, ref)


@pytest.mark.skipif(cuda_available()[0], reason="the CPU-only report")
def test_training_runs_match_numpy_on_this_machine():
    pytest.importorskip("torch")
    rows = selftest.training_runs(("numpy", "torch", "cupy"), epochs=1)
    by = {r["backend"]: r for r in rows}
    assert by["numpy"]["status"] == "pass" and by["torch-cpu"]["status"] == "pass", rows
    assert by["cupy"]["status"] == "skip"
    assert by["torch-cpu"]["final_loss"] == pytest.approx(by["numpy"]["final_loss"], rel=1e-4)


def _fast_history(monkeypatch, off_for=None):
    def history(put, epochs=3):
        a = put(np.zeros(1))
        bad = off_for is not None and off_for(a)
        return {"loss": [1.0, 0.5 + (0.01 if bad else 0.0)], "val_loss": [0.9, 0.6],
                "accuracy": [0.5, 0.8], "val_accuracy": [0.5, 0.9]}
    monkeypatch.setattr(selftest, "digits_history", history)


def test_cli_writes_the_report_and_passes(monkeypatch, tmp_path, capsys):
    _fake_cuda(monkeypatch)
    _fast_history(monkeypatch)
    monkeypatch.setattr(selftest, "bandwidth", lambda: [{"kernel": "dropout", "status": "ok", "GB/s": 1.0,
                                                         "shape": "n=8", "device": "fake"}])
    path = tmp_path / "report.json"
    rc = cli.main(["selftest", "--json", str(path), "--backends", "numpy,torch"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "selftest: PASS" in out and "variants agree with the portable path" in out
    report = json.loads(path.read_text())
    assert report["ok"] is True
    assert {"backends", "kernels", "training", "bandwidth", "first_use_checks"} <= set(report)
    assert len(report["kernels"]) == len(check.all_variants(real_xent))


def test_cli_fails_when_a_kernel_or_a_backend_disagrees(monkeypatch, tmp_path, capsys):
    _fake_cuda(monkeypatch, xent_bad=lambda Z: Z.shape[1] == 31)           # warp1 scalar, f32 and f64
    _fast_history(monkeypatch)
    rc = cli.main(["selftest", "--backends", "numpy", "--no-bandwidth"])
    out = capsys.readouterr().out
    assert rc == 1 and "selftest: FAIL" in out
    assert "FAIL softmax_xent [xent_warp1_f32/scalar, float32]" in out
    pytest.importorskip("torch")
    _fake_cuda(monkeypatch)
    _fast_history(monkeypatch, off_for=B.is_torch)
    rc = cli.main(["selftest", "--backends", "numpy,torch", "--no-bandwidth", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 1 and "digits torch-cpu: FAIL loss differs" in out
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


def test_cli_rejects_an_unknown_backend(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["selftest", "--backends", "numpy,tensorflow"])
    assert exc.value.code == 2
    assert "choose from" in capsys.readouterr().err


def test_info_reports_the_check(capsys, monkeypatch):
    monkeypatch.delenv(check.ENV, raising=False)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "fused-kernel first-use check: on" in out
    monkeypatch.setenv(check.ENV, "0")
    assert cli.main(["info"]) == 0
    assert "fused-kernel first-use check: off" in capsys.readouterr().out
