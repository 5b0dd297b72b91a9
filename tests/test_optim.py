"""Optimizers and learning-rate schedules against torch.optim, on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xpdnn import _backend as B
from xpdnn.layers.activations import Tanh
from xpdnn.layers.linear import Linear
from xpdnn.layers.sequential import Sequential
from xpdnn.losses.regression import MSE
from xpdnn.optim.adaptive import Adagrad, Adam, AdamW, RMSProp
from xpdnn.optim.base import optimizer_from_state
from xpdnn.optim.schedules import (CosineWarmup, ExponentialDecay, InverseTimeDecay, ReduceLROnPlateau,
                                   StepDecay)
from xpdnn.optim.sgd import SGD
from xpdnn.trainer import Callback, Trainer

STEPS = 20

# (xpdnn class, torch.optim class name, kwargs shared by both); a large eps in some cases makes
# its placement (inside or outside the sqrt, before or after bias correction) visible at 1e-6
CASES = {
    "sgd": (SGD, "SGD", dict(lr=0.1)),
    "sgd-momentum": (SGD, "SGD", dict(lr=0.1, momentum=0.9)),
    "sgd-dampening": (SGD, "SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    "sgd-nesterov": (SGD, "SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd-wd": (SGD, "SGD", dict(lr=0.1, weight_decay=0.3)),
    "sgd-nesterov-wd": (SGD, "SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    "adagrad": (Adagrad, "Adagrad", dict(lr=0.1)),
    "adagrad-wd": (Adagrad, "Adagrad", dict(lr=0.1, weight_decay=0.2)),
    "adagrad-options": (Adagrad, "Adagrad", dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.3, eps=0.1)),
    "rmsprop": (RMSProp, "RMSprop", dict(lr=0.01)),
    "rmsprop-momentum": (RMSProp, "RMSprop", dict(lr=0.01, momentum=0.9, alpha=0.9)),
    "rmsprop-centered": (RMSProp, "RMSprop", dict(lr=0.01, centered=True)),
    "rmsprop-all": (RMSProp, "RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1, eps=0.1)),
    "adam": (Adam, "Adam", dict(lr=0.01)),
    "adam-wd": (Adam, "Adam", dict(lr=0.01, weight_decay=0.2)),
    "adam-amsgrad": (Adam, "Adam", dict(lr=0.01, amsgrad=True, betas=(0.8, 0.99))),
    "adam-amsgrad-wd": (Adam, "Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1, eps=0.1)),
    "adam-eps": (Adam, "Adam", dict(lr=0.01, eps=0.1)),
    "rmsprop-eps": (RMSProp, "RMSprop", dict(lr=0.01, eps=0.1)),
    "adamw": (AdamW, "AdamW", dict(lr=0.01)),
    "adamw-wd": (AdamW, "AdamW", dict(lr=0.01, weight_decay=0.5)),
    "adamw-amsgrad": (AdamW, "AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
}


def make_net(backend):
    """A tiny float64 "net" whose gradients the tests set by hand."""
    net = Sequential(Linear(3, 4, seed=1, dtype="float64"), Linear(4, 2, seed=2, dtype="float64"))
    net.to(like=backend.asarray(np.zeros(1)))
    return net


def gradient_sequence(net, steps=STEPS, seed=0):
    """Host gradients per step and parameter path; the scale changes so adaptive state matters."""
    rng = np.random.default_rng(seed)
    seq = []
    for t in range(steps):
        seq.append({f"{p}/{n}": rng.standard_normal(tuple(lay.params[n].shape)) * (1.0 + 0.5 * math.sin(t))
                    for p, lay, n in net.parameters()})
    return seq


def run_ours(net, opt, grads, backend, lr_change=None):
    traj = []
    for t, g in enumerate(grads):
        if lr_change is not None and t == lr_change[0]:
            opt.lr = lr_change[1]
        for path, layer, name in net.parameters():
            layer.grads[name] = backend.asarray(g[f"{path}/{name}"].copy())
        opt.step(net)
        traj.append({k: backend.numpy(v).copy() for k, v in net.state_arrays().items()})
    return traj


def run_torch(torch, net, torch_cls, kwargs, grads, lr_change=None):
    """The same trajectory with torch.optim; weight decay only in the group of the weights."""
    params = {f"{p}/{n}": torch.tensor(B.to_numpy(lay.params[n]).copy(), requires_grad=True)
              for p, lay, n in net.parameters()}
    decayed = [params[f"{p}/{n}"] for p, lay, n in net.parameters() if n in lay.decay]
    others = [params[f"{p}/{n}"] for p, lay, n in net.parameters() if n not in lay.decay]
    kwargs = dict(kwargs)
    wd = kwargs.pop("weight_decay", 1e-2 if torch_cls == "AdamW" else 0.0)
    opt = getattr(torch.optim, torch_cls)([{"params": decayed, "weight_decay": wd},
                                           {"params": others, "weight_decay": 0.0}], **kwargs)
    traj = []
    for t, g in enumerate(grads):
        if lr_change is not None and t == lr_change[0]:
            for group in opt.param_groups:
                group["lr"] = lr_change[1]
        for k, p in params.items():
            p.grad = torch.from_numpy(g[k].copy())
        opt.step()
        traj.append({k.replace("/", "."): p.detach().numpy().copy() for k, p in params.items()})
    return traj


@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectory_matches_torch(backend, case):
    torch = pytest.importorskip("torch")
    cls, torch_cls, kwargs = CASES[case]
    net = make_net(backend)
    grads = gradient_sequence(net)
    change = (12, kwargs["lr"] * 0.5)          # a schedule changing lr mid-run is honoured
    expected = run_torch(torch, net, torch_cls, kwargs, grads, lr_change=change)
    got = run_ours(net, cls(**kwargs), grads, backend, lr_change=change)
    start = {k: B.to_numpy(v) for k, v in make_net(backend).state_arrays().items()}
    for t, (e, o) in enumerate(zip(expected, got)):
        assert sorted(e) == sorted(o)
        for k in e:
            np.testing.assert_allclose(o[k], e[k], rtol=1e-6, atol=1e-12, err_msg=f"{case} step {t + 1} {k}")
    # the parameters really moved, so the comparison is not vacuous
    assert all(not np.allclose(got[-1][k], start[k]) for k in start)


@pytest.mark.parametrize("case", ["sgd-nesterov-wd", "adagrad-wd", "rmsprop-all", "adam-amsgrad-wd", "adamw-wd"])
def test_float32_stays_float32(backend, case):
    torch = pytest.importorskip("torch")
    cls, torch_cls, kwargs = CASES[case]
    net = make_net(backend).astype("float32")
    grads = [{k: g.astype(np.float32) for k, g in step.items()} for step in gradient_sequence(net, steps=5)]
    expected = run_torch(torch, net, torch_cls, kwargs, grads)
    got = run_ours(net, cls(**kwargs), grads, backend)
    for _, layer, name in net.parameters():
        assert B.dtype_name(layer.params[name].dtype) == "float32"
    for k in expected[-1]:
        assert got[-1][k].dtype == np.float32
        np.testing.assert_allclose(got[-1][k], expected[-1][k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("cls,kwargs", [(SGD, dict(lr=0.1, weight_decay=0.5)),
                                        (Adagrad, dict(lr=0.1, weight_decay=0.5)),
                                        (RMSProp, dict(lr=0.01, weight_decay=0.5)),
                                        (Adam, dict(lr=0.01, weight_decay=0.5)),
                                        (AdamW, dict(lr=0.01, weight_decay=0.5))])
def test_weight_decay_skips_biases(backend, cls, kwargs):
    net_a, net_b = make_net(backend), make_net(backend)
    grads = gradient_sequence(net_a, steps=5)
    with_wd = run_ours(net_a, cls(**kwargs), grads, backend)[-1]
    without = run_ours(net_b, cls(**dict(kwargs, weight_decay=0.0)), grads, backend)[-1]
    for k in with_wd:
        if k.endswith(".b"):
            np.testing.assert_array_equal(with_wd[k], without[k])
        else:
            assert not np.allclose(with_wd[k], without[k])


def test_sgd_is_plain_gradient_descent(backend):
    net = make_net(backend)
    W0 = backend.numpy(net.layers[0].params["W"]).copy()
    g = gradient_sequence(net, steps=1)
    run_ours(net, SGD(lr=0.5), g, backend)
    np.testing.assert_allclose(backend.numpy(net.layers[0].params["W"]), W0 - 0.5 * g[0]["layers.0/W"], rtol=1e-12)


def test_update_is_in_place(backend):
    if backend.name == "array_api_strict":
        pytest.skip("array-api-strict gives no access to the buffer identity")
    net = make_net(backend)
    W = net.layers[0].params["W"]
    W0 = backend.numpy(W).copy()
    run_ours(net, Adam(lr=0.01), gradient_sequence(net, steps=2), backend)
    if backend.name == "jax":        # immutable: the update is a new array, stored back
        assert net.layers[0].params["W"] is not W
        assert not np.allclose(backend.numpy(net.layers[0].params["W"]), W0)
    else:
        assert net.layers[0].params["W"] is W


@pytest.mark.parametrize("case", ["sgd-nesterov-wd", "adagrad-options", "rmsprop-all", "adam-amsgrad-wd",
                                  "adamw-amsgrad"])
@pytest.mark.parametrize("via_host", [False, True])
def test_state_roundtrip_continues_identically(backend, case, via_host):
    cls, _, kwargs = CASES[case]
    grads = gradient_sequence(make_net(backend))
    net_a = make_net(backend)
    full = run_ours(net_a, cls(**kwargs), grads, backend)

    net_b = make_net(backend)
    opt = cls(**kwargs)
    run_ours(net_b, opt, grads[:10], backend)
    meta, arrays = opt.state_dict()
    assert meta["steps"] == 10 and arrays
    if via_host:      # as a file would: plain JSON values and host arrays
        import json

        meta = json.loads(json.dumps(meta))
        arrays = {k: B.to_numpy(v).copy() for k, v in arrays.items()}
    restored = optimizer_from_state(meta)
    assert type(restored) is cls and restored.get_config() == opt.get_config()
    restored.load_state_dict(meta, arrays, like=net_b.layers[0].params["W"])
    rest = run_ours(net_b, restored, grads[10:], backend)
    for k in full[-1]:
        np.testing.assert_allclose(rest[-1][k], full[-1][k], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("make", [lambda: SGD(lr=0), lambda: SGD(momentum=1.0), lambda: SGD(nesterov=True),
                                  lambda: SGD(momentum=0.9, nesterov=True, dampening=0.1),
                                  lambda: Adam(betas=(0.9, 1.0)), lambda: Adam(betas=0.9),
                                  lambda: Adam(eps=-1), lambda: AdamW(weight_decay=-0.1),
                                  lambda: RMSProp(alpha=1.5), lambda: RMSProp(momentum=-0.1),
                                  lambda: Adagrad(lr_decay=-1), lambda: Adagrad(lr=-0.1)])
def test_bad_hyperparameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_optimizers_train_a_small_regression():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4))
    y = np.sin(X @ np.array([1.0, -2.0, 0.5, 1.0]))[:, None]
    for opt in (SGD(lr=0.05, momentum=0.9, nesterov=True), Adagrad(lr=0.05), RMSProp(lr=0.005),
                Adam(lr=0.01), AdamW(lr=0.01)):
        net = Sequential(Linear(4, 16, dtype="float64"), Tanh(), Linear(16, 1, dtype="float64"))
        t = Trainer(net, loss=MSE(), optimizer=opt, batch_size=16, epochs=30, seed=0, progress=False)
        hist = t.fit(X, y)
        assert hist["loss"][-1] < 0.3 * hist["loss"][0], type(opt).__name__


# -- schedules -----------------------------------------------------------------------------

def torch_lrs(torch, make_sched, n, lr0=0.1, metrics=None):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr0)
    sched = make_sched(opt)
    out = []
    for t in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(metrics[t]) if metrics is not None else sched.step()
    return out


def test_step_exponential_inverse_time_vs_torch():
    torch = pytest.importorskip("torch")
    lrs = torch.optim.lr_scheduler
    n = 25
    cases = [(StepDecay(step_size=7, gamma=0.5, lr0=0.1), lambda o: lrs.StepLR(o, step_size=7, gamma=0.5)),
             (ExponentialDecay(gamma=0.9, lr0=0.1), lambda o: lrs.ExponentialLR(o, gamma=0.9)),
             (InverseTimeDecay(k=0.3, lr0=0.1), lambda o: lrs.LambdaLR(o, lambda t: 1.0 / (1.0 + 0.3 * t)))]
    for ours, theirs in cases:
        np.testing.assert_allclose([ours.lr_at(t) for t in range(n)], torch_lrs(torch, theirs, n), rtol=1e-12)
    assert InverseTimeDecay(k=0.5, lr0=0.2).lr_at(4) == pytest.approx(0.2 / 3)


def test_cosine_warmup_vs_torch():
    torch = pytest.importorskip("torch")
    lrs = torch.optim.lr_scheduler
    total, warmup, lr0, min_lr = 40, 5, 0.1, 0.001
    ours = CosineWarmup(total=total, warmup=warmup, lr0=lr0, min_lr=min_lr)

    def theirs(o):
        return lrs.SequentialLR(o, [lrs.LinearLR(o, start_factor=1 / (warmup + 1), total_iters=warmup),
                                    lrs.CosineAnnealingLR(o, T_max=total - warmup, eta_min=min_lr)],
                                milestones=[warmup])

    got = [ours.lr_at(t) for t in range(total + 1)]
    np.testing.assert_allclose(got, torch_lrs(torch, theirs, total + 1, lr0=lr0), rtol=1e-9)
    assert got[0] > 0 and got[warmup] == pytest.approx(lr0) and got[total] == pytest.approx(min_lr)
    assert ours.lr_at(total + 10) == pytest.approx(min_lr)
    assert all(a < b for a, b in zip(got[:warmup], got[1:warmup + 1]))
    assert all(a > b for a, b in zip(got[warmup:total], got[warmup + 1:total + 1]))


@pytest.mark.parametrize("kwargs", [dict(factor=0.5, patience=2),
                                    dict(factor=0.5, patience=1, cooldown=2, min_lr=0.02),
                                    dict(factor=0.3, patience=0, threshold=0.05, threshold_mode="abs"),
                                    dict(factor=0.5, patience=1, mode="max")])
def test_reduce_on_plateau_vs_torch(kwargs):
    torch = pytest.importorskip("torch")
    values = [1.0, 0.9, 0.95, 0.91, 0.92, 0.85, 0.86, 0.87, 0.88, 0.84, 0.841, 0.842, 0.9, 0.7, 0.71, 0.72,
              0.73, 0.74, 0.75, 0.76]
    ours = ReduceLROnPlateau(lr0=0.1, **kwargs)
    expected = torch_lrs(torch, lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **kwargs),
                         len(values), metrics=values)
    got = [ours.lr_at(t, values) for t in range(len(values))]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert min(got) < 0.1       # it did reduce


class RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_batch_end(self, trainer, step, logs):
        self.lrs.append(trainer.optimizer.lr)


def _fit(callbacks, epochs=4, validation=False):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    y = X @ np.array([[1.0], [-1.0], [0.5]])
    net = Sequential(Linear(3, 1, dtype="float64"))
    t = Trainer(net, loss=MSE(), optimizer=SGD(lr=0.05), batch_size=10, epochs=epochs, seed=0,
                progress=False, callbacks=callbacks)
    return t, t.fit(X, y, validation=(X[:10], y[:10]) if validation else None)


def test_schedules_drive_the_trainer():
    rec = RecordLR()
    step = StepDecay(step_size=2, gamma=0.5)
    t, hist = _fit([step, rec])
    assert step.lr0 == 0.05      # read from the optimizer
    assert hist["lr"] == [step.lr_at(e) for e in range(4)] == [0.05, 0.05, 0.025, 0.025]
    assert rec.lrs == [step.lr_at(s // 4) for s in range(16)]

    rec = RecordLR()
    cos = CosineWarmup(total=16, warmup=3)
    t, hist = _fit([cos, rec])
    assert t.global_step == 16
    assert rec.lrs == [cos.lr_at(s) for s in range(16)]

    plateau = ReduceLROnPlateau(factor=0.5, patience=0, threshold=10.0)   # nothing counts as better
    t, hist = _fit([plateau], validation=True)
    # history["lr"][e] is the rate epoch e trained with; each epoch's end halves it
    assert hist["lr"] == [plateau.lr_at(e) for e in range(4)] == [0.05, 0.025, 0.0125, 0.00625]
    assert t.optimizer.lr == plateau.lr_at(4) == 0.003125


def test_plateau_needs_the_monitored_value():
    with pytest.raises(ValueError, match="val_loss"):
        _fit([ReduceLROnPlateau()])


@pytest.mark.parametrize("make", [lambda: StepDecay(step_size=0), lambda: ExponentialDecay(gamma=0),
                                  lambda: InverseTimeDecay(k=-1), lambda: CosineWarmup(total=10, warmup=10),
                                  lambda: ReduceLROnPlateau(factor=1.5), lambda: ReduceLROnPlateau(mode="up"),
                                  lambda: StepDecay(step_size=2, per="batch")])
def test_bad_schedules_raise(make):
    with pytest.raises(ValueError):
        make()


def test_lr_at_without_lr0_raises():
    with pytest.raises(ValueError, match="lr0"):
        StepDecay(step_size=2).lr_at(3)


@pytest.mark.parametrize("case", ["adam", "adam-wd", "adam-amsgrad", "adam-amsgrad-wd", "adam-eps", "adamw-wd",
                                  "adamw-amsgrad"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 2e-6)])
def test_numpy_adam_fast_path_equals_portable(case, dtype, rtol, monkeypatch):
    """The in-place NumPy Adam (xpdnn.kernels.cpu.adam_step_) against the portable update."""
    from xpdnn.kernels import cpu

    cls, _, kwargs = CASES[case]
    from conftest import Backend

    numpy_backend = Backend("numpy")
    grads = gradient_sequence(make_net(numpy_backend), steps=12)
    grads = [{k: g.astype(dtype) for k, g in step.items()} for step in grads]
    calls = []
    real = cpu.adam_step_
    monkeypatch.setattr(cpu, "adam_step_", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = run_ours(make_net(numpy_backend).astype(dtype), cls(**kwargs), grads, numpy_backend)
    assert calls
    monkeypatch.setattr(cpu, "handles", lambda *a: False)
    portable = run_ours(make_net(numpy_backend).astype(dtype), cls(**kwargs), grads, numpy_backend)
    for t, (a, b) in enumerate(zip(fast, portable)):
        for k in a:
            assert a[k].dtype == np.dtype(dtype)
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=rtol * 1e-3, err_msg=f"step {t + 1} {k}")


def test_load_state_dict_copies_so_in_place_updates_stay_private():
    from conftest import Backend

    numpy_backend = Backend("numpy")
    net = make_net(numpy_backend)
    grads = gradient_sequence(net, steps=3)
    a = Adam(lr=0.01)
    run_ours(net, a, grads[:2], numpy_backend)
    meta, arrays = a.state_dict()
    before = {k: v.copy() for k, v in arrays.items()}
    b = Adam(lr=0.01)
    b.load_state_dict(meta, arrays)
    run_ours(make_net(numpy_backend), b, grads[2:], numpy_backend)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)        # a's state untouched by b's step
