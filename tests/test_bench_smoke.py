"""Smoke tests of the benchmark harness (xpdnn.bench) on miniature workloads: structure of the
report, consistency of the numbers it derives, and that the peers do the same work.  No timing
assertions."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

from conftest import BACKENDS
from xpdnn import bench

TINY = ["--scale", "0.005", "--repeat", "2", "--retries", "0", "--warmup", "0", "--quiet", "--threads", "1"]
PEER_OF = {"numpy": "xpdnn-numpy", "torch": "xpdnn-torch", "array_api_strict": "xpdnn-array_api_strict",
           "cupy": "xpdnn-cupy"}


# a run per backend the benchmark has a peer for: NumPy's in the everyday run, the others slow
@pytest.mark.parametrize("backend", [b if b == "numpy" else pytest.param(b, marks=pytest.mark.slow)
                                     for b in BACKENDS if b in PEER_OF], indirect=True)
def test_report_structure(backend, tmp_path, capsys):
    peer = PEER_OF[backend.name]
    path = tmp_path / "report.json"
    argv = TINY + ["--only", "W1,W2,W3", "--peers", peer, "--no-memory", "--json", str(path)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "GEMM roofline" in printed and peer in printed

    report = json.loads(path.read_text())
    assert {"schema", "date", "config", "machine", "versions", "roofline", "results", "ratios", "skipped",
            "errors", "rounds", "warnings", "blas_env"} <= set(report)
    assert report["errors"] == []
    assert report["config"]["threads"] == 1 and report["config"]["scale"] == 0.005
    machine = report["machine"]
    assert isinstance(machine["cpu"], str) and machine["cpu"]
    assert machine["cores"] >= 1 and machine["usable_cores"] >= 1
    assert "numpy" in report["versions"] and "xpdnn" in report["versions"]
    assert isinstance(machine["env"], dict) and machine["jit"].startswith(("on", "off"))
    for key, rounds in report["rounds"].items():              # every interleaved run's load, per round
        assert len(rounds["rounds"]) == 2 and set(rounds["used"]) <= {0, 1}
        for load in rounds["rounds"]:
            assert load["wall_s"] > 0 and load["cpu_s"] >= 0 and isinstance(load["noisy"], bool)

    roof = [r for r in report["roofline"] if r["batch"] == 128 and r["sizes"] == [784, 512, 512, 10]]
    assert len(roof) == 1
    flops = 2 * 128 * (3 * (784 * 512 + 512 * 512 + 512 * 10) - 784 * 512)   # no first-layer dX
    for lib in roof[0]["per_lib"]:
        assert lib["flop_per_step"] == flops
        assert lib["gflops"] == pytest.approx(flops / lib["min_s"] / 1e9)
        assert lib["samples_per_s"] == pytest.approx(128 / lib["min_s"])
        assert lib["min_s"] <= lib["median_s"]

    got = {(r["workload"], r["variant"]) for r in report["results"]}
    assert ("W1", "no-dropout") in got and ("W1", "dropout") in got
    assert {w for w, _ in got} == {"W1", "W2", "W3"}
    for r in report["results"]:
        assert r["peer"] == peer
        assert r["interleaved"] and len(r["all_times_s"]) == 2 and all(t > 0 for t in r["all_times_s"])
        assert r["times_s"] == [r["all_times_s"][i] for i in r["rounds_used"]]
        assert r["min_s"] == min(r["times_s"]) and r["min_s"] <= r["median_s"]
        assert r["rate_median"] == pytest.approx(r["work"] / r["median_s"])
        assert r["rate_best"] >= r["rate_median"]
        if r["workload"] == "W1":
            assert r["work"] == r["params"]["n_samples"] == 256
            best = roof[0]["best"][r["device"]]["samples_per_s"]
            assert r["roofline_fraction"] == pytest.approx(r["rate_median"] / best)
            # ten balanced-ish classes: one epoch's mean loss starts near ln(10)
            assert 0.5 < r["first_epoch_loss"] < 5.0
            assert r["interleaved"]
            if r["device"] != "cpu":      # the GEMM-only pseudo-peer runs on the CPU, beside CPU peers
                assert "gemm_epoch_times_s" not in r and "roofline_fraction_paired" not in r
                continue
            assert len(r["gemm_epoch_times_s"]) == len(r["times_s"])
            fractions = [g / t for g, t in zip(r["gemm_epoch_times_s"], r["times_s"])]
            assert r["roofline_fraction_per_round"] == pytest.approx(fractions)
            assert r["roofline_fraction_paired"] == pytest.approx(float(np.median(fractions)))
            assert r["roofline_fraction_paired_range"] == pytest.approx([min(fractions), max(fractions)])
            assert 0 < r["roofline_fraction_paired"] < 2
    w2 = next(r for r in report["results"] if r["workload"] == "W2")
    assert w2["work"] == w2["params"]["N"] * 32768
    w3 = next(r for r in report["results"] if r["workload"] == "W3")
    assert w3["work"] == math.prod(w3["params"]["shape"]) >= 2**24 * 0.005


def test_ratios_against_torch():
    pytest.importorskip("torch")
    report = bench.run(bench.Config(scale=0.005, repeat=1, warmup=0, threads=1, only=("W3",),
                                    peers=("xpdnn-numpy", "torch"), memory=False, gpu=False), quiet=True)
    assert report["errors"] == []
    recs = {r["peer"]: r for r in report["results"]}
    key = next(k for k in report["ratios"] if k.startswith("W3") and "xpdnn-numpy / torch speed" in k)
    per_round = [b / a for a, b in zip(recs["xpdnn-numpy"]["times_s"], recs["torch"]["times_s"])]
    assert report["ratios"][key]["median"] == pytest.approx(float(np.median(per_round)))
    assert report["ratios"][key]["min"] == pytest.approx(min(per_round))
    assert "vs torch" in bench.format_report(report)


@pytest.mark.slow
def test_interleaved_rounds_pair_the_peers():
    pytest.importorskip("torch")
    cfg = bench.Config(scale=0.005, repeat=3, warmup=0, threads=1, only=("W1",),
                       peers=("xpdnn-numpy", "torch"), memory=False, gpu=False)
    report = bench.run(cfg, quiet=True)
    assert report["errors"] == []
    recs = {(r["variant"], r["peer"]): r for r in report["results"]}
    a, b = recs[("no-dropout", "xpdnn-numpy")], recs[("no-dropout", "torch")]
    per_round = sorted(tb / ta for ta, tb in zip(a["times_s"], b["times_s"]))
    key = "W1 no-dropout: xpdnn-numpy / torch speed"
    assert report["ratios"][key]["median"] == pytest.approx(float(np.median(per_round)))
    assert report["ratios"][key]["max"] == pytest.approx(per_round[-1])


@pytest.mark.slow
def test_torch_and_sklearn_peers_train_the_same_network():
    """Same initial weights, shuffling and SGD: xpdnn and the PyTorch hand loop reach the same
    first-epoch loss (float32 rounding apart); sklearn trains a network of the same shape."""
    pytest.importorskip("torch")
    X, y = bench.mnist_like(512, seed=3)
    sizes, losses = (784, 32, 32, 10), {}
    for name in ("xpdnn-numpy", "torch"):
        runner = bench.mlp_runner(bench.PEERS[name], sizes, 0.0, 64, seed=3)
        losses[name] = runner.epoch(*runner.place(X, y))
    assert losses["xpdnn-numpy"] == pytest.approx(losses["torch"], rel=1e-4)
    pytest.importorskip("sklearn")
    sk = bench.mlp_runner(bench.PEERS["sklearn"], sizes, 0.0, 64, seed=3)
    sk.epoch(X, y)
    assert [w.shape for w in sk.clf.coefs_] == [(784, 32), (32, 32), (32, 10)]
    assert sk.clf.coefs_[0].dtype == np.float32
    with pytest.raises(ValueError, match="no dropout"):
        bench.mlp_runner(bench.PEERS["sklearn"], sizes, 0.2, 64)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_numpy_loop_does_xpdnns_work(dropout):
    """The bare NumPy loop is a fair floor only if it trains exactly xpdnn's network: same
    initial weights, shuffling, Philox dropout masks and SGD, so the same losses, two epochs in."""
    X, y = bench.mnist_like(512, seed=3)
    sizes, losses = (784, 32, 32, 10), {}
    for name in ("xpdnn-numpy", "numpy-loop"):
        runner = bench.mlp_runner(bench.PEERS[name], sizes, dropout, 64, seed=3)
        Xp, yp = runner.place(X, y)
        losses[name] = [runner.epoch(Xp, yp) for _ in range(2)]
    assert losses["numpy-loop"] == pytest.approx(losses["xpdnn-numpy"], rel=1e-5)
    assert losses["numpy-loop"][1] < losses["numpy-loop"][0]


def test_torch_peer_starts_from_xpdnns_weights_with_dropout():
    """Inserting Dropout layers shifts the layer indices that seed the init: the PyTorch peer must
    copy the weights of the network xpdnn actually trains, dropout variant included."""
    torch = pytest.importorskip("torch")
    sizes = (784, 32, 32, 10)
    ref = [lay for lay in bench.build_xpdnn_mlp(sizes, 0.2, seed=3).layers if hasattr(lay, "n_out")]
    mods = [m for m in bench.mlp_runner(bench.PEERS["torch"], sizes, 0.2, 64, seed=3).model
            if isinstance(m, torch.nn.Linear)]
    for lay, m in zip(ref, mods, strict=True):
        np.testing.assert_array_equal(m.weight.detach().numpy(), lay.params["W"])


def test_gemm_step_shapes():
    shapes = bench.gemm_step_shapes(16, (8, 4, 2))
    # per layer: X@W.T (N,n_in)x(n_in,n_out), dY.T@X (n_out,N)x(N,n_in), and past the first layer
    # dY@W (N,n_out)x(n_out,n_in): no step needs the first layer's input gradient
    assert shapes == [(16, 8, 4), (4, 16, 8), (16, 4, 2), (2, 16, 4), (16, 2, 4)]


def test_peak_memory_subprocess():
    cfg = bench.Config(scale=0.005)
    mem = bench.peak_memory(bench.PEERS["xpdnn-numpy"], "no-dropout", cfg, threads=1)
    assert 0 < mem["setup_rss_mb"] <= mem["peak_rss_mb"]
    if "epoch_peak_rss_mb" in mem:   # Linux: the high-water mark was reset before the epoch
        assert mem["peak_rss_mb"] == max(mem["setup_rss_mb"], mem["epoch_peak_rss_mb"])
        assert mem["train_rss_mb"] == pytest.approx(mem["epoch_peak_rss_mb"] - mem["rss_before_epoch_mb"])
        assert mem["train_rss_mb"] >= 0
    else:
        assert mem["train_rss_mb"] == pytest.approx(mem["peak_rss_mb"] - mem["setup_rss_mb"])


def test_bad_arguments_are_rejected(capsys):
    assert bench.main(["--only", "W9"]) == 2
    assert "unknown workload 'W9'" in capsys.readouterr().err
    assert bench.main(["--peers", "tensorflow"]) == 2
    assert "unknown peer 'tensorflow'" in capsys.readouterr().err
    assert bench.main(["--scale", "0"]) == 2
    assert "--scale must be positive" in capsys.readouterr().err


def test_plot_without_matplotlib_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib raises ImportError
    report = {"results": [], "machine": {}, "config": {}}
    assert bench.plot(report, str(tmp_path / "chart.png")) is False
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "chart.png").exists()


def test_minimal_traffic_and_bandwidth_formula():
    # H100 SXM: 2619 MHz HBM3 on a 5120-bit bus is NVIDIA's 3.35 TB/s
    assert bench.peak_bandwidth(2_619_000, 5120) == pytest.approx(3.352e12, rel=1e-3)
    report = bench.run(bench.Config(scale=0.005, repeat=1, warmup=0, threads=1, only=("W2", "W3"),
                                    peers=("xpdnn-numpy",), memory=False, gpu=False), quiet=True)
    recs = {r["workload"]: r for r in report["results"]}
    N, C = recs["W2"]["params"]["N"], recs["W2"]["params"]["C"]
    assert recs["W2"]["min_bytes"] == 8 * N * C
    assert recs["W3"]["min_bytes"] == 16 * math.prod(recs["W3"]["params"]["shape"])
    for r in recs.values():
        assert r["bytes_per_s"] == pytest.approx(r["min_bytes"] / r["median_s"])
        assert "extra_memory_bytes" not in r                  # device figures only on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not bench.peer_available(bench.PEERS["xpdnn-cupy"])[0], reason="needs a CUDA device (CuPy)")
def test_gpu_bandwidth_and_step_memory():
    import cupy

    bw = bench.gpu_bandwidth("cupy")
    assert 1e11 < bw["copy_bytes_per_s"] < 2 * bw["peak_bytes_per_s"]
    n = 1 << 20
    X = cupy.ones(n, dtype=cupy.float32)
    peer = bench.PEERS["xpdnn-cupy"]
    assert bench.gpu_step_memory(peer, lambda: X * 2) >= 4 * n                # the output counts
    assert bench.gpu_step_memory(peer, lambda: (X * 2 + 1) * 3) >= 4 * n


def _fake_run(repeat=3):
    r = bench.Run(bench.Config(repeat=repeat, threads=1), quiet=True)
    return r


def test_a_peer_faster_than_the_roofline_marks_its_round_noisy():
    """The paired roofline is the round's fastest GEMM library; beating it can only be noise, so
    that round is marked and left out while enough quiet rounds remain."""
    r = _fake_run()
    quiet = {"wall_s": 1.0, "cpu_s": 1.0, "others_cores": 0.0, "noisy": False}
    results = {
        "xpdnn-numpy": {"times_s": [2.0, 2.0, 0.5, 2.0], "first_epoch_loss": 1.0},
        "torch": {"times_s": [2.5, 2.4, 2.6, 2.5], "first_epoch_loss": 1.0},
        "gemm-numpy": {"times_s": [1.8, 1.8, 1.8, 1.9]},
        "gemm-torch": {"times_s": [1.6, 1.7, 1.9, 1.5]},
        "_rounds": [dict(quiet) for _ in range(4)],
    }
    used = r.interleaved("W1 test", results)
    assert used == [0, 1, 3]
    assert r.rounds["W1 test"]["rounds"][2]["noisy"]
    assert "faster than the GEMM roofline: xpdnn-numpy" in r.rounds["W1 test"]["rounds"][2]["why"][0]
    assert any("1 of 4 rounds noisy" in w for w in r.warnings)
    rec = r.record("W1", "test", bench.PEERS["xpdnn-numpy"], results, used, 100, "samples/s", {})
    assert rec["gemm_epoch_times_s"] == [1.6, 1.7, 1.5]         # per round, the faster library
    assert rec["roofline_fraction_per_round"] == pytest.approx([0.8, 0.85, 0.75])
    assert rec["roofline_fraction_paired"] == pytest.approx(0.8)
    assert max(rec["roofline_fraction_per_round"]) <= 1.0
    ref = r.record("W1", "test", bench.PEERS["torch"], results, used, 100, "samples/s", {})
    st = bench.paired_ratio_stats(rec, ref)
    assert st == pytest.approx({"median": 1.25, "min": 1.2, "max": 1.25, "n": 3})


def test_loaded_rounds_are_all_used_with_a_warning():
    r = _fake_run()
    busy = {"wall_s": 1.0, "cpu_s": 1.0, "others_cores": 1.5, "noisy": True}
    results = {"xpdnn-numpy": {"times_s": [2.0, 2.1, 2.2]}, "_rounds": [dict(busy) for _ in range(3)]}
    assert r.interleaved("W3 x", results) == [0, 1, 2]
    assert "too few quiet rounds" in r.warnings[0] and "1.50 cores" in r.warnings[0]


def test_load_probe_sees_this_process_and_the_others():
    probe = bench.LoadProbe()
    x = 0
    for i in range(2_000_00):
        x += i * i
    load = probe.stop()
    assert load["wall_s"] > 0 and 0 < load["cpu_over_wall"] <= bench.usable_cores() + 0.5
    if load["others_cores"] is not None:        # Linux: from /proc/stat
        assert load["others_cores"] >= 0
        assert bench.noisy({"others_cores": 0.3}) and not bench.noisy({"others_cores": 0.3}, spare=1)
    assert not bench.noisy({"others_cores": None})


def test_skipped_peers_collapse_to_one_line_per_reason():
    skipped = [{"workload": w, "peer": p, "reason": "cupy is not installed"} for w in ("W1", "W2", "W3", "S")
               for p in ("xpdnn-cupy",)]
    skipped += [{"workload": w, "peer": p, "reason": "PyTorch sees no CUDA device"}
                for w in ("W1", "W2") for p in ("xpdnn-torch-cuda", "torch-cuda")]
    lines = bench.skipped_lines(skipped)
    assert lines == ["skipped xpdnn-cupy (W1, W2, W3, S): cupy is not installed",
                     "skipped xpdnn-torch-cuda, torch-cuda (W1, W2): PyTorch sees no CUDA device"]


def test_nojit_peer_sets_its_switch_only_while_it_runs(monkeypatch):
    monkeypatch.delenv("XPDNN_NO_JIT", raising=False)
    peer = bench.PEERS["xpdnn-numpy-nojit"]
    with bench.peer_env(peer):
        assert os.environ["XPDNN_NO_JIT"] == "1"
    assert "XPDNN_NO_JIT" not in os.environ
    monkeypatch.setenv("XPDNN_NO_JIT", "0")
    with bench.peer_env(peer):
        pass
    assert os.environ["XPDNN_NO_JIT"] == "0"


@pytest.mark.slow
def test_forced_openblas_setting_is_measured_and_warned():
    out = bench.blas_env_cost(1, {"OPENBLAS_L2_SIZE": "262144"}, pairs=1)
    assert len(out["as_set_s"]) == len(out["unset_s"]) == 1
    assert out["slowdown"]["median"] == pytest.approx(out["as_set_s"][0] / out["unset_s"][0])
    assert out["warning"].startswith("OPENBLAS_L2_SIZE=262144 is set: NumPy's GEMMs of a W1 step")
