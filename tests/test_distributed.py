"""Data-parallel training on two CPU ranks, under MPI (mpiexec, mpi4py) and torch.distributed
(torchrun, gloo), against the one-process run with the same seed.

Each case starts ``tests/distributed/worker.py`` as a job with a hard timeout (the launcher
kills every rank when one fails); the one-process reference runs the same script alone.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "distributed", "worker.py")
JOB_TIMEOUT = 60          # seconds: a hung job fails the test instead of hanging the suite


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return exe


def _torchrun_ok():
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="MPI engine not installed (pip install \".[mpi]\": mpi4py + mpich)")
needs_gloo = pytest.mark.skipif(not _torchrun_ok(), reason="torch.distributed with gloo not installed")


def _env(timeout=20):
    env = dict(os.environ)
    env.update(XPDNN_DIST_TIMEOUT=str(timeout), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for var in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        env.pop(var, None)
    return env


def launch(engine, scenario, out, *extra, ranks=2, timeout=20):
    """Run ``scenario`` on ``ranks`` ranks (engine "mpi" or "torch", or "local": one process);
    returns (returncode, output, seconds)."""
    script = [WORKER, scenario, str(out)]
    if engine == "local":
        cmd = [sys.executable, *script, "local", *extra]
    elif engine == "mpi":
        cmd = [MPIEXEC, "-n", str(ranks), sys.executable, *script, "mpi", *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
               str(29500 + os.getpid() % 1000), *script, "torch", *extra]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=_env(timeout))
    return res.returncode, res.stdout + res.stderr, time.monotonic() - t0


@functools.lru_cache(maxsize=None)
def reference(scenario, out):
    code, log, _ = launch("local", scenario, out)
    assert code == 0, log
    return dict(np.load(os.path.join(out, f"{scenario}-1.npz")))


def job(engine, scenario, out, *extra):
    code, log, _ = launch(engine, scenario, out, *extra)
    assert code == 0, log
    return dict(np.load(os.path.join(out, f"{scenario}-2.npz")))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dist"))


ENGINES = [pytest.param("mpi", marks=needs_mpi), pytest.param("torch", marks=needs_gloo)]


@pytest.mark.parametrize("engine", ENGINES)
def test_two_ranks_follow_the_one_process_run(engine, out):
    """tanh + dropout 0.3 in float32 over 4 epochs: the same history and weights to float32 rounding."""
    one, two = reference("smooth", out), job(engine, "smooth", out)
    assert int(two["counter"]) == int(one["counter"])
    for k in one:
        if k.startswith("layers."):
            np.testing.assert_allclose(two[k], one[k], rtol=0, atol=2e-6, err_msg=k)
    np.testing.assert_allclose(two["h_loss"], one["h_loss"], rtol=1e-5)
    np.testing.assert_array_equal(two["h_accuracy"], one["h_accuracy"])


@needs_mpi
def test_rank_masks_are_the_rows_of_the_one_process_masks(out):
    """Every dropout mask a rank draws is, bit for bit, its rows of the whole batch's mask."""
    two = job("mpi", "masks", out)
    assert bool(two["ok"]) and int(two["steps"]) > 0
    np.testing.assert_array_equal(two["firsts"], [0, 5])      # rank 1 starts at row 5 of a 10-row batch


@needs_mpi
@pytest.mark.parametrize("scenario", ["weighted", "batchnorm"])
def test_unequal_shards_class_weights_ignore_index_and_sync_batchnorm_are_exact(scenario, out):
    """float64: batches of 7 (shards of 3 and 4) with class weights and ignored labels, and
    SyncBatchNorm against BatchNorm1d in one process, agree to float64 rounding."""
    one, two = reference(scenario, out), job("mpi", scenario, out)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-9, atol=1e-9, err_msg=k)


@needs_mpi
def test_torch_tensors_train_data_parallel_too(out):
    """Tensors of another Array API library take the packed (concat) path of the sink."""
    pytest.importorskip("torch")
    one, two = reference("torch_tensors", out), job("mpi", "torch_tensors", out)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-9, atol=1e-12, err_msg=k)


@needs_mpi
def test_early_stopping_and_plateau_decide_alike_on_every_rank(out):
    one, two = reference("earlystop", out), job("mpi", "earlystop", out)
    everyone = two["everyone"]
    assert (everyone == everyone[0]).all()                    # epoch, lr and weights: bitwise equal ranks
    assert everyone[0, 0] < 30                                # it did stop early
    np.testing.assert_allclose(everyone[0], one["everyone"][0], rtol=1e-9)
    np.testing.assert_allclose(two["h_val_loss"], one["h_val_loss"], rtol=1e-9)


@needs_mpi
def test_a_nan_on_one_rank_stops_every_rank_with_the_same_rollback(out):
    two = job("mpi", "nan", out)
    everyone = two["everyone"]
    assert (everyone[:, 0] == 1).all()                        # every rank raised TrainingError
    assert (everyone[:, 1] == everyone[0, 1]).all()           # and rolled back to the same weights


@needs_mpi
def test_ranks_with_different_data_get_a_clear_error(out):
    two = job("mpi", "mismatch", out)
    assert "samples differs (rank 0: 203, rank 1: 204)" in str(two["msg"])


@needs_mpi
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_resume_at_another_rank_count(first, then, tmp_path):
    """2 epochs on ``first`` ranks, checkpoint (rank 0 writes, then a barrier), 2 more on
    ``then``: the same weights as 4 epochs in one process, to float64 rounding."""
    out = str(tmp_path)

    def run(ranks, phase):
        engine = "mpi" if ranks > 1 else "local"
        code, log, _ = launch(engine, "resume", out, phase, ranks=ranks)
        assert code == 0, log

    run(first, "first")
    run(then, "then")
    resumed = dict(np.load(os.path.join(out, f"resume-{then}.npz")))
    run(1, "first")
    run(1, "then")
    straight = dict(np.load(os.path.join(out, "resume-1.npz")))
    for k in straight:
        np.testing.assert_allclose(resumed[k], straight[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("fault", ["raise", "hang", "kill"])
def test_a_failing_rank_ends_the_whole_job(engine, fault, out):
    """A rank that raises, hangs or is killed ends the job with a non-zero exit (the
    collectives' deadline is 5 s here; ``launch`` fails the test if the job outlives
    JOB_TIMEOUT), and the job never reports success."""
    code, log, _ = launch(engine, fault, out, timeout=5)
    assert code != 0, log
    assert not os.path.exists(os.path.join(out, f"{fault}-2.npz"))
    if fault == "raise":
        assert "planted failure on rank 1" in log
    if fault == "hang":
        assert "rank 0 of 2" in log and ("waited 5 s" in log or "allreduce failed" in log), log


# -- on a GPU: NCCL with one rank, CuPy arrays through the packed all-reduce --------------------

def _cuda():
    from xpdnn.devices import cuda_available
    return cuda_available()[0]


@pytest.mark.gpu
@pytest.mark.skipif(MPIEXEC is None or not _cuda(), reason="needs a CUDA device (CuPy) and mpi4py")
def test_nccl_one_rank_and_cupy_through_the_packed_allreduce():
    """The NCCL communicator (unique id over MPI) with one rank sums in place; a CuPy training
    step through AllReduceGrads over it equals the plain step."""
    import cupy

    import xpdnn as xd
    from xpdnn.distributed.comm import LocalComm
    from xpdnn.distributed.mpi import MPIComm, NCCLComm
    from xpdnn.random import Stream
    from xpdnn.step import AllReduceGrads, Step, StepGrads

    mpi = MPIComm(timeout=60)
    nccl = NCCLComm(mpi)
    buf = cupy.arange(1000, dtype=cupy.float32)
    assert nccl.allreduce(buf) is buf
    np.testing.assert_array_equal(buf.get(), np.arange(1000, dtype=np.float32))

    class OneRankNCCL(LocalComm):
        def allreduce(self, a):
            return nccl.allreduce(a)

    X = cupy.asarray(np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32))
    y = cupy.asarray(np.random.default_rng(1).integers(0, 3, 64))
    weights = []
    for collective in (False, True):
        net = xd.Sequential(xd.Linear(10, 16), xd.Tanh(), xd.Dropout(0.2), xd.Linear(16, 3))
        net.initialize(0)
        net.to(like=X)
        opt = xd.SGD(lr=0.1, momentum=0.9)
        sink = AllReduceGrads((net,), OneRankNCCL()) if collective else StepGrads((net,))
        step, rng = Step(net, xd.SoftmaxCrossEntropy(), opt, sink=sink), Stream(3)
        for _ in range(3):
            step(X, y, rng, lambda loss: None, global_rows=64)
        if collective:
            assert sink.buffer is not None and isinstance(sink.buffer, cupy.ndarray)
        weights.append({k: v.get() for k, v in net.state_arrays().items()})
    for k in weights[0]:
        np.testing.assert_allclose(weights[1][k], weights[0][k], rtol=1e-6, atol=1e-6, err_msg=k)
    mpi.close()


# -- the command line: `mpiexec -n 2 xpdnn train` and `torchrun ... -m xpdnn train` ------------

def _cli(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=JOB_TIMEOUT, env=_env())
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _epochs_and_accuracy(stdout):
    """The epoch lines without their samples/s, and the test accuracy line."""
    lines = [ln.rsplit("(", 1)[0].strip() for ln in stdout.splitlines() if ln.startswith("epoch ")]
    return lines, [ln for ln in stdout.splitlines() if ln.startswith("test accuracy")]


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_train_on_two_ranks_matches_one_process(engine):
    """The main job on 2 ranks prints (from rank 0 only) the one-process run's epochs and accuracy."""
    args = ["-m", "xpdnn", "train", "--epochs", "2", "--hidden", "32"]
    one = _cli([sys.executable, *args])
    if engine == "mpi":
        two = _cli([MPIEXEC, "-n", "2", sys.executable, *args])
    else:
        two = _cli([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    str(29600 + os.getpid() % 1000), *args])
    lines_one, acc_one = _epochs_and_accuracy(one)
    lines_two, acc_two = _epochs_and_accuracy(two)
    assert len(lines_one) == 2 and acc_one
    assert lines_two == lines_one and acc_two == acc_one       # printed once: by rank 0 only


# -- refusals, before any state changes (a stand-in communicator of 2 ranks, in this process) ----

class _TwoRanksHere:
    """Rank 0 of 2 whose peer always agrees (collectives return this rank's values)."""

    def __new__(cls):
        from xpdnn.distributed.comm import Communicator

        class Fake(Communicator):
            rank, size = 0, 2

            def allgather_values(self, values):
                return np.array([values, values], dtype=np.float64)

        return Fake()


@pytest.mark.parametrize("case", ["loss with parameters", "fused_step"])
def test_data_parallel_refuses_what_it_cannot_honour(case):
    import xpdnn as xd

    X = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    net = xd.Sequential(xd.Linear(4, 3))
    if case == "fused_step":
        tr = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.1), fused_step=True,
                        comm=_TwoRanksHere(), progress=0)
        match = "fused_step=True"
    else:
        net = xd.Sequential(xd.Linear(4, 6))
        tr = xd.Trainer(net, loss=xd.HierarchicalSoftmax(6, 3), optimizer=xd.SGD(lr=0.1), comm=_TwoRanksHere(),
                        progress=0)
        match = "loss with parameters"
    before = {k: v.copy() for k, v in net.state_arrays().items()}
    with pytest.raises(ValueError, match=match):
        tr.fit(X, y)
    assert tr.epoch == 0 and tr.global_step == 0
    if before:
        for k, v in net.state_arrays().items():
            np.testing.assert_array_equal(v, before[k])
