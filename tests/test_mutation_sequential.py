"""Properties of xpdnn.Sequential that a mutation run found unasserted (tests/MUTATION.md): that
calling a net is evaluation (dropout off, as ``torch.nn.Module.eval()`` then ``model(X)``), and the
layout of ``summary()`` (a per-layer table like Keras's ``Model.summary``)."""

from __future__ import annotations

import numpy as np

import xpdnn as xd


def test_calling_a_net_is_evaluation_mode():
    """``net(X)`` never drops units: it equals ``forward(X, train=False)`` and repeats exactly,
    while a training forward pass with dropout 0.5 differs."""
    net = xd.Sequential(xd.Linear(6, 32, dtype="float64"), xd.ReLU(), xd.Dropout(0.5), xd.Linear(32, 3, dtype="float64"))
    net.initialize(0)
    X = np.random.default_rng(0).standard_normal((9, 6))
    first = np.asarray(net(X))
    np.testing.assert_array_equal(first, np.asarray(net.forward(X, train=False)[0]))
    np.testing.assert_array_equal(first, np.asarray(net(X)))
    trained = np.asarray(net.forward(X, train=True, rng=xd.random.Stream(1))[0])
    assert not np.array_equal(first, trained)


def test_summary_is_a_per_layer_table_with_totals():
    net = xd.Sequential(xd.Linear(784, 512), xd.ReLU(), xd.Dropout(0.2), xd.Linear(512, 10))
    s = net.summary()
    assert (s.neurons, s.params) == (522, 784 * 512 + 512 + 512 * 10 + 10)
    assert str(s) == "\n".join([
        "layer       out  neurons   params",
        "---------------------------------",
        "0: Linear   512      512  401,920",
        "1: ReLU     512        0        0",
        "2: Dropout  512        0        0",
        "3: Linear    10       10    5,130",
        "---------------------------------",
        "total                522  407,050",
    ])


def test_summary_of_a_net_of_unknown_width_shows_question_marks_until_told():
    net = xd.Sequential(xd.ReLU(), xd.Tanh())
    assert str(net.summary()).splitlines() == ["layer    out  neurons  params", "-" * 29,
                                               "0: ReLU    ?        0       0", "1: Tanh    ?        0       0",
                                               "-" * 29, "total               0       0"]
    told = str(net.summary(n_in=7)).splitlines()
    assert told[2:4] == ["0: ReLU    7        0       0", "1: Tanh    7        0       0"]
