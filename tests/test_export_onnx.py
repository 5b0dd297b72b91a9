"""ONNX export: the exported graph, run by onnxruntime, gives what ``predict_proba`` / ``predict``
give (to 1e-5 in float32) for a network of every supported layer, every preprocessing transformer
and every head; what cannot be exported is one clear error and no file."""

import json
import os
import sys

import numpy as np
import pytest

import xpdnn as xd
from xpdnn import preprocessing as P
from xpdnn.cli import main
from xpdnn.export import ExportError, supported_layers, to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

USED: set = set()          # layer types the round trips below exercised


def run(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(session.get_outputs(), session.run(None, {"X": X}))}


def data(n=96, d=6, k=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * np.linspace(0.5, 3.0, d) + np.linspace(-2, 2, d)).astype(dtype)
    y = (np.argmax(X[:, :k] + 0.3 * rng.normal(size=(n, k)), axis=1)).astype(np.int64)
    return X, y


def trained(net, X, y, loss=None, epochs=2):
    """A couple of epochs, so BatchNorm has running statistics and the weights moved."""
    xd.Trainer(net, loss=loss or xd.SoftmaxCrossEntropy(), optimizer=xd.Adam(lr=1e-2), batch_size=16,
               epochs=epochs, seed=0, progress=False).fit(X, y)
    for _, layer in net.named_layers():
        USED.add(type(layer).__name__)
    return net


def check_classifier(tmp_path, net, X, opset=None, atol=1e-5):
    path = tmp_path / "m.onnx"
    xd.export_onnx(net, path, opset=opset)
    out = run(path, X)
    proba = np.asarray(net.predict_proba(X))
    np.testing.assert_allclose(out["probabilities"], proba, rtol=0, atol=atol)
    labels = np.asarray(net.predict(X))
    top2 = np.sort(proba, axis=1)[:, -2:] if proba.ndim == 2 and proba.shape[1] > 1 else None
    clear = np.ones(len(X), bool) if top2 is None or labels.ndim > 1 else top2[:, 1] - top2[:, 0] > 1e-4
    assert out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"][clear], labels[clear])
    return out


NETS = {
    "dense": lambda: xd.Sequential(xd.Linear(6, 16), xd.ReLU(), xd.Dropout(0.2), xd.Linear(16, 12), xd.Tanh(),
                                   xd.Linear(12, 10), xd.Sigmoid(), xd.Linear(10, 3)),
    "normalized": lambda: xd.Sequential(xd.Linear(6, 16), xd.BatchNorm1d(16), xd.ReLU(), xd.Linear(16, 12),
                                        xd.LayerNorm(12), xd.GELU(), xd.Linear(12, 8), xd.SyncBatchNorm(8),
                                        xd.Linear(8, 3)),
    "rectifiers": lambda: xd.Sequential(xd.Linear(6, 12), xd.LeakyReLU(0.2), xd.Linear(12, 12), xd.PReLU(12),
                                        xd.Linear(12, 12), xd.PReLU(), xd.Linear(12, 12), xd.RReLU(),
                                        xd.Linear(12, 12), xd.ELU(0.7), xd.Linear(12, 3)),
    "smooth": lambda: xd.Sequential(xd.Linear(6, 12), xd.Softplus(), xd.Linear(12, 12), xd.Softplus(beta=3.0),
                                    xd.Linear(12, 12), xd.Softplus(beta=0.5), xd.Linear(12, 12),
                                    xd.GELU(approximate="tanh"), xd.Linear(12, 12), xd.SiLU(), xd.Linear(12, 3)),
    "reparametrized": lambda: xd.Sequential(xd.WeightNormLinear(6, 12), xd.ReLU(), xd.CosineLinear(12, 10),
                                            xd.Maxout(10, 8, pieces=3), xd.DropConnect(8, 8, rate=0.3),
                                            xd.GaussianNoise(0.1), xd.Identity(), xd.Linear(8, 3, use_bias=False)),
    "nested and softmax": lambda: xd.Sequential(xd.Sequential(xd.Linear(6, 8), xd.ReLU()), xd.Linear(8, 3),
                                                xd.Softmax()),
}


@pytest.mark.parametrize("name", NETS)
def test_every_layer_matches_predict_proba(tmp_path, name):
    X, y = data()
    net = NETS[name]()
    if name == "nested and softmax":     # a final Softmax layer: trained as a softmax-head net, read as is
        net.head = "softmax"
        for _, layer in net.named_layers():
            USED.add(type(layer).__name__)
        out = check_classifier(tmp_path, net.initialize(0), X)
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)   # not softmax twice
        return
    check_classifier(tmp_path, trained(net, X, y), X)


@pytest.mark.parametrize("make", [lambda: P.MeanSubtraction(), lambda: P.MeanSubtraction(per_feature=False),
                                  P.Standardizer, lambda: P.MinMaxScaler((0.0, 2.0)), lambda: P.PCA(4),
                                  lambda: P.PCA(5, whiten=True), P.ZCA],
                         ids=["mean", "mean-global", "standardize", "minmax", "pca", "pca-whiten", "zca"])
def test_preprocessing_is_part_of_the_graph(tmp_path, make):
    X, y = data(seed=1)
    pre = make()
    n_in = {4: 4, 5: 5}.get(getattr(pre, "n_components", None) or 0, 6)
    net = xd.Sequential(xd.Linear(n_in, 8), xd.ReLU(), xd.Linear(8, 3), preprocessing=pre)
    trained(net, X, y)
    check_classifier(tmp_path, net, X)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == 6      # raw features go in


@pytest.mark.parametrize("opset", [13, 18])
def test_other_opsets(tmp_path, opset):
    """Opset 13: LayerNorm as its formula and Reduce* axes as attributes; 18: axes as inputs."""
    X, y = data(seed=2)
    net = trained(xd.Sequential(xd.Linear(6, 10), xd.LayerNorm(10), xd.ReLU(), xd.CosineLinear(10, 8),
                                xd.Maxout(8, 6, pieces=2), xd.Linear(6, 3)), X, y)
    check_classifier(tmp_path, net, X, opset=opset)
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == opset


def test_large_inputs_stay_finite_and_match(tmp_path):
    """Softplus with beta > 1 and GELU far in the tails, where a naive formula overflows."""
    X = np.array([[-300.0, -20.0, 0.0, 5.0, 80.0, 300.0]], np.float32).repeat(3, axis=0) * [[1], [0.1], [1e-3]]
    X = X.astype(np.float32)
    net = xd.Sequential(xd.Identity(), xd.Softplus(beta=4.0), xd.GELU(), xd.GELU("tanh"), head="identity")
    net.layers.insert(0, xd.Linear(6, 6))
    net.layers[0].set_parameters(W=np.eye(6), b=np.zeros(6))
    path = tmp_path / "m.onnx"
    xd.export_onnx(net, path)
    got = run(path, X)["predictions"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np.asarray(net.predict(X)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss, y_of, n_out, head", [
    (xd.BinaryCrossEntropy(), lambda y: (y > 0).astype(np.float32), 1, "sigmoid"),
    (xd.MultiLabelLogistic(), lambda y: np.eye(3, dtype=np.float32)[y], 3, "sigmoid"),
    (xd.MulticlassHinge(), lambda y: y, 3, "margin"),
    (xd.MultilabelHinge(), lambda y: 2 * np.eye(3, dtype=np.float32)[y] - 1, 3, "signed"),
    (xd.MSE(), lambda y: y[:, None].astype(np.float32) * [1.5, -2.0], 2, "identity"),
], ids=["binary", "multilabel", "margin", "signed", "regression"])
def test_every_head(tmp_path, loss, y_of, n_out, head):
    X, y = data(seed=3)
    net = trained(xd.Sequential(xd.Linear(6, 10), xd.Tanh(), xd.Linear(10, n_out)), X, y_of(y), loss=loss)
    assert net.head == head
    path = tmp_path / "m.onnx"
    xd.export_onnx(net, path)
    out = run(path, X)
    labels = np.asarray(net.predict(X))
    if head == "sigmoid":
        np.testing.assert_allclose(out["probabilities"], np.asarray(net.predict_proba(X)), rtol=0, atol=1e-5)
        assert out["probabilities"].shape == ((len(X), 2) if n_out == 1 else (len(X), n_out))
    if head == "identity":
        assert list(out) == ["predictions"]
        np.testing.assert_allclose(out["predictions"], labels, rtol=1e-5, atol=1e-5)
        return
    if head in ("margin", "signed"):
        np.testing.assert_allclose(out["scores"], np.asarray(net(X)), rtol=1e-5, atol=1e-5)
    assert out["label"].shape == labels.shape
    np.testing.assert_array_equal(out["label"], labels)


def test_float64_network(tmp_path):
    """A float64 net gives a float64 graph.  onnxruntime's CPU provider has no float64 kernels for
    Elu, Softplus and Erf (ELU, Softplus, exact GELU), so those are left out here; the graph is
    valid ONNX with them too."""
    X, y = data(seed=4, dtype=np.float64)
    net = xd.Sequential(xd.Linear(6, 8), xd.BatchNorm1d(8), xd.SiLU(), xd.Linear(8, 8), xd.LayerNorm(8),
                        xd.GELU("tanh"), xd.Maxout(8, 6), xd.PReLU(), xd.Linear(6, 3),
                        preprocessing=P.Standardizer()).astype("float64")
    trained(net, X, y)
    out = check_classifier(tmp_path, net, X, atol=1e-12)
    assert out["probabilities"].dtype == np.float64


def test_every_supported_layer_was_exercised():
    """Runs after the round trips above (file order): a converter added without a test fails here."""
    if not USED:
        pytest.skip("run with the round-trip tests")
    assert set(supported_layers()) <= USED | {"Sequential"}, set(supported_layers()) - USED


# -- what cannot be exported -----------------------------------------------------------------------

@pytest.fixture
def custom_layers():
    """Two layer types ONNX export does not know, unregistered again afterwards (every Layer
    subclass joins xpdnn's layer registry, which other tests walk)."""
    from xpdnn.layers.base import LAYERS

    before = dict(LAYERS)

    class Doubler(xd.Layer):
        def forward(self, X, *, train=False, rng=None):
            return 2 * X, lambda dY: 2 * dY

    class ScaledLinear(xd.Linear):
        """A subclass computes something else: it must not be written as its parent."""

        def forward(self, X, *, train=False, rng=None, **kwargs):
            Y, bp = super().forward(X, train=train, rng=rng)
            return 3 * Y, bp

    yield {"Doubler": Doubler(), "ScaledLinear": ScaledLinear(8, 8)}
    LAYERS.clear()
    LAYERS.update(before)


@pytest.mark.parametrize("name", ["Doubler", "ScaledLinear"])
def test_an_unsupported_layer_is_one_error_and_no_file(tmp_path, custom_layers, name):
    net = xd.Sequential(xd.Linear(4, 8), custom_layers[name], xd.Linear(8, 3))
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ExportError) as info:
        xd.export_onnx(net, path)
    message = str(info.value)
    assert message.startswith(f"cannot export layers.1 ({name}) to ONNX") and "\n" not in message
    assert "supported layers: BatchNorm1d, CosineLinear" in message
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.onnx"]


def test_other_refusals(tmp_path):
    with pytest.raises(ExportError, match="one-output network does not say how its outputs are read"):
        to_onnx(xd.Sequential(xd.Linear(3, 1)))
    with pytest.raises(ExportError, match="takes a Sequential network, got Linear"):
        to_onnx(xd.Linear(3, 2))
    with pytest.raises(ExportError, match="opset 11 is too old"):
        to_onnx(xd.Sequential(xd.Linear(3, 2)), opset=11)
    with pytest.raises(ExportError, match="opset 999 is newer than this onnx package"):
        to_onnx(xd.Sequential(xd.Linear(3, 2)), opset=999)
    with pytest.raises(ExportError, match="HierarchicalSoftmax"):
        to_onnx(xd.Sequential(xd.Linear(3, 4), head="features"))
    assert os.listdir(tmp_path) == []


def test_without_onnx_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"ONNX export needs the onnx package: pip install 'xpdnn\[onnx\]'"):
        xd.export_onnx(xd.Sequential(xd.Linear(3, 2)), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


# -- xpdnn export ------------------------------------------------------------------------------------

def test_cli_export(tmp_path, capsys):
    X, y = data(n=60, d=4, seed=5)
    rows = "".join(",".join(map(repr, map(float, x))) + f",{'abc'[t]}\n" for x, t in zip(X, y))
    (tmp_path / "d.csv").write_text("p,q,r,s,kind\n" + rows)
    model, out_path = tmp_path / "m.xpd", tmp_path / "m.onnx"
    assert main(["train", "--data", str(tmp_path / "d.csv"), "--quiet", "--backend", "numpy", "--epochs", "3",
                 "--hidden", "8", "--save", str(model)]) == 0
    capsys.readouterr()
    assert main(["export", str(model), str(out_path)]) == 0
    assert "outputs: probabilities, label" in capsys.readouterr().out
    net = xd.load(model)
    got = run(out_path, X)
    np.testing.assert_allclose(got["probabilities"], np.asarray(net.predict_proba(X)), rtol=0, atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(out_path)).metadata_props}
    assert json.loads(meta["classes"]) == ["a", "b", "c"] and json.loads(meta["feature_names"]) == list("pqrs")
    xd.save(P.Standardizer().fit(X), tmp_path / "t.xpd")
    try:
        rc = main(["export", str(tmp_path / "t.xpd"), str(tmp_path / "t.onnx")])
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("xpdnn: error: ") and "Standardizer alone, not a network" in err
    assert not (tmp_path / "t.onnx").exists()
