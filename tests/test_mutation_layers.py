"""Properties of xpdnn.layers that its mutation run found unasserted (tests/MUTATION.md): the
state a saved architecture declares agrees with the layer it builds; dense layers' configs
round-trip whatever their initializer; the functional activations and their backward passes,
called with their defaults, equal PyTorch's; Box-Muller Gaussian noise as documented; the layer
protocol's evaluation default; and the full text of refusals and reprs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import init as initializers
from xpdnn.layers.base import layer_from_config, layer_to_config, state_shapes
from xpdnn.layers.reparam import CosineLinear, WeightNormLinear
from xpdnn.layers.smooth import GELU, SiLU, gelu, silu

torch = pytest.importorskip("torch")


# -- state_shapes reads a HierarchicalSoftmax config as the constructor does --------------------

def _hs_spec(n_in, n_classes):
    return {"type": "HierarchicalSoftmax",
            "config": {"n_in": n_in, "n_classes": n_classes, "dtype": "float32"}}


def test_hierarchical_softmax_state_shapes_at_the_smallest_class_count():
    """Two classes (one inner node, a logistic regression; Morin & Bengio, 2005) is the smallest
    tree: the shapes read from the config are those of the built layer, W (1, n_in), b (1,)."""
    layer = xd.HierarchicalSoftmax(5, 2)
    want = {k: tuple(v.shape) for k, v in layer.state_arrays().items()}
    got = {n: shape for _, n, _, shape in state_shapes(layer_to_config(layer))}
    assert got == want == {"W": (1, 5), "b": (1,)}
    assert state_shapes(_hs_spec(5, 2)) == [("", "W", "param", (1, 5)), ("", "b", "param", (1,))]


@pytest.mark.parametrize("n_classes", [1, 0])
def test_hierarchical_softmax_state_shapes_refuse_fewer_than_two_classes(n_classes):
    """A tree over fewer than two classes has no inner node: the constructor refuses it, and so
    does reading the config of a saved file, with a message naming the field and its bound."""
    with pytest.raises(ValueError, match="at least 2 classes"):
        xd.HierarchicalSoftmax(5, n_classes)
    with pytest.raises(ValueError, match=rf"^HierarchicalSoftmax config: n_classes must be >= 2, got {n_classes}$"):
        state_shapes(_hs_spec(5, n_classes))


# -- WeightNormLinear / CosineLinear configs round-trip ------------------------------------------

REPARAM = {"WeightNormLinear": WeightNormLinear, "CosineLinear": CosineLinear}
# every layer with an ``init`` argument
DENSE = {**REPARAM, "Linear": xd.Linear, "DropConnect": xd.DropConnect, "Maxout": xd.Maxout}


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_config_keeps_a_named_initializer(name):
    """``init`` names an initializer of xpdnn.init (Glorot & Bengio, 2010 here): the config keeps
    the name, so the rebuilt layer draws the same weights and computes the same outputs."""
    layer = DENSE[name](4, 3, init="glorot_uniform", seed=7, dtype="float64")
    config = layer.get_config()
    assert config["init"] == "glorot_uniform"
    rebuilt = layer_from_config(json.loads(json.dumps(layer_to_config(layer))))
    assert rebuilt.init == "glorot_uniform" and rebuilt.get_config() == config
    for k in layer.params:
        np.testing.assert_array_equal(rebuilt.params[k], layer.params[k])
    # the name matters: the default He draw differs
    he = DENSE[name](4, 3, seed=7, dtype="float64")
    assert any(not np.allclose(he.params[k], layer.params[k]) for k in layer.params)
    X = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_array_equal(rebuilt(X), layer(X))


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_config_of_a_callable_initializer_is_json_and_rebuilds(name):
    """A callable ``f(rng, n_in, n_out)`` cannot be written to JSON: the config names the default
    initializer, ``"he"`` (He et al., 2015), so the architecture can be saved and rebuilt."""
    layer = DENSE[name](4, 3, init=initializers.glorot_normal, seed=1)
    config = layer.get_config()
    assert config["init"] == "he"
    text = json.dumps(layer_to_config(layer))           # plain JSON values only
    rebuilt = layer_from_config(json.loads(text))
    assert type(rebuilt) is type(layer) and rebuilt.init == "he"
    assert rebuilt.get_config() == config


# -- the functional GELU and SiLU ------------------------------------------------------------

def test_functional_gelu_and_silu_match_torch_and_the_layers(backend):
    """``gelu(X) = X Phi(X)`` (torch.nn.functional.gelu, approximate='none') and ``silu(X) =
    X sigmoid(X)`` (torch.nn.functional.silu), the same values the GELU and SiLU layers output."""
    x = np.concatenate([np.linspace(-6.0, 6.0, 121), [-30.0, -1e-8, 0.0, 1e-8, 30.0]])
    X = backend.asarray(x)
    t = torch.from_numpy(x)
    for fn, layer, ref in ((gelu, GELU(dtype="float64"), torch.nn.functional.gelu),
                           (silu, SiLU(dtype="float64"), torch.nn.functional.silu)):
        got = backend.numpy(fn(X))
        np.testing.assert_array_equal(got, backend.numpy(layer(X)))
        np.testing.assert_allclose(got, ref(t).numpy(), rtol=backend.libm_rtol(1e-13), atol=1e-15)


def test_functional_silu_and_gelu_backward_without_the_kept_forward_value(backend):
    """``silu_backward(dY, X)`` / ``gelu_backward(dY, X)`` recompute sigmoid(X) / Phi(X) when
    the forward pass kept nothing: the same input gradient as torch.autograd's, and as passing
    the kept value."""
    from xpdnn.layers.activations import sigmoid
    from xpdnn.layers.smooth import gelu_backward, normal_cdf, silu_backward

    rng = np.random.default_rng(3)
    x = np.concatenate([np.linspace(-8.0, 8.0, 33), [0.0]])
    dy = rng.standard_normal(x.shape)
    X, dY = backend.asarray(x), backend.asarray(dy)
    for fn, kept, ref in ((silu_backward, sigmoid, torch.nn.functional.silu),
                          (gelu_backward, normal_cdf, torch.nn.functional.gelu)):
        t = torch.from_numpy(x.copy()).requires_grad_(True)
        ref(t).backward(torch.from_numpy(dy))
        got = backend.numpy(fn(dY, X))
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=backend.libm_rtol(1e-12), atol=1e-15)
        np.testing.assert_array_equal(got, backend.numpy(fn(dY, X, kept(X))))


# -- Layer.__call__ is the evaluation-mode forward -----------------------------------------------

def test_call_passes_train_false_to_a_forward_that_requires_it():
    """The protocol is ``layer.forward(X, train=..., rng=...)``; ``layer(X)`` is the evaluation
    output, so it passes ``train=False`` itself (a bool, as annotated) rather than relying on a
    subclass's default; a layer whose ``forward`` declares no default still works."""
    from xpdnn.layers.base import LAYERS, Layer

    seen = []

    class _TrainRequired(Layer):
        def forward(self, X, *, train, rng=None):
            seen.append(train)
            return (X * 2.0 if train is False else X), (lambda dY: dY)

    try:
        X = np.arange(3.0)
        np.testing.assert_array_equal(_TrainRequired()(X), 2.0 * X)
        assert len(seen) == 1 and seen[0] is False
    finally:
        LAYERS.pop("_TrainRequired", None)


# -- the functional ELU's defaults ------------------------------------------------------------

def test_functional_elu_defaults_match_torch(backend):
    """``elu(X)`` and ``elu_backward(dY, X)`` default to ``alpha=1.0``, torch.nn.functional.elu's
    default (Clevert et al., 2016): the same values and the same input gradient."""
    from xpdnn.layers.rectifiers import elu, elu_backward

    rng = np.random.default_rng(4)
    x = np.concatenate([np.linspace(-5.0, 5.0, 21), [-1e-9, 0.0, 1e-9]])
    dy = rng.standard_normal(x.shape)
    X, dY = backend.asarray(x), backend.asarray(dy)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    y = torch.nn.functional.elu(t)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(backend.numpy(elu(X)), y.detach().numpy(), rtol=backend.libm_rtol(1e-14), atol=1e-16)
    np.testing.assert_allclose(backend.numpy(elu_backward(dY, X)), t.grad.numpy(),
                               rtol=backend.libm_rtol(1e-14), atol=1e-16)


# -- what Sequential refuses, in full ----------------------------------------------------------

def test_sequential_refuses_a_non_layer_and_mixed_dtypes_naming_the_problem():
    """A network is a list of Layers computing in one dtype (as torch.nn.Module.to(dtype) casts a
    whole module): an item that is no Layer, or parametrized layers in two dtypes, is refused at
    construction with a one-line message saying what to do."""
    with pytest.raises(TypeError, match=r"^Sequential item 1 is a int, not a Layer$"):
        xd.Sequential(xd.Linear(2, 2), 3)
    with pytest.raises(ValueError, match=r"^layers with different dtypes; call \.astype\(\) on the Sequential$"):
        xd.Sequential(xd.Linear(2, 3, dtype="float64"), xd.ReLU(), xd.Linear(3, 2, dtype="float32"))
    # stateless layers do not vote: the net takes its parametrized layers' dtype
    assert xd.Sequential(xd.Linear(2, 3, dtype="float64"), xd.ReLU(dtype="float32")).dtype == "float64"
    assert xd.Sequential(xd.ReLU(dtype="float64")).dtype == "float32"


def test_one_output_net_without_a_head_refuses_with_the_whole_hint():
    """A single output can be a binary logit or a regression value: without a head, reading it as
    class probabilities is refused with the two ways out spelled out."""
    net = xd.Sequential(xd.Linear(3, 1)).initialize(0)
    X = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"^this one-output network does not know how its outputs are read: train "
                                         r"it with a loss first, or build it with Sequential\(\.\.\., "
                                         r"head='sigmoid'\) \(binary\) or head='identity' \(regression\)$"):
        net.predict_proba(X)
    assert net.head is None


# -- functional backward passes called with their defaults ---------------------------------------

def test_sigmoid_backward_from_the_output_alone_and_softplus_defaults(backend):
    """``sigmoid_backward(dY, Y)`` (the output-only form, ``Sigmoid.fn_backward``) is
    ``dY Y (1 - Y)``, torch.sigmoid's derivative; ``softplus(X)`` / ``softplus_backward(dY, X)``
    default to ``beta=1``, torch.nn.functional.softplus's default."""
    from xpdnn.layers.activations import Sigmoid, sigmoid, sigmoid_backward
    from xpdnn.layers.smooth import softplus, softplus_backward

    rng = np.random.default_rng(5)
    x = np.concatenate([np.linspace(-8.0, 8.0, 33), [0.0]])
    dy = rng.standard_normal(x.shape)
    X, dY = backend.asarray(x), backend.asarray(dy)
    rtol = backend.libm_rtol(1e-12)
    for ours, ref in ((lambda: sigmoid_backward(dY, sigmoid(X)), torch.sigmoid),
                      (lambda: Sigmoid.fn_backward(dY, sigmoid(X)), torch.sigmoid),
                      (lambda: softplus_backward(dY, X), torch.nn.functional.softplus)):
        t = torch.from_numpy(x.copy()).requires_grad_(True)
        ref(t).backward(torch.from_numpy(dy))
        np.testing.assert_allclose(backend.numpy(ours()), t.grad.numpy(), rtol=rtol, atol=1e-15)
    np.testing.assert_allclose(backend.numpy(softplus(X)), torch.nn.functional.softplus(torch.from_numpy(x)).numpy(),
                               rtol=rtol, atol=1e-15)


# -- GaussianNoise -------------------------------------------------------------------------------

def test_gaussian_is_the_documented_box_muller_transform():
    """Box & Muller (1958): ``z_i = sqrt(-2 log(1 - u_{2i})) cos(2 pi u_{2i+1})`` from the call's
    float64 uniforms of xpdnn.random.uniform; a shard (``offset``) draws its own rows' numbers."""
    from xpdnn import random as xrandom
    from xpdnn.layers.noise import gaussian

    u = xrandom.uniform(7, 3, (2 * 24,), dtype="float64")
    want = np.sqrt(-2.0 * np.log1p(-u[0::2])) * np.cos(2.0 * np.pi * u[1::2])
    got = gaussian(7, 3, (4, 6))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-15, atol=0)
    np.testing.assert_allclose(gaussian(7, 3, (2, 6), offset=12).ravel(), want[12:], rtol=1e-15, atol=0)


def test_gaussian_noise_in_training_at_unit_std_and_identity_gradient_everywhere(backend):
    """In training ``Y = X + std Z`` for every ``std > 0`` (1.0 included); ``dX = dY`` in
    evaluation, in training, and at ``std = 0`` (torch.nn.Identity's gradient)."""
    from xpdnn.layers.noise import GaussianNoise, gaussian
    from xpdnn.random import Stream

    X_host = np.zeros((3, 4))
    X, G = backend.asarray(X_host), backend.asarray(np.arange(12.0).reshape(3, 4))
    Y, _ = GaussianNoise(1.0, dtype="float64").forward(X, train=True, rng=Stream(2, 1))
    np.testing.assert_allclose(backend.numpy(Y), gaussian(2, 1, (3, 4)), rtol=1e-12, atol=1e-14)
    for layer, train in ((GaussianNoise(0.3, dtype="float64"), False), (GaussianNoise(0.3, dtype="float64"), True),
                         (GaussianNoise(0.0, dtype="float64"), True)):
        Y, backprop = layer.forward(X, train=train, rng=Stream(2, 1))
        np.testing.assert_array_equal(backend.numpy(backprop(G)), backend.numpy(G))
        if not train or layer.std == 0.0:
            np.testing.assert_array_equal(backend.numpy(Y), X_host)


# -- the protocol's default is evaluation --------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: xd.GaussianNoise(0.5, dtype="float64"), lambda: xd.Dropout(0.5),
    lambda: xd.DropConnect(3, 3, rate=0.5, dtype="float64"), lambda: xd.RReLU(dtype="float64"),
    lambda: xd.BatchNorm1d(3, dtype="float64")], ids=lambda f: "")
def test_forward_without_train_is_evaluation(make):
    """``forward(X)`` defaults to ``train=False`` (Layer.forward's signature): the same output
    as ``layer(X)`` and as ``forward(X, train=False)``, with no running statistic updated."""
    X = np.random.default_rng(6).standard_normal((5, 3)) - 0.5
    layer = make()
    before = {k: np.array(v) for k, v in layer.buffers.items()}
    Y = layer.forward(X)[0]
    np.testing.assert_array_equal(Y, layer.forward(X, train=False)[0])
    np.testing.assert_array_equal(Y, layer(X))
    for k, v in before.items():
        np.testing.assert_array_equal(layer.buffers[k], v)


# -- the reparametrized layers name themselves in a shape refusal ---------------------------------

@pytest.mark.parametrize("name", sorted(REPARAM))
def test_reparam_layers_refuse_a_wrong_input_width_naming_themselves(name):
    layer = REPARAM[name](3, 2)
    with pytest.raises(ValueError, match=rf"^{name} expects input of shape \(N, 3\), got \(2, 4\)$"):
        layer.forward(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"^{name} expects input of shape \(N, 3\), got \(3,\)$"):
        layer.forward(np.zeros(3, dtype=np.float32))


def test_dropconnect_refuses_a_wrong_input_width_in_training_too():
    """The masked (training) path checks X's shape as the plain one does, before drawing a mask."""
    from xpdnn.random import Stream

    layer = xd.DropConnect(3, 2, rate=0.5, dtype="float64")
    for X, shape in ((np.zeros((2, 4)), r"\(2, 4\)"), (np.zeros(3), r"\(3,\)")):
        for train in (True, False):
            with pytest.raises(ValueError, match=rf"^(DropConnect|Linear) expects input of shape \(N, 3\), got {shape}$"):
                layer.forward(X, train=train, rng=Stream(1))
    stream = Stream(1)
    with pytest.raises(ValueError):
        layer.forward(np.zeros((2, 4)), train=True, rng=stream)
    assert stream.take() == (1, 0)          # the refusal took no random numbers


def test_prelu_per_unit_slopes_refuse_another_width_when_a_network_is_built():
    """``PReLU(k)`` has one slope per unit (torch.nn.PReLU(num_parameters=k)): a network that feeds
    it another number of features is refused by the shape inference, naming both counts."""
    layer = xd.PReLU(3)
    assert layer.output_size(3) == 3 and layer.output_size(None) is None
    assert xd.PReLU().output_size(7) == 7
    with pytest.raises(ValueError, match=r"^PReLU has 3 slopes but gets 4 input features$"):
        layer.output_size(4)
    with pytest.raises(ValueError, match=r"^PReLU has 3 slopes but gets 4 input features$"):
        xd.Sequential(xd.Linear(2, 4), xd.PReLU(3)).output_size(2)


def test_cosine_linear_is_finite_at_a_zero_weight_row(backend):
    """Luo et al. (2017) cosine normalization with smoothed norms ``sqrt(|w|^2 + eps^2)``: a unit
    whose weights are all zero outputs 0 and gets finite gradients, like a zero input row."""
    layer = CosineLinear(3, 2, seed=4, dtype="float64")
    W = np.array(layer.params["W"])
    W[1] = 0.0
    layer.set_parameters(W=W)
    X_host = np.random.default_rng(8).standard_normal((4, 3))
    X = backend.asarray(X_host)
    layer.to(like=X)
    Y, backprop = layer.forward(X)
    Y = backend.numpy(Y)
    np.testing.assert_array_equal(Y[:, 1], 0.0)
    assert np.all(np.isfinite(Y))
    layer.zero_grad()
    dX = backend.numpy(backprop(backend.asarray(np.ones((4, 2)))))
    assert np.all(np.isfinite(dX)) and np.all(np.isfinite(backend.numpy(layer.grads["W"])))
    # eps^2 = 1e-16 changes nothing measurable elsewhere: the unit that has weights is the cosine
    cos = X_host @ W[0] / (np.linalg.norm(X_host, axis=1) * np.linalg.norm(W[0]))
    np.testing.assert_allclose(Y[:, 0], cos, rtol=1e-12)


def test_layer_norm_refuses_a_wrong_width_naming_itself():
    layer = xd.LayerNorm(3)
    with pytest.raises(ValueError, match=r"^LayerNorm expects input of shape \(N, 3\), got \(2, 4\)$"):
        layer.forward(np.zeros((2, 4), dtype=np.float32))


# -- repr ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: xd.Linear(3, 2, init="glorot_uniform", bias=0.5, seed=4), lambda: xd.ReLU(), lambda: xd.LayerNorm(4),
    lambda: xd.Dropout(0.3, seed=2), lambda: xd.PReLU(3, init=0.1), lambda: xd.GELU("tanh"),
    lambda: xd.BatchNorm1d(3, momentum=0.2)], ids=lambda f: "")
def test_repr_is_the_constructor_call(make):
    """Like torch.nn modules' ``extra_repr``, ``repr(layer)`` shows the layer's settings as
    keyword arguments; here it is exactly a constructor call that rebuilds the same config (the
    default float32 dtype left out)."""
    layer = make()
    text = repr(layer)
    assert text.startswith(type(layer).__name__ + "(") and "dtype" not in text
    assert eval(text, vars(xd)).get_config() == layer.get_config()


def test_repr_of_a_dense_layer_in_full():
    assert repr(xd.Linear(3, 2)) == "Linear(n_in=3, n_out=2, init='he', bias=0.0, use_bias=True, seed=0)"
    assert repr(xd.ReLU()) == "ReLU()"


def test_normal_cdf_at_zero_is_exactly_one_half(backend):
    """Phi(0) = 1/2 by symmetry (scipy.stats.norm.cdf(0) and torch.special.ndtr(0) return 0.5
    exactly), at +0 and -0, so exact GELU's slope at 0 is exactly 1/2 as torch's autograd gives."""
    from xpdnn.layers.smooth import gelu_backward, normal_cdf

    X = backend.asarray(np.array([0.0, -0.0]))
    np.testing.assert_array_equal(backend.numpy(normal_cdf(X)), 0.5)
    assert float(torch.special.ndtr(torch.tensor(0.0, dtype=torch.float64))) == 0.5
    np.testing.assert_array_equal(backend.numpy(gelu_backward(backend.asarray(np.ones(2)), X)), 0.5)
