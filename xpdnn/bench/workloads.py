"""The fixed, seeded workloads: W1-W4 and S's sizes (see :mod:`xpdnn.bench`), what one run
does (:class:`Config`) and the synthetic classification data W1 and S train on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WORKLOADS = {
    "W1": "mnist-mlp",
    "W2": "wide-softmax",
    "W3": "dropout",
    "W4": "large-batch",
    "S": "scaling",
}
W1_SIZES = (784, 512, 512, 10)
W1_SAMPLES = 20_000
W1_BATCH = 128
W1_DROPOUT = 0.2
LR, MOMENTUM = 0.01, 0.9
W2_CLASSES = 32_768
W2_ROWS = {"cpu": 4096, "cuda": 16_384}
W3_ELEMENTS = {"cpu": 2**24, "cuda": 2**28}
W4_SIZES = (4096, 4096, 4096, 1000)
W4_BATCH = 4096
W4_STEPS = 16
SCALING_SAMPLES = 8192
SCALING_POINTS = ((32, 512), (128, 512), (512, 512), (2048, 512), (128, 128), (128, 2048))


# names of peers.PEERS; a run skips those this machine cannot run
DEFAULT_PEERS = ("xpdnn-numpy", "xpdnn-numpy-nojit", "xpdnn-torch", "torch", "sklearn", "numpy-loop", "xpdnn-cupy",
                 "xpdnn-torch-cuda", "torch-cuda")


@dataclass
class Config:
    """What to run.  ``scale`` multiplies every workload's sample / element count."""

    scale: float = 1.0
    repeat: int = 5
    warmup: int = 1
    threads: int = 0                      # 0: every core this process may use
    only: tuple = ("W1", "W2", "W3", "W4", "S")
    peers: tuple = DEFAULT_PEERS
    gpu: bool = True
    memory: bool = True
    profile: bool = False
    seed: int = 0
    quick: bool = False
    retries: int = 2                      # extra rounds while fewer than ``repeat`` rounds were quiet
    notes: list = field(default_factory=list)


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(int(minimum), int(round(n * scale)))


def mnist_like(n: int, n_features: int = 784, n_classes: int = 10, seed: int = 0):
    """Seeded synthetic classification data: X (n, n_features) float32 in [0, 1), y (n,) int64.

    Each class has a random prototype; a sample is its prototype plus uniform noise, clipped,
    so the task is learnable and nothing is downloaded."""
    rng = np.random.default_rng([seed, 784])
    protos = rng.random((n_classes, n_features), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n, dtype=np.int64)
    X = np.empty((n, n_features), dtype=np.float32)
    for start in range(0, n, 4096):   # chunks keep the setup's peak memory near the data's size
        stop = min(n, start + 4096)
        noise = rng.random((stop - start, n_features), dtype=np.float32)
        np.clip(0.5 * protos[y[start:stop]] + 0.5 * noise, 0.0, 1.0, out=X[start:stop])
    return X, y
