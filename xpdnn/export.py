"""ONNX export of a trained network: ``xd.export_onnx(net, "model.onnx")``.

The graph is built with the ``onnx`` package's helper API (``onnx.helper.make_node``,
``make_graph``, ``make_model``; the operators as the ONNX operator reference,
https://onnx.ai/onnx/operators/, defines them) and checked with ``onnx.checker`` before a byte
is written.  ``onnx`` is the optional ``onnx`` extra (``pip install 'xpdnn[onnx]'``); running
the file needs an ONNX runtime such as ``onnxruntime``.

What the graph computes is the network in evaluation mode, as ``predict_proba`` / ``predict``
read it:

* input ``X``: (N, n_features) in the network's dtype (float32 unless it was cast), raw
  features: the network's preprocessing transformer is part of the graph;
* preprocessing: ``MeanSubtraction``, ``Standardizer``, ``MinMaxScaler`` (Sub/Div/Mul/Add with
  the fitted statistics), ``PCA`` (with whitening) and ``ZCA`` (a MatMul);
* layers: ``Linear`` and ``DropConnect`` (Gemm), ``WeightNormLinear`` (Gemm with the normalized
  weights), ``CosineLinear``, ``Maxout`` (MatMul, Reshape, ReduceMax), ``BatchNorm1d``
  (BatchNormalization with the running statistics), ``LayerNorm`` (LayerNormalization, opset
  >= 17, else its formula), ``ReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``, ``Identity``,
  ``LeakyReLU``, ``PReLU``, ``RReLU`` (LeakyRelu with the mean slope, as in evaluation),
  ``ELU``, ``Softplus`` (any ``beta``), ``GELU`` (exact, with Erf, or the tanh form), ``SiLU``,
  nested ``Sequential``; ``Dropout`` and ``GaussianNoise`` are the identity in evaluation and
  add nothing;
* outputs by head (:mod:`xpdnn.heads`): ``probabilities`` (what ``predict_proba`` returns:
  softmax, or ``[P(0), P(1)]`` for one sigmoid output, per-label sigmoids for several) and
  ``label`` (what ``predict`` returns, int64); ``scores`` and ``label`` for hinge heads;
  ``predictions`` (N, K) for regression.

A float64 network gives a float64 graph; onnxruntime's CPU provider lacks float64 kernels for
Elu, Softplus and Erf, so such a graph with ELU, Softplus or exact GELU needs another runtime
(or the network cast to float32 first, ``net.astype("float32")``).

Anything else (a layer of another library, ``HierarchicalSoftmax`` features, an unknown
transformer) raises :class:`ExportError` naming it before any file is touched; the file itself
is written to a temporary name and renamed, so it appears whole or not at all.
"""

from __future__ import annotations

import json
import math

import numpy as np

from . import _backend as B

DEFAULT_OPSET = 17
MIN_OPSET = 13          # Softmax over one axis (opset 13 semantics)


class ExportError(ValueError):
    """A network that cannot be written as ONNX: the message names the layer (by its path,
    ``layers.3``, and type) or transformer and why."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'xpdnn[onnx]'") from None
    return onnx


class _Graph:
    """Nodes and initializers of the graph being built, in the network's dtype."""

    def __init__(self, onnx, dtype: str, opset: int):
        self.onnx, self.helper = onnx, onnx.helper
        self.np_dtype = np.dtype(dtype)
        self.elem = {"float32": onnx.TensorProto.FLOAT, "float64": onnx.TensorProto.DOUBLE}[dtype]
        self.opset = opset
        self.nodes, self.initializers = [], []
        self._names: dict[str, int] = {}
        self._used: set[str] = set()

    def name(self, hint: str) -> str:
        """``hint``, or ``hint_1``, ``hint_2``, ... : a tensor name not used yet."""
        n = self._names.get(hint, 0)
        name = hint if n == 0 else f"{hint}_{n}"
        while name in self._used:
            n += 1
            name = f"{hint}_{n}"
        self._names[hint] = n + 1
        self._used.add(name)
        return name

    def const(self, hint: str, value, dtype=None) -> str:
        """An initializer holding ``value`` (in the graph's dtype unless ``dtype`` says)."""
        a = np.asarray(B.to_numpy(value) if not isinstance(value, (int, float, list, tuple)) else value)
        a = np.ascontiguousarray(a.astype(dtype or self.np_dtype))
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(a, name))
        return name

    def op(self, op_type: str, inputs, hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def reduce(self, op_type: str, X: str, axes, hint: str, keepdims: int = 1) -> str:
        """A Reduce* node over ``axes`` (an attribute before opset 18, an input from 18 on;
        ReduceSum took it as an input from opset 13)."""
        as_input = self.opset >= 18 or op_type == "ReduceSum"
        if as_input:
            return self.op(op_type, [X, self.const(f"{hint}_axes", list(axes), np.int64)], hint, keepdims=keepdims)
        return self.op(op_type, [X], hint, axes=list(axes), keepdims=keepdims)


def _host(layer, name, store="params"):
    return np.asarray(B.to_numpy(getattr(layer, store)[name]))


# -- layers ------------------------------------------------------------------------------------
def _linear(g, layer, X, path):
    inputs = [X, g.const(f"{path}.W", _host(layer, "W"))]
    if layer.use_bias:
        inputs.append(g.const(f"{path}.b", _host(layer, "b")))
    return g.op("Gemm", inputs, path, transB=1)


def _weight_norm_linear(g, layer, X, path):
    from .layers.reparam import weight_norm

    W, _ = weight_norm(_host(layer, "v"), _host(layer, "g"))      # as the layer computes it, in its dtype
    return g.op("Gemm", [X, g.const(f"{path}.W", W), g.const(f"{path}.b", _host(layer, "b"))], path, transB=1)


def _cosine_linear(g, layer, X, path):
    W = _host(layer, "W")
    e2 = layer.eps * layer.eps
    nw = np.sqrt(np.sum(W * W, axis=1) + e2)[None, :]            # (1, n_out)
    nx = g.op("Sqrt", [g.op("Add", [g.reduce("ReduceSumSquare", X, [1], f"{path}.x2"), g.const(f"{path}.eps2", e2)],
                            f"{path}.x2e")], f"{path}.nx")        # (N, 1)
    S = g.op("MatMul", [X, g.const(f"{path}.WT", W.T)], f"{path}.S")
    return g.op("Div", [S, g.op("Mul", [nx, g.const(f"{path}.nw", nw)], f"{path}.norms")], path)


def _maxout(g, layer, X, path):
    W, b = _host(layer, "W"), _host(layer, "b")                  # (k, n_out, n_in), (k, n_out)
    k, n_out, n_in = W.shape
    Z = g.op("MatMul", [X, g.const(f"{path}.W2T", W.reshape(k * n_out, n_in).T)], f"{path}.Z")
    Z = g.op("Add", [Z, g.const(f"{path}.b", b.reshape(k * n_out))], f"{path}.Zb")
    Z = g.op("Reshape", [Z, g.const(f"{path}.shape", [-1, k, n_out], np.int64)], f"{path}.Z3")
    return g.reduce("ReduceMax", Z, [1], path, keepdims=0)


def _batch_norm(g, layer, X, path):
    return g.op("BatchNormalization", [X, g.const(f"{path}.gamma", _host(layer, "gamma")),
                                       g.const(f"{path}.beta", _host(layer, "beta")),
                                       g.const(f"{path}.running_mean", _host(layer, "running_mean", "buffers")),
                                       g.const(f"{path}.running_var", _host(layer, "running_var", "buffers"))],
                path, epsilon=layer.eps)


def _layer_norm(g, layer, X, path):
    gamma, beta = g.const(f"{path}.gamma", _host(layer, "gamma")), g.const(f"{path}.beta", _host(layer, "beta"))
    if g.opset >= 17:
        return g.op("LayerNormalization", [X, gamma, beta], path, axis=-1, epsilon=layer.eps)
    mean = g.reduce("ReduceMean", X, [1], f"{path}.mean")
    Xc = g.op("Sub", [X, mean], f"{path}.Xc")
    var = g.reduce("ReduceMean", g.op("Mul", [Xc, Xc], f"{path}.Xc2"), [1], f"{path}.var")
    std = g.op("Sqrt", [g.op("Add", [var, g.const(f"{path}.eps", layer.eps)], f"{path}.vareps")], f"{path}.std")
    return g.op("Add", [g.op("Mul", [g.op("Div", [Xc, std], f"{path}.Xhat"), gamma], f"{path}.scaled"), beta], path)


def _softplus(g, layer, X, path):
    # as xpdnn.layers.smooth.softplus: max(X, 0) + log1p(exp(-|beta X|)) / beta, beta X clipped
    # where beta > 1 so that it cannot overflow
    beta = layer.beta
    if beta == 1.0:
        return g.op("Softplus", [X], path)
    Xs = X
    if beta > 1.0:
        cut = 800.0 / beta
        Xs = g.op("Clip", [X, g.const(f"{path}.lo", -cut), g.const(f"{path}.hi", cut)], f"{path}.clip")
    A = g.op("Abs", [g.op("Mul", [Xs, g.const(f"{path}.beta", beta)], f"{path}.bX")], f"{path}.A")
    soft = g.op("Div", [g.op("Softplus", [g.op("Neg", [A], f"{path}.negA")], f"{path}.sp"),
                        g.const(f"{path}.beta_div", beta)], f"{path}.soft")
    return g.op("Add", [g.op("Relu", [X], f"{path}.relu"), soft], path)


def _gelu(g, layer, X, path):
    if layer.approximate == "tanh":
        # X * sigmoid(2 sqrt(2/pi) (X + 0.044715 X^3)), X clipped to +-1e4 inside, as the layer does
        Xc = g.op("Clip", [X, g.const(f"{path}.lo", -1e4), g.const(f"{path}.hi", 1e4)], f"{path}.clip")
        X3 = g.op("Mul", [g.op("Mul", [Xc, Xc], f"{path}.X2"), Xc], f"{path}.X3")
        u = g.op("Add", [Xc, g.op("Mul", [X3, g.const(f"{path}.c", 0.044715)], f"{path}.cX3")], f"{path}.u")
        gate = g.op("Sigmoid", [g.op("Mul", [u, g.const(f"{path}.k", 2.0 * math.sqrt(2.0 / math.pi))], f"{path}.2ku")],
                    f"{path}.gate")
        return g.op("Mul", [X, gate], path)
    # X * Phi(X), Phi(X) = (1 + erf(X / sqrt 2)) / 2
    erf = g.op("Erf", [g.op("Mul", [X, g.const(f"{path}.rsqrt2", 1.0 / math.sqrt(2.0))], f"{path}.Xs")], f"{path}.erf")
    cdf = g.op("Mul", [g.op("Add", [erf, g.const(f"{path}.one", 1.0)], f"{path}.erf1"), g.const(f"{path}.half", 0.5)],
               f"{path}.cdf")
    return g.op("Mul", [X, cdf], path)


def _elementwise(op_type, **attrs):
    def convert(g, layer, X, path):
        return g.op(op_type, [X], path, **{k: v(layer) if callable(v) else v for k, v in attrs.items()})
    return convert


def _prelu(g, layer, X, path):
    return g.op("PRelu", [X, g.const(f"{path}.alpha", _host(layer, "alpha"))], path)


def _silu(g, layer, X, path):
    return g.op("Mul", [X, g.op("Sigmoid", [X], f"{path}.sigmoid")], path)


def _identity_in_evaluation(g, layer, X, path):
    return X


def _sequential(g, layer, X, path):
    for i, sub in enumerate(layer.layers):
        X = _convert(g, sub, X, f"{path}.layers.{i}" if path else f"layers.{i}")
    return X


def _converters():
    from . import layers as L

    return {
        L.Linear: _linear, L.DropConnect: _linear, L.WeightNormLinear: _weight_norm_linear,
        L.CosineLinear: _cosine_linear, L.Maxout: _maxout, L.BatchNorm1d: _batch_norm, L.SyncBatchNorm: _batch_norm, L.LayerNorm: _layer_norm,
        L.Identity: _elementwise("Identity"), L.ReLU: _elementwise("Relu"), L.Sigmoid: _elementwise("Sigmoid"),
        L.Tanh: _elementwise("Tanh"), L.Softmax: _elementwise("Softmax", axis=-1),
        L.LeakyReLU: _elementwise("LeakyRelu", alpha=lambda layer: layer.alpha),
        L.RReLU: _elementwise("LeakyRelu", alpha=lambda layer: 0.5 * (layer.lower + layer.upper)),
        L.ELU: _elementwise("Elu", alpha=lambda layer: layer.alpha), L.PReLU: _prelu, L.Softplus: _softplus,
        L.GELU: _gelu, L.SiLU: _silu, L.Dropout: _identity_in_evaluation, L.GaussianNoise: _identity_in_evaluation,
        L.Sequential: _sequential,
    }


def supported_layers() -> list[str]:
    """Names of the layer types :func:`export_onnx` writes."""
    return sorted(cls.__name__ for cls in _converters())


def _convert(g, layer, X, path):
    convert = _converters().get(type(layer))       # the exact type: a subclass may compute something else
    if convert is None:
        raise ExportError(f"cannot export {path} ({type(layer).__name__}) to ONNX: no ONNX equivalent is "
                          f"implemented for it; supported layers: {', '.join(supported_layers())}")
    return convert(g, layer, X, path)


# -- preprocessing -----------------------------------------------------------------------------
def _preprocessing(g, pre, X):
    from . import preprocessing as P

    meta, stats = pre.get_state()
    f = g.np_dtype.type
    kind = type(pre)
    if kind is P.MeanSubtraction:
        return g.op("Sub", [X, g.const("pre.mean", stats["mean"])], "pre.centered")
    if kind is P.Standardizer:
        Xc = g.op("Sub", [X, g.const("pre.mean", stats["mean"])], "pre.centered")
        return g.op("Div", [Xc, g.const("pre.scale", stats["scale"])], "pre.standardized")
    if kind is P.MinMaxScaler:
        mid = sum(pre.feature_range) / 2
        Xc = g.op("Sub", [X, g.const("pre.center", stats["center"])], "pre.centered")
        Xs = g.op("Mul", [Xc, g.const("pre.scale", stats["scale"])], "pre.scaled")
        return g.op("Add", [Xs, g.const("pre.mid", mid)], "pre.minmax")
    if kind is P.PCA:
        Xc = g.op("Sub", [X, g.const("pre.mean", stats["mean"])], "pre.centered")
        Z = g.op("MatMul", [Xc, g.const("pre.componentsT", stats["components"].T)], "pre.pca")
        if pre.whiten:
            root = np.sqrt(stats["variance"].astype(g.np_dtype) + f(pre.eps))    # as transform, in the data's dtype
            Z = g.op("Div", [Z, g.const("pre.root_variance", root)], "pre.whitened")
        return Z
    if kind is P.ZCA:
        Xc = g.op("Sub", [X, g.const("pre.mean", stats["mean"])], "pre.centered")
        return g.op("MatMul", [Xc, g.const("pre.whitening", stats["whitening"])], "pre.zca")
    raise ExportError(f"cannot export the preprocessing {meta['type']} to ONNX: supported are MeanSubtraction, "
                      f"Standardizer, MinMaxScaler, PCA and ZCA")


# -- the output head ---------------------------------------------------------------------------
def _head_outputs(g, net, Z, n_out):
    """[(name, tensor, elem type, shape)] of the graph's outputs, by the net's head."""
    from .layers.activations import Softmax

    head = net.head
    if head is None:
        if n_out == 1:
            raise ExportError("this one-output network does not say how its outputs are read (no head): train it "
                              "with a loss first, or build it with Sequential(..., head='sigmoid' or 'identity')")
        head = "softmax"
    f, i64 = g.elem, g.onnx.TensorProto.INT64
    if head == "softmax":
        already = bool(net.layers) and isinstance(net.layers[-1], Softmax)
        P = Z if already else g.op("Softmax", [Z], "softmax", axis=-1)
        P = g.op("Identity", [P], "probabilities")
        label = g.op("ArgMax", [Z], "label", axis=1, keepdims=0)
        return [(P, f, ["N", n_out]), (label, i64, ["N"])]
    if head == "sigmoid":
        if n_out == 1:
            P1 = g.op("Sigmoid", [Z], "p1")
            P0 = g.op("Sigmoid", [g.op("Neg", [Z], "negZ")], "p0")
            P = g.op("Concat", [P0, P1], "probabilities", axis=1)
            positive = g.op("Greater", [Z, g.const("zero", 0.0)], "positive")
            flat = g.op("Reshape", [positive, g.const("flat_shape", [-1], np.int64)], "positive_flat")
            label = g.op("Cast", [flat], "label", to=i64)
            return [(P, f, ["N", 2]), (label, i64, ["N"])]
        P = g.op("Sigmoid", [Z], "probabilities")
        label = g.op("Cast", [g.op("Greater", [Z, g.const("zero", 0.0)], "positive")], "label", to=i64)
        return [(P, f, ["N", n_out]), (label, i64, ["N", n_out])]
    if head == "margin":
        scores = g.op("Identity", [Z], "scores")
        return [(scores, f, ["N", n_out]), (g.op("ArgMax", [Z], "label", axis=1, keepdims=0), i64, ["N"])]
    if head == "signed":
        scores = g.op("Identity", [Z], "scores")
        positive = g.op("Cast", [g.op("Greater", [Z, g.const("zero", 0.0)], "positive")], "positive_int", to=i64)
        label = g.op("Sub", [g.op("Mul", [positive, g.const("two", 2, np.int64)], "twice"),
                             g.const("one", 1, np.int64)], "label")
        return [(scores, f, ["N", n_out]), (label, i64, ["N", n_out])]
    if head == "identity":
        return [(g.op("Identity", [Z], "predictions"), f, ["N", n_out])]
    raise ExportError(f"cannot export a network with a {head!r} head: its outputs are features for a "
                      f"HierarchicalSoftmax, whose classes ONNX export does not cover")


# -- the model ---------------------------------------------------------------------------------
def to_onnx(net, *, opset: int | None = None, metadata: dict | None = None, input_name: str = "X"):
    """The network as a checked ``onnx.ModelProto`` (nothing written); see :func:`export_onnx`."""
    onnx = _onnx()
    from .layers.sequential import Sequential

    if not isinstance(net, Sequential):
        raise ExportError(f"export_onnx takes a Sequential network, got {type(net).__name__}")
    if not net.layers:
        raise ExportError("the network has no layers")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: xpdnn exports opset {MIN_OPSET} or later")
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ExportError(f"opset {opset} is newer than this onnx package ({onnx.__version__}) knows: at most {newest}")
    if net.dtype not in ("float32", "float64"):
        raise ExportError(f"cannot export a {net.dtype} network: cast it to float32 or float64 first (net.astype)")
    n_features = net.n_features
    if n_features is None:
        raise ExportError("the network's first layers do not say how many features it takes (no Linear layer)")
    g = _Graph(onnx, net.dtype, opset)
    g._used.add(input_name)
    X = input_name
    if net.preprocessing is not None:
        X = _preprocessing(g, net.preprocessing, X)
    Z = _sequential(g, net, X, "")
    n_out = net.output_size(net.n_in)
    outputs = _head_outputs(g, net, Z, n_out)
    h = onnx.helper
    graph = h.make_graph(g.nodes, "xpdnn", [h.make_tensor_value_info(input_name, g.elem, ["N", n_features])],
                         [h.make_tensor_value_info(name, elem, shape) for name, elem, shape in outputs],
                         initializer=g.initializers)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="xpdnn",
                         producer_version=_version())
    # the oldest IR version that carries this opset, so that older runtimes read the file too
    model.ir_version = h.find_min_ir_version_for(list(model.opset_import))
    model.doc_string = f"xpdnn network, head {net.head or 'softmax'}; input {input_name}: raw features"
    props = {"head": net.head or "softmax", **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:            # a bug here, not in the user's network
        raise ExportError(f"the ONNX graph failed onnx.checker: {type(exc).__name__}: {exc}") from None
    return model


def _version():
    try:
        from . import __version__
        return __version__
    except ImportError:
        return ""


def export_onnx(net, path, *, opset: int | None = None, metadata: dict | None = None, input_name: str = "X"):
    """Write ``net`` (a :class:`~xpdnn.Sequential`, with its preprocessing and head) to ``path``
    as an ONNX model and return the ``onnx.ModelProto``.

    The graph takes ``X`` (N, n_features) of raw features in the network's dtype and gives
    ``probabilities`` (as ``predict_proba``) and ``label`` (as ``predict``) for a classifier,
    ``predictions`` for a regression net (see the module docstring for every layer and head).
    ``opset``: the ONNX opset (default 17, at least 13).  ``metadata``: JSON-able values stored
    as the model's ``metadata_props`` (the CLI stores the class names there).  An unsupported
    layer or transformer raises :class:`ExportError` naming it, and a missing ``onnx`` package
    ImportError, before anything is written; the file is written atomically."""
    from .datasets.files import atomic_output

    model = to_onnx(net, opset=opset, metadata=metadata, input_name=input_name)
    blob = model.SerializeToString()
    with atomic_output(path) as f:
        f.write(blob)
    return model
