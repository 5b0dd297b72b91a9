"""CPU-vs-GPU parity of whole training runs (runs only where CuPy sees a CUDA device; layer-
and loss-level parity runs through the `backend` fixture, which includes CuPy there)."""

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import _backend as B
from xpdnn.devices import cuda_available

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_available()[0], reason="needs a CUDA device (CuPy)")]


def _digits_run(device, dropout):
    X, y = xd.datasets.load_digits()
    X_tr, X_te, y_tr, y_te = xd.datasets.train_test_split(X, y, seed=0)
    layers = [xd.Linear(64, 128), xd.ReLU()] + ([xd.Dropout(dropout)] if dropout else []) + [xd.Linear(128, 10)]
    net = xd.Sequential(*layers)
    trainer = xd.Trainer(net, loss=xd.SoftmaxCrossEntropy(), optimizer=xd.SGD(lr=0.05, momentum=0.9),
                         batch_size=32, epochs=3, seed=0, progress=False, device=device)
    hist = trainer.fit(X_tr, y_tr, validation=(X_te, y_te))
    return hist, net


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_digits_history_on_cupy_equals_numpy(dropout):
    """3 epochs on digits from the same seed: the fused dropout kernel draws the NumPy path's
    masks and the fused softmax-xent kernel matches the portable loss, so the histories agree."""
    ref, ref_net = _digits_run(None, dropout)
    got, net = _digits_run("cuda", dropout)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, err_msg=key)
    for key in ("accuracy", "val_accuracy"):    # cuBLAS sums in another order: one argmax may flip
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=3e-3, err_msg=key)   # 1/360 < 3e-3
    W = B.to_numpy(net.layers[0].params["W"])
    assert B.is_cupy(net.layers[0].params["W"])
    np.testing.assert_allclose(W, B.to_numpy(ref_net.layers[0].params["W"]), rtol=1e-3, atol=1e-5)


def test_cupy_outputs_stay_on_the_device():
    import cupy
    X, y = xd.datasets.load_digits()
    net = xd.Sequential(xd.Linear(64, 32), xd.ReLU(), xd.Linear(32, 10))
    Xg = cupy.asarray(X)
    P = net.predict_proba(Xg)
    assert isinstance(P, cupy.ndarray) and P.shape == (1797, 10)


def test_unchecked_fused_loss_turns_a_bad_label_into_nan():
    """The trainer's mode (labels validated up front): no read-back per call, and a bad label
    still never yields a number."""
    import cupy
    from xpdnn.kernels.softmax_xent import softmax_xent
    Z = cupy.zeros((4, 3), dtype=cupy.float32)
    loss, _ = softmax_xent(Z, cupy.asarray([0, 1, 2, 1]), check=False)
    assert abs(float(loss) - float(np.log(3.0))) < 1e-6
    loss, _ = softmax_xent(Z, cupy.asarray([0, 1, 7, 1]), check=False)
    assert np.isnan(float(loss))
    with pytest.raises(ValueError, match="7"):
        softmax_xent(Z, cupy.asarray([0, 1, 7, 1]))
