"""Benchmark harness: ``python -m xpdnn.bench`` (the CLI's ``xpdnn bench``).

Times xpdnn against peers that run in the same process with the same architecture, optimizer,
batch size, dtype (float32) and thread count, on fixed, seeded synthetic workloads:

* ``W1`` mnist-mlp     one epoch of 784-512-512-10 ReLU + softmax cross-entropy, SGD lr 0.01
  momentum 0.9, batch 128, on 20,000 x 784 samples of 10 classes; once without dropout and once
  with dropout 0.2 after each hidden layer.  Rate: samples/s.
* ``W2`` wide-softmax  softmax cross-entropy forward + backward on logits (N, 32768), N = 4096
  on the CPU, 16384 on a GPU.  Rate: logits/s.
* ``W3`` dropout       dropout (rate 0.2) forward + backward on 2**24 (CPU) / 2**28 (GPU) float32
  elements.  Rate: elements/s.
* ``W4`` large-batch   4096-4096-4096-1000 MLP, batch 4096 (GPU only).  Rate: samples/s.
* ``S``  scaling       W1's network at batch 32/128/512/2048 (hidden 512) and hidden
  128/512/2048 (batch 128).  Reported as microseconds per sample.

Peers: ``xpdnn-numpy``, ``xpdnn-numpy-nojit`` (the same with ``XPDNN_NO_JIT=1``: without the
compiled kernels of the ``fast`` extra), ``xpdnn-torch`` (xpdnn code on PyTorch CPU tensors), ``torch`` (PyTorch
on the CPU), ``sklearn`` (MLPClassifier, W1 without dropout only), and on a CUDA machine
``xpdnn-cupy``, ``xpdnn-torch-cuda`` and ``torch-cuda``; ``xpdnn-array_api_strict`` on request.

Every run records the machine, the library versions and the environment variables that steer
BLAS and xpdnn (warning, with the measured cost, when ``OPENBLAS_CORETYPE`` or
``OPENBLAS_L2_SIZE`` forces OpenBLAS's settings), and measures the machine's GEMM roofline at
W1's shapes: the float32 matmuls of one training step (per Linear layer ``X @ W.T``,
``dY.T @ X`` and, past the first layer, ``dY @ W``: 8 for W1), so each W1/S result is also a
fraction of ``roofline samples/s = batch / (time of those GEMMs)``, paired per round: in every
interleaved round a GEMM-only epoch runs in each CPU GEMM library beside the peers, and the
round's fastest is that round's roofline.  Every speed ratio is the median of per-round ratios,
given with its range; a round during which other processes kept the machine busy
(:class:`LoadProbe`) or a peer beat the roofline is marked noisy, more rounds run (``retries``)
and the summaries use the quiet ones.  Peak resident memory for W1 comes from
one subprocess per peer (its peak RSS after one epoch, see :func:`peak_rss_mb`).

``--quick`` (``--scale 0.1``, 3 repeats) shrinks every workload so a run takes a few minutes.

Files, one purpose each: ``workloads`` (the sizes above, :class:`Config`, the synthetic data),
``peers`` (the contenders and their epoch runners), ``timing`` (clocks, interleaved rounds,
paired ratios), ``roofline`` (the GEMM roofline), ``machine`` (machine, versions, threads),
``memory`` (GPU bandwidth and allocations, peak RSS subprocesses), ``harness`` (one run of every
workload: :func:`run`), ``report`` (ratios, tables, Markdown, chart) and ``cli`` (flags,
:func:`main`).  The names below are the harness's API.
"""

from .cli import config_from_args, main, parser
from .harness import Run, run
from .machine import LoadProbe, library_env, machine_info, noisy, set_threads, usable_cores, versions
from .memory import gpu_bandwidth, gpu_step_memory, peak_bandwidth, peak_memory, peak_rss_mb
from .peers import (PEERS, Peer, build_xpdnn_mlp, dropout_step, mlp_runner, peer_available, peer_env, put,
                    softmax_ce_step, synchronizer)
from .report import format_markdown, format_report, plot, ratios, skipped_lines
from .roofline import GEMM_PEER, GemmEpoch, blas_env_cost, gemm_peer, gemm_roofline, gemm_step_shapes
from .timing import (measure, paired_ratio, paired_ratio_stats, paired_roofline, stats, time_epochs,
                     time_epochs_interleaved, time_ops_interleaved, used_rounds)
from .workloads import (DEFAULT_PEERS, LR, MOMENTUM, SCALING_POINTS, SCALING_SAMPLES, W1_BATCH, W1_DROPOUT,
                        W1_SAMPLES, W1_SIZES, W2_CLASSES, W2_ROWS, W3_ELEMENTS, W4_BATCH, W4_SIZES, W4_STEPS,
                        WORKLOADS, Config, mnist_like)
from .workloads import _scaled  # noqa: F401  (bench/conftest.py sizes its data with it)

__all__ = [
    "Config", "DEFAULT_PEERS", "GEMM_PEER", "GemmEpoch", "LR", "LoadProbe", "MOMENTUM", "PEERS", "Peer", "Run",
    "SCALING_POINTS", "SCALING_SAMPLES", "W1_BATCH", "W1_DROPOUT", "W1_SAMPLES", "W1_SIZES", "W2_CLASSES", "W2_ROWS",
    "W3_ELEMENTS", "W4_BATCH", "W4_SIZES", "W4_STEPS", "WORKLOADS", "blas_env_cost", "build_xpdnn_mlp",
    "config_from_args", "dropout_step", "format_markdown", "format_report", "gemm_peer", "gemm_roofline",
    "gemm_step_shapes", "gpu_bandwidth", "gpu_step_memory", "library_env", "machine_info", "main", "measure",
    "mlp_runner", "mnist_like", "noisy", "paired_ratio", "paired_ratio_stats", "paired_roofline", "parser",
    "peak_bandwidth", "peak_memory", "peak_rss_mb", "peer_available", "peer_env", "plot", "put", "ratios", "run",
    "set_threads", "skipped_lines", "softmax_ce_step", "stats", "synchronizer", "time_epochs",
    "time_epochs_interleaved", "time_ops_interleaved", "usable_cores", "used_rounds", "versions",
]
