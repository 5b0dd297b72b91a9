"""Properties of xpdnn.optim that its mutation run found unasserted (issue 16, tests/MUTATION.md):
ReduceLROnPlateau equals PyTorch's rule in every mode at its boundaries, schedules keep their
``per`` and their saved state, refusals name the hyperparameter, and optimizer states are
checked in full."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import xpdnn as xd
from xpdnn.optim.schedules import ExponentialDecay, InverseTimeDecay, ReduceLROnPlateau, Schedule, StepDecay

torch = pytest.importorskip("torch")


def torch_plateau_lrs(values, lr0, **kwargs):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    out = []
    for v in values:
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(v)
    out.append(opt.param_groups[0]["lr"])
    return out


# values with exact ties, improvements of exactly the threshold (0.25 = 1.0 * 0.25 relative, or
# absolute) and just beyond, in both directions; dyadic numbers, so the boundaries are exact
PLATEAU_VALUES = [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.5, 0.25, 1.0, 1.25, 1.25, 1.5, 1.875, 1.875, 2.5, 2.5, 2.5,
                  0.5, 0.5, 3.5, 3.5, 3.5, 3.5]


@pytest.mark.parametrize("mode, threshold_mode, threshold",
                         [("min", "rel", 0.25), ("min", "abs", 0.25), ("max", "rel", 0.25), ("max", "abs", 0.25),
                          ("min", "rel", 0.0), ("max", "abs", 0.0)])
@pytest.mark.parametrize("patience, cooldown", [(0, 0), (1, 0), (0, 2), (1, 3)])
def test_reduce_on_plateau_is_torchs_rule_at_every_boundary(mode, threshold_mode, threshold, patience, cooldown):
    kwargs = dict(mode=mode, threshold_mode=threshold_mode, threshold=threshold, patience=patience,
                  cooldown=cooldown, factor=0.5)
    ours = ReduceLROnPlateau(lr0=0.5, **kwargs)
    expected = torch_plateau_lrs(PLATEAU_VALUES, 0.5, **kwargs)
    got = [ours.lr_at(t, PLATEAU_VALUES) for t in range(len(PLATEAU_VALUES) + 1)]
    assert got == expected


@pytest.mark.parametrize("lr0, factor, min_lr", [(2e-8, 0.5, 0.0), (4e-8, 0.75, 0.0), (1e-9, 0.1, 0.0),
                                                 (0.1, 0.5, 0.03)])
def test_reduce_on_plateau_skips_reductions_of_at_most_1e_8_as_torch(lr0, factor, min_lr):
    """PyTorch changes the rate only when it drops by more than 1e-8 (2e-8 * 0.5 drops by
    exactly 1e-8: no change); min_lr bounds it."""
    values = [1.0] * 12
    kwargs = dict(factor=factor, patience=0, min_lr=min_lr)
    ours = ReduceLROnPlateau(lr0=lr0, **kwargs)
    assert [ours.lr_at(t, values) for t in range(13)] == torch_plateau_lrs(values, lr0, **kwargs)


def test_reduce_on_plateau_lr_at_bounds_and_fresh_state():
    p = ReduceLROnPlateau(lr0=0.25)
    assert p.values == [] and p.lr_at(0) == 0.25
    with pytest.raises(ValueError, match=r"^lr_at\(3\) needs the monitored values of epochs 0\.\.2, got 1$"):
        p.lr_at(3, [1.0])
    with pytest.raises(ValueError, match=r"^lr_at\(-1\) needs"):
        p.lr_at(-1, [1.0])


class _FakeOptimizer:
    lr = 0.5


class _FakeTrainer:
    def __init__(self, epoch=0, step=0):
        self.optimizer, self.epoch, self.global_step = _FakeOptimizer(), epoch, step


def test_reduce_on_plateau_forgets_its_values_only_on_a_fresh_run():
    p = ReduceLROnPlateau(factor=0.5, patience=0)
    t = _FakeTrainer(epoch=0)
    p.on_train_begin(t)
    for e, v in enumerate([1.0, 2.0, 3.0]):
        p.on_epoch_end(t, e, {"val_loss": v})
    assert p.values == [1.0, 2.0, 3.0] and t.optimizer.lr == 0.125
    p.on_train_begin(_FakeTrainer(epoch=3))          # a continued run keeps them
    assert p.values == [1.0, 2.0, 3.0]
    p.on_train_begin(_FakeTrainer(epoch=1))          # so does one resumed after its first epoch
    assert p.values == [1.0, 2.0, 3.0]
    p.on_train_begin(_FakeTrainer(epoch=0))          # a fresh run starts over
    assert p.values == []


def test_reduce_on_plateau_state_round_trip_and_refusals():
    p = ReduceLROnPlateau(lr0=0.3)
    p.values = [1.0, 0.5]
    meta, arrays = p.state_dict()
    q = ReduceLROnPlateau()
    q.load_state_dict(meta, arrays)
    assert q.lr0 == 0.3 and q.values == [1.0, 0.5]
    q.load_state_dict({"lr0": 0.2}, {})              # no values saved: none seen
    assert q.lr0 == 0.2 and q.values == []
    with pytest.raises(ValueError, match="keeps no arrays"):
        q.load_state_dict(meta, {"x": np.zeros(1)})
    with pytest.raises(ValueError, match=r"^ReduceLROnPlateau state: values must be a list of numbers, got \['a'\]$"):
        q.load_state_dict({"lr0": 0.1, "values": ["a"]}, {})
    with pytest.raises(ValueError, match="^ReduceLROnPlateau state: a value does not fit a float$"):
        q.load_state_dict({"lr0": 0.1, "values": [10 ** 400]}, {})
    long = {"lr0": 0.1, "values": ["x" * 500]}
    with pytest.raises(ValueError) as info:
        q.load_state_dict(long, {})
    assert len(str(info.value)) == 300
    assert q.lr0 == 0.2 and q.values == []           # nothing changed by the refusals


@pytest.mark.parametrize("make", [lambda per: StepDecay(3, lr0=1.0, per=per),
                                  lambda per: ExponentialDecay(0.5, lr0=1.0, per=per),
                                  lambda per: InverseTimeDecay(1.0, lr0=1.0, per=per)],
                         ids=["StepDecay", "ExponentialDecay", "InverseTimeDecay"])
def test_schedules_per_step_follow_the_global_step_only(make):
    s = make("step")
    assert s.per == "step"
    t = _FakeTrainer(epoch=5, step=7)
    s.on_epoch_begin(t, 5)
    assert t.optimizer.lr == 0.5                    # untouched at an epoch's start
    s.on_batch_begin(t, 0)
    assert t.optimizer.lr == s.lr_at(7) != s.lr_at(5)
    e = make("epoch")
    t = _FakeTrainer(epoch=5, step=7)
    e.on_batch_begin(t, 0)
    assert t.optimizer.lr == 0.5
    e.on_epoch_begin(t, 5)
    assert t.optimizer.lr == e.lr_at(5)


@pytest.mark.parametrize("make, name", [
    (lambda: ExponentialDecay(0.0), "gamma must be > 0"),
    (lambda: StepDecay(2, gamma=-1.0), "gamma must be > 0"),
    (lambda: InverseTimeDecay(-0.5), "k must be >= 0"),
    (lambda: ReduceLROnPlateau(monitor=3), "monitor must be the name of a logged value, got 3"),
    (lambda: ReduceLROnPlateau(factor="x"), "factor must be a finite number"),
    (lambda: ReduceLROnPlateau(factor=1.0), "factor must be in \\(0, 1\\), got 1.0"),
    (lambda: ReduceLROnPlateau(patience=-1), "patience must be >= 0"),
    (lambda: ReduceLROnPlateau(cooldown=-1), "cooldown must be >= 0"),
    (lambda: ReduceLROnPlateau(mode="up"), "mode must be 'min' or 'max', got 'up'"),
    (lambda: ReduceLROnPlateau(threshold_mode="relative"), "threshold_mode must be 'rel' or 'abs', got 'relative'"),
    (lambda: ReduceLROnPlateau(threshold_mode=1), "threshold_mode must be 'rel' or 'abs', got 1"),
    (lambda: ReduceLROnPlateau(min_lr=-1.0), "min_lr must be >= 0"),
    (lambda: ReduceLROnPlateau(threshold=-1.0), "threshold must be >= 0"),
])
def test_schedule_refusals_name_the_hyperparameter(make, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        make()


# -- optimizers ------------------------------------------------------------------------------------

def _one_step_state(opt):
    net = xd.Sequential(xd.Linear(3, 2, dtype="float64"))
    net.layers[0].grads["W"] = np.ones((2, 3))
    net.layers[0].grads["b"] = np.ones(2)
    opt.step(net)
    return net, opt.state_dict()


@pytest.mark.parametrize("kwargs", [{}, {"centered": True}, {"momentum": 0.5}, {"centered": True, "momentum": 0.5}])
def test_rmsprop_keeps_exactly_torchs_state_slots(kwargs):
    _, (meta, arrays) = _one_step_state(xd.RMSProp(**kwargs))
    p = torch.zeros(3, requires_grad=True)
    ref = torch.optim.RMSprop([p], **kwargs)
    p.grad = torch.ones(3)
    ref.step()
    expected = set(ref.state[p]) - {"step"}
    assert {name.rsplit("/", 1)[1] for name in arrays} == expected
    assert set(xd.RMSProp(**kwargs).slots()) == expected


def test_a_shown_value_is_cut_to_80_characters():
    for text, shown in (("a" * 78, repr("a" * 78)), ("a" * 79, repr("a" * 79)[:77] + "...")):
        assert len(shown) == 80
        with pytest.raises(ValueError) as info:
            xd.SGD(lr=text)
        assert str(info.value) == f"lr (the learning rate) must be a finite number, got {shown}"


@pytest.mark.parametrize("make, message", [
    (lambda: xd.Adagrad(lr_decay=-1.0), "lr_decay must be >= 0"),
    (lambda: xd.Adagrad(weight_decay=-1.0), "weight_decay must be >= 0"),
    (lambda: xd.Adagrad(initial_accumulator_value=-1.0), "initial_accumulator_value must be >= 0"),
    (lambda: xd.Adagrad(eps=-1.0), "eps must be >= 0"),
    (lambda: xd.RMSProp(alpha=1.0), "alpha must be in \\[0, 1\\)"),
    (lambda: xd.RMSProp(eps=-1.0), "eps must be >= 0"),
    (lambda: xd.RMSProp(weight_decay=-1.0), "weight_decay must be >= 0"),
    (lambda: xd.RMSProp(momentum=1.0), "momentum must be in \\[0, 1\\)"),
    (lambda: xd.RMSProp(centered=2), "centered must be True or False"),
    (lambda: xd.Adam(betas=(1.0, 0.9)), "betas\\[0\\] must be in \\[0, 1\\)"),
    (lambda: xd.Adam(betas=(0.9, 1.0)), "betas\\[1\\] must be in \\[0, 1\\)"),
    (lambda: xd.Adam(eps=-1.0), "eps must be >= 0"),
    (lambda: xd.Adam(weight_decay=-1.0), "weight_decay must be >= 0"),
    (lambda: xd.Adam(amsgrad=2), "amsgrad must be True or False"),
    (lambda: xd.SGD(momentum=1.0), "momentum must be in \\[0, 1\\)"),
    (lambda: xd.SGD(weight_decay=-1.0), "weight_decay must be >= 0"),
    (lambda: xd.SGD(dampening=1.5), "dampening must be in \\[0, 1\\]"),
    (lambda: xd.SGD(nesterov=2), "nesterov must be True or False"),
    (lambda: xd.SGD(nesterov=True), "nesterov momentum needs momentum > 0 and dampening = 0$"),
    (lambda: xd.SGD(momentum=0.5, dampening=0.1, nesterov=True), "nesterov momentum needs momentum > 0 and dampening = 0$"),
    (lambda: xd.SGD(lr=0.0), "lr \\(the learning rate\\) must be > 0"),
    (lambda: StepDecay(0), "step_size must be >= 1"),
    (lambda: StepDecay(2.5), "step_size must be an integer, got 2.5$"),
    (lambda: StepDecay(True), "step_size must be an integer, got True$"),
    (lambda: xd.CosineWarmup(0), "total must be >= 1"),
    (lambda: xd.CosineWarmup(5, warmup=1.5), "warmup must be an integer"),
    (lambda: xd.CosineWarmup(5, warmup=5), "warmup must be in \\[0, total=5\\), got 5"),
    (lambda: xd.CosineWarmup(5, min_lr=-1.0), "min_lr must be >= 0"),
    (lambda: StepDecay(2, lr0=0.0), "lr0 must be > 0"),
])
def test_optimizer_and_schedule_refusals_name_the_hyperparameter(make, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        make()


def test_cosine_warmup_defaults_start_at_lr0_and_end_at_0():
    """No warmup and min_lr 0 by default (PyTorch's CosineAnnealingLR eta_min)."""
    s = xd.CosineWarmup(10, lr0=1.0)
    assert s.lr_at(0) == 1.0 and s.lr_at(10) == 0.0 and s.lr_at(5) == pytest.approx(0.5)


# -- saved optimizer states ------------------------------------------------------------------------

def _saved_sgd():
    opt = xd.SGD(lr=0.1, momentum=0.9)
    net, (meta, arrays) = _one_step_state(opt)
    shapes = {"layers.0/W": (2, 3), "layers.0/b": (2,)}
    return meta, {k: np.asarray(v).copy() for k, v in arrays.items()}, shapes


def _drop(d, key):
    return {k: v for k, v in d.items() if k != key}


STATE_REFUSALS = [
    ("not a dict", lambda m, a: ([m], a), "^optimizer state must be a JSON object, got list$"),
    ("another type", lambda m, a: ({**m, "type": "Adam"}, a),
     "^the saved optimizer state is for 'Adam', this optimizer is a SGD$"),
    ("no steps", lambda m, a: (_drop(m, "steps"), a), "^optimizer state has no 'steps'$"),
    ("no lr", lambda m, a: (_drop(m, "lr"), a), "^optimizer state has no 'lr'$"),
    ("negative steps", lambda m, a: ({**m, "steps": -1}, a), "^optimizer steps must be >= 0, got -1$"),
    ("steps 2**63", lambda m, a: ({**m, "steps": 2 ** 63}, a), f"^optimizer steps must be < {2 ** 63}, got {2 ** 63}$"),
    ("fractional steps", lambda m, a: ({**m, "steps": 1.5}, a), "^optimizer steps must be an integer, got 1.5$"),
    ("negative lr", lambda m, a: ({**m, "lr": -0.5}, a), "^optimizer lr must be >= 0, got -0.5$"),
    ("arrays not a dict", lambda m, a: (m, list(a.values())), "^optimizer arrays must be a dict$"),
    ("short name", lambda m, a: (m, {"W/velocity": a["layers.0/W/velocity"]}),
     "^optimizer tensor 'W/velocity' is not named <path>/<parameter>/<slot>$"),
    ("unknown slot", lambda m, a: (m, {**a, "layers.0/W/exp_avg": a["layers.0/W/velocity"]}),
     "^optimizer tensor 'layers.0/W/exp_avg': unknown slot 'exp_avg' for SGD with this configuration "
     "\\(slots: \\['velocity'\\]\\)$"),
    ("integer tensor", lambda m, a: (m, {**a, "layers.0/b/velocity": np.zeros(2, dtype=np.int64)}),
     "^optimizer tensor 'layers.0/b/velocity' has dtype int64, not floating point$"),
    ("no such parameter", lambda m, a: (m, {**a, "layers.1/W/velocity": a["layers.0/W/velocity"]}),
     "^optimizer tensor 'layers.1/W/velocity': no parameter 'layers.1/W' in the network$"),
    ("wrong shape", lambda m, a: (m, {**a, "layers.0/b/velocity": np.zeros(3)}),
     "^optimizer tensor 'layers.0/b/velocity' has shape \\(3,\\), the parameter 'layers.0/b' has \\(2,\\)$"),
    ("NaN", lambda m, a: (m, {**a, "layers.0/b/velocity": np.array([0.0, np.nan])}),
     "^optimizer tensor 'layers.0/b/velocity' contains NaN or Inf$"),
]


@pytest.mark.parametrize("name, spoil, message", STATE_REFUSALS, ids=[c[0] for c in STATE_REFUSALS])
def test_a_spoiled_optimizer_state_is_refused_naming_the_problem(name, spoil, message):
    meta, arrays, shapes = _saved_sgd()
    opt = xd.SGD(lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(*spoil(meta, arrays), shapes=shapes)
    assert opt.state == {} and opt.steps == 0 and opt.lr == 0.1


def test_optimizer_state_slots_must_come_together_with_one_shape():
    meta, arrays, _ = _saved_sgd()
    opt = xd.Adam()
    m = {**meta, "type": "Adam"}
    with pytest.raises(ValueError, match=r"^optimizer state of 'layers.0/W' lacks slot\(s\) \['exp_avg_sq'\]$"):
        opt.check_state(m, {"layers.0/W/exp_avg": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="^optimizer state of 'layers.0/W': slots of different shapes$"):
        opt.check_state(m, {"layers.0/W/exp_avg": np.zeros((2, 3)), "layers.0/W/exp_avg_sq": np.zeros((3, 2))})


def test_optimizer_state_accepts_integral_float_steps_and_the_largest_count():
    meta, arrays, shapes = _saved_sgd()
    opt = xd.SGD(lr=0.1, momentum=0.9)
    steps, lr, _ = opt.check_state({**meta, "steps": 7.0, "lr": 0}, arrays, shapes)
    assert steps == 7 and type(steps) is int and lr == 0.0
    assert opt.check_state({**meta, "steps": 2 ** 63 - 1}, arrays, shapes)[0] == 2 ** 63 - 1
    assert StepDecay(step_size=2.0).step_size == 2


@pytest.mark.parametrize("meta, message", [
    ([], "^optimizer metadata must be a JSON object, got list$"),
    ({"type": ["SGD"]}, "^unknown optimizer \\['SGD'\\]$"),
    ({"type": "Nope"}, "^unknown optimizer 'Nope'$"),
    ({"type": "SGD", "config": None}, "^SGD configuration must be a JSON object, got None$"),
    ({"type": "SGD", "config": {1: 2}}, "^SGD configuration must be a JSON object, got \\{1: 2\\}$"),
    ({"type": "SGD", "config": {"nope": 1}}, "^SGD configuration is invalid \\(.*nope.*\\)$"),
    ({"type": "SGD", "config": {"x" * 400: 1, 1: 1}}, "^SGD configuration must be a JSON object"),
])
def test_optimizer_from_state_refusals(meta, message):
    from xpdnn.optim.base import optimizer_from_state

    with pytest.raises(ValueError, match=message) as info:
        optimizer_from_state(meta)
    assert len(str(info.value)) <= 300
    if "x" * 400 in str(meta):                   # a long configuration is cut to 300 characters
        assert len(str(info.value)) == 300


def test_schedule_state_checks_name_the_schedule():
    s = StepDecay(2, lr0=0.5)
    s.load_state_dict({"lr0": None}, {})            # saved before training began: no base rate yet
    assert s.lr0 is None
    s.load_state_dict({"lr0": 0.25}, {})
    assert s.lr0 == 0.25
    for state, arrays, message in [
            ([0.1], {}, "^StepDecay state must be a JSON object, got list$"),
            ({"lr0": 0.1}, {k: np.zeros(1) for k in "dcba"}, r"^StepDecay keeps no arrays, the state has \['a', 'b', 'c'\]$"),
            ({"lr0": -0.1}, {}, "^lr0 must be >= 0, got -0.1$")]:
        with pytest.raises(ValueError, match=message):
            s.load_state_dict(state, arrays)
    assert s.lr0 == 0.25
    with pytest.raises(ValueError, match="^per must be one of \\('epoch', 'step'\\), got 'batch'$"):
        StepDecay(2, per="batch")
    with pytest.raises(ValueError, match="^ExponentialDecay has no lr0 yet: pass lr0= or start training first$"):
        ExponentialDecay(0.5).lr_at(1)


def test_a_user_schedule_runs_per_epoch_by_default():
    class Halve(Schedule):
        def __init__(self, lr0=None):
            super().__init__(lr0)

        def lr_at(self, t):
            return self._base() / 2 ** t

    s = Halve(lr0=1.0)
    assert s.per == "epoch"
    t = _FakeTrainer(epoch=2, step=9)
    s.on_epoch_begin(t, 2)
    assert t.optimizer.lr == 0.25


def test_sgd_without_momentum_keeps_no_state():
    opt = xd.SGD(lr=0.1)
    _, (meta, arrays) = _one_step_state(opt)
    assert opt.slots() == () and arrays == {}
    with pytest.raises(ValueError, match="unknown slot 'velocity' for SGD"):
        opt.check_state(meta, {"layers.0/W/velocity": np.zeros((2, 3))})


@pytest.mark.parametrize("kwargs", [dict(lr=0.1), dict(lr=0.1, weight_decay=0.5), dict(lr=0.1, momentum=0.9),
                                    dict(lr=0.1, momentum=0.9, weight_decay=0.5)])
@pytest.mark.parametrize("decay", [True, False])
def test_sgd_fused_update_takes_numpy_arrays_and_equals_the_plain_update(kwargs, decay):
    """``fused_update`` (the update inside backprop, gradient ``dY.T @ X`` never stored) runs on
    NumPy arrays, reports it, and gives the plain update's weights over two steps (the second
    uses the velocity); weight decay only where ``decay`` says."""
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((3, 4))
    fused, plain = xd.SGD(**kwargs), xd.SGD(**kwargs)
    Wf, Wp = W0.copy(), W0.copy()
    for _ in range(2):
        dY, X = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
        assert fused.fused_update("layers.0/W", Wf, dY, X, decay=decay) is True
        Wp = plain.update("layers.0/W", Wp, dY.T @ X, decay=decay)
        np.testing.assert_allclose(Wf, Wp, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9, nesterov=True), dict(momentum=0.9, dampening=0.5)])
def test_sgd_fused_update_declines_what_it_cannot_fuse(kwargs):
    W = np.ones((3, 4))
    opt = xd.SGD(lr=0.1, **kwargs)
    assert opt.fused_update("layers.0/W", W, np.ones((5, 3)), np.ones((5, 4)), decay=True) is False
    assert (W == 1).all() and opt.state == {}
    f32 = np.ones((3, 4), dtype=np.float32)
    assert xd.SGD(lr=0.1).fused_update("k", f32, torch.ones(5, 3), torch.ones(5, 4), decay=True) is False


@pytest.mark.parametrize("odd", ["W", "dY", "X"])
def test_sgd_fuses_only_when_every_array_is_numpy(odd):
    arrays = {"W": np.ones((3, 4)), "dY": np.ones((5, 3)), "X": np.ones((5, 4))}
    arrays[odd] = torch.from_numpy(arrays[odd])
    opt = xd.SGD(lr=0.1, momentum=0.9)
    assert opt.fused_update("layers.0/W", arrays["W"], arrays["dY"], arrays["X"], decay=True) is False
    assert opt.state == {}


def test_sgd_default_learning_rate_is_0_01():
    """The signature's documented default (PyTorch's SGD has 1e-3)."""
    W = xd.SGD().update("k", np.zeros(3), np.ones(3), decay=False)
    np.testing.assert_array_equal(W, [-0.01] * 3)


def test_an_optimizer_reused_for_parameters_of_another_shape_or_dtype_stays_exact():
    """The work buffers of an update follow the parameter: an optimizer without state reused for
    a network whose parameter at the same path has another shape or dtype updates it exactly."""
    opt = xd.SGD(lr=0.5)
    for W, g in ((np.zeros(3, dtype=np.float32), np.ones(3, dtype=np.float32)),
                 (np.zeros(3), np.full(3, 1 / 3)),
                 (np.zeros(4), np.full(4, 1 / 3)),
                 (np.zeros((2, 2)), np.full((2, 2), 0.1))):
        expected = W - 0.5 * g
        W = opt.update("layers.0/W", W, g, decay=False)
        assert W.dtype == g.dtype
        np.testing.assert_array_equal(W, expected)


def test_hyperparameter_checks_accept_their_ranges_and_quote_the_value():
    from xpdnn.optim.base import flag, in_unit, integer, nonnegative, positive, real

    assert real("a", 2) == 2.0 and positive("a", 1e-300) == 1e-300 and nonnegative("a", 0) == 0.0
    assert in_unit("a", 0.0) == 0.0 and in_unit("a", 1.0, closed=True) == 1.0
    assert integer("a", 3.0) == 3 and integer("a", 4, low=4, high=5) == 4 and integer("a", np.int64(2)) == 2
    assert flag("a", 0) is False and flag("a", 1) is True and flag("a", np.bool_(True)) is True
    for call, message in [
            (lambda: real("a", True), "a must be a finite number, got True"),
            (lambda: real("a", "1"), "a must be a finite number, got '1'"),
            (lambda: real("a", [1]), "a must be a finite number, got \\[1\\]"),
            (lambda: real("a", 10 ** 400), "a must be a finite number, got 1000000"),
            (lambda: real("a", float("nan")), "a must be a finite number, got nan"),
            (lambda: positive("a", 0), "a must be > 0, got 0"),
            (lambda: nonnegative("a", -1), "a must be >= 0, got -1"),
            (lambda: in_unit("a", 1.0), "a must be in \\[0, 1\\), got 1.0"),
            (lambda: in_unit("a", 1.5, closed=True), "a must be in \\[0, 1\\], got 1.5"),
            (lambda: integer("a", 5, high=5), "a must be < 5, got 5"),
            (lambda: integer("a", -1, low=0), "a must be >= 0, got -1"),
            (lambda: integer("a", "3"), "a must be an integer, got '3'"),
            (lambda: flag("a", 2), "a must be True or False, got 2")]:
        with pytest.raises(ValueError, match=f"^{message}"):
            call()
