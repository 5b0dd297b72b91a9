"""Hierarchical softmax for very large label sets (Morin & Bengio 2005; Mikolov et al. 2013, word2vec).

The C classes are the leaves of a binary tree with C - 1 inner nodes.  Inner node k is a
logistic unit on the hidden features h: it goes left with probability sigma(W_k . h + b_k) and
right with probability sigma(-(W_k . h + b_k)).  A class's probability is the product of the
decisions on its root-to-leaf path, so the probabilities of all leaves sum to 1 and the loss
of one example touches only the depth(y) nodes on its path: O(log C) for a balanced tree.

A Huffman tree built from class frequencies gives frequent classes short paths (the expected
path length is minimal), as word2vec does for words.
"""

from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from .. import _backend as B
from .. import init as initializers
from ..layers.base import ACCUMULATE, Layer
from .base import check_labels

TREES = ("balanced", "huffman")


def balanced_tree(n_classes: int) -> list[tuple]:
    """Children of each inner node, ``[(left, right), ...]`` with the root first; a child is
    ``("leaf", class)`` or ``("node", index)``.  Each node splits its class range in halves."""
    children: list = [None]
    queue = deque([(0, 0, n_classes)])
    while queue:
        k, lo, hi = queue.popleft()
        mid = lo + (hi - lo + 1) // 2
        pair = []
        for a, z in ((lo, mid), (mid, hi)):
            if z - a == 1:
                pair.append(("leaf", a))
            else:
                children.append(None)
                pair.append(("node", len(children) - 1))
                queue.append((len(children) - 1, a, z))
        children[k] = tuple(pair)
    return children


def huffman_tree(counts) -> list[tuple]:
    """Huffman tree over classes with frequencies ``counts`` (C,), in the format of
    :func:`balanced_tree`, inner nodes numbered breadth first from the root.  Ties are broken
    by class index, so the tree is deterministic."""
    heap = [(float(c), i, ("leaf", i)) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    merged: list = []
    tiebreak = len(heap)
    while len(heap) > 1:
        c1, _, a = heapq.heappop(heap)
        c2, _, z = heapq.heappop(heap)
        merged.append((a, z))
        heapq.heappush(heap, (c1 + c2, tiebreak, ("merged", len(merged) - 1)))
        tiebreak += 1
    # renumber breadth first so the root is node 0
    children: list = []
    queue = deque([len(merged) - 1])
    index = {}
    while queue:
        m = queue.popleft()
        index[m] = len(children)
        children.append(merged[m])
        for kind, j in merged[m]:
            if kind == "merged":
                queue.append(j)
    return [tuple(("node", index[j]) if kind == "merged" else (kind, j) for kind, j in pair)
            for pair in children]


def path_tables(children, n_classes: int):
    """Per-class paths padded to the maximum depth D: node ids (C, D) int64 (0 on padding) and
    codes (C, D) float64, +1 for a left turn, -1 for a right turn, 0 on padding."""
    paths: list = [None] * n_classes
    stack = [(0, [])]
    while stack:
        k, path = stack.pop()
        for (kind, j), code in zip(children[k], (1.0, -1.0)):
            step = path + [(k, code)]
            if kind == "leaf":
                paths[j] = step
            else:
                stack.append((j, step))
    depth = max(len(p) for p in paths)
    nodes = np.zeros((n_classes, depth), dtype=np.int64)
    codes = np.zeros((n_classes, depth), dtype=np.float64)
    for c, p in enumerate(paths):
        nodes[c, :len(p)] = [k for k, _ in p]
        codes[c, :len(p)] = [s for _, s in p]
    return nodes, codes


def log_sigmoid(X):
    """log sigma(X) = -softplus(-X) = min(X, 0) - log1p(exp(-|X|)), finite for any X."""
    xp = B.namespace(X)
    return xp.minimum(X, xp.zeros_like(X)) - xp.log1p(xp.exp(-xp.abs(X)))


def sigmoid(X):
    xp = B.namespace(X)
    E = xp.exp(-xp.abs(X))
    return xp.where(X >= 0, 1.0 / (1.0 + E), E / (1.0 + E))


def segment_sum(ids, G, n_segments: int):
    """``out[k] = sum of G[m] over m with ids[m] == k``: ids (M,) int64, G (M, F) -> (n_segments, F).

    The Array API has no scatter-add, so rows are sorted by id, summed cumulatively and the
    sums read at the segment ends: O(M log M + (M + n_segments) F)."""
    xp = B.namespace(ids, G)
    order = xp.argsort(ids, stable=True)
    sorted_ids = xp.take(ids, order)
    S = xp.cumulative_sum(xp.take(G, order, axis=0), axis=0, include_initial=True)
    k = xp.arange(n_segments, dtype=ids.dtype, device=B.device(ids))
    lo = xp.searchsorted(sorted_ids, k, side="left")
    hi = xp.searchsorted(sorted_ids, k, side="right")
    return xp.take(S, hi, axis=0) - xp.take(S, lo, axis=0)


class HierarchicalSoftmax(Layer):
    """Hierarchical softmax output: owns the inner-node weights and computes the loss.

    ``n_in`` hidden features, ``n_classes`` = C >= 2 classes, ``tree`` is ``"balanced"`` or
    ``"huffman"`` (then ``class_counts`` (C,) non-negative class frequencies are required).
    Parameters: ``W`` (C - 1, n_in), ``b`` (C - 1,); ``init`` is ``"zeros"`` (word2vec) or an
    initializer name from :mod:`xpdnn.init`.

    * ``loss, dH = hs(H, y)`` -- H: (N, n_in) hidden features, y: (N,) labels in [0, C).  loss is
      the 0-d mean (``reduction="sum"``: sum) over examples of ``-log P(y_i | H_i)``; dH: (N, n_in);
      the node gradients are added into ``hs.grads["W"]`` / ``["b"]``.  Each example costs
      O(depth(y_i) * n_in), never O(C).
    * ``logP, backprop = hs.forward(H)`` -- full class log-probabilities (N, C), O(C log C) per
      example, for prediction; ``backprop(dlogP)`` follows the layer protocol.
    * ``hs(H)`` -- the log-probabilities alone.

    ``depths`` (C,) is each class's path length, ``n_nodes`` the number of inner nodes.
    """

    decay = ("W",)
    classification = False   # the loss protocol's flag: its inputs H are features, not class scores
    head = "features"       # the net's outputs are read through this layer (xpdnn.heads)

    def __init__(self, n_in: int, n_classes: int, *, tree: str = "balanced", class_counts=None,
                 init="lecun", reduction: str = "mean", seed: int = 0, dtype: str = "float32"):
        super().__init__(dtype)
        n_in, n_classes = int(n_in), int(n_classes)
        if n_in < 1:
            raise ValueError(f"HierarchicalSoftmax needs n_in >= 1, got {n_in}")
        if n_classes < 2:
            raise ValueError(f"HierarchicalSoftmax needs at least 2 classes, got {n_classes}")
        if tree not in TREES:
            raise ValueError(f"tree must be one of {TREES}, got {tree!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if tree == "huffman":
            if class_counts is None:
                raise ValueError("tree='huffman' needs class_counts, the frequency of each class")
            counts = np.asarray(B.to_numpy(class_counts), dtype=np.float64)
            if counts.shape != (n_classes,):
                raise ValueError(f"class_counts must have shape ({n_classes},), got {counts.shape}")
            if not np.all(np.isfinite(counts)) or np.any(counts < 0):
                raise ValueError("class_counts must be finite and non-negative")
            children = huffman_tree(counts)
            self.class_counts = counts.tolist()
        else:
            if class_counts is not None:
                raise ValueError("class_counts is used only by tree='huffman'")
            children = balanced_tree(n_classes)
            self.class_counts = None
        self._n_in, self.n_classes, self.tree = n_in, n_classes, tree
        self.init, self.reduction, self.seed = init, reduction, int(seed)
        self._nodes, self._codes = path_tables(children, n_classes)
        self.n_nodes = n_classes - 1
        self.n_neurons = self.n_nodes
        self.depths = np.count_nonzero(self._codes, axis=1)
        # static segment structure of the (C * D) path entries, for the full forward's backprop
        flat = self._nodes.reshape(-1)
        order = np.argsort(flat, kind="stable")
        k = np.arange(self.n_nodes)
        self._seg = (order, np.searchsorted(flat[order], k, "left"), np.searchsorted(flat[order], k, "right"))
        self._tables: dict = {}
        self.reset_parameters(np.random.default_rng(self.seed))

    @property
    def n_in(self):
        return self._n_in

    def reset_parameters(self, rng) -> None:
        if self.init == "zeros":     # no symmetry to break here: every node sees its own targets
            W = np.zeros((self.n_nodes, self._n_in))
        else:
            W = initializers.get(self.init)(rng, self._n_in, self.n_nodes)
        self.set_parameters(W=W, b=np.zeros((self.n_nodes,)))

    def output_size(self, n_in):
        return self.n_classes

    def get_config(self):
        return {"n_in": self._n_in, "n_classes": self.n_classes, "tree": self.tree,
                "class_counts": self.class_counts, "init": self.init if isinstance(self.init, str) else "lecun",
                "reduction": self.reduction, "seed": self.seed, "dtype": self.dtype}

    def check_targets(self, y, n_outputs=None):
        """Validate labels y: (N,) once (a host sync); returns them as int64."""
        return check_labels(y, self.n_classes)

    def _table(self, H):
        """The path tables in H's library, device and dtype (cached)."""
        xp = B.namespace(H)
        key = (xp.__name__, str(B.device(H)), B.dtype_name(H.dtype))
        if key not in self._tables:
            order, lo, hi = self._seg
            put = lambda a: B.from_numpy(a, like=H)
            self._tables[key] = (put(self._nodes), put(self._codes.astype(key[2])),
                                 put(order), put(lo.astype(np.int64)), put(hi.astype(np.int64)))
        return self._tables[key]

    def _check_H(self, H):
        if H.ndim != 2 or H.shape[1] != self._n_in:
            raise ValueError(f"HierarchicalSoftmax expects hidden features of shape (N, {self._n_in}), "
                             f"got {tuple(H.shape)}")
        self.ensure_like(H)

    def loss(self, H, y, sink=ACCUMULATE):
        """(loss: 0-d, dH: (N, n_in)) for hidden features H and labels y (see the class doc)."""
        self._check_H(H)
        xp = B.namespace(H, y)
        if y.ndim != 1 or y.shape[0] != H.shape[0]:
            raise ValueError(f"labels must have shape ({H.shape[0]},), got {tuple(y.shape)}")
        W, b = self.params["W"], self.params["b"]
        nodes_t, codes_t = self._table(H)[:2]
        N, D = H.shape[0], nodes_t.shape[1]
        y = xp.astype(y, xp.int64)
        nodes = xp.reshape(xp.take(nodes_t, y, axis=0), (N * D,))     # (N*D,)
        codes = xp.take(codes_t, y, axis=0)                              # (N, D)
        Wn = xp.reshape(xp.take(W, nodes, axis=0), (N, D, self._n_in))
        S = xp.sum(Wn * H[:, None, :], axis=2) + xp.reshape(xp.take(b, nodes), (N, D))
        # -log sigma(c s) per step; padded steps have c = 0 and are masked out
        scale = 1.0 / N if self.reduction == "mean" and N else 1.0
        loss = -xp.sum(log_sigmoid(codes * S) * (codes * codes)) * scale
        dS = -codes * sigmoid(-codes * S) * scale                       # zero on padding
        dH = xp.sum(dS[:, :, None] * Wn, axis=1)
        G = xp.concat([xp.reshape(dS[:, :, None] * H[:, None, :], (N * D, self._n_in)),
                       xp.reshape(dS, (N * D, 1))], axis=1)
        dWb = segment_sum(nodes, G, self.n_nodes)
        sink.add(self, "W", dWb[:, :self._n_in])
        sink.add(self, "b", dWb[:, self._n_in])
        return loss, dH

    def __call__(self, H, y=None, *, check: bool = True, sink=ACCUMULATE):
        """``hs(H, y)`` -> (loss, dH), the node gradients going to ``sink`` (default: added into
        ``hs.grads``); ``hs(H)`` -> log-probabilities (N, C)."""
        if y is None:
            return self.forward(H, train=False)[0]
        if check:       # a label out of range must never pick another path
            y = check_labels(y, self.n_classes)
        return self.loss(H, y, sink)

    def forward(self, H, *, train=False, rng=None):
        """Log-probabilities of every class (N, C) and their backprop (O(C log C) per example)."""
        self._check_H(H)
        xp = B.namespace(H)
        W, b = self.params["W"], self.params["b"]
        nodes_t, codes_t, order, lo, hi = self._table(H)
        N, (C, D) = H.shape[0], nodes_t.shape
        S = H @ W.T + b                                                  # (N, n_nodes)
        Sp = xp.reshape(xp.take(S, xp.reshape(nodes_t, (C * D,)), axis=1), (N, C, D))
        logP = xp.sum(log_sigmoid(codes_t * Sp) * (codes_t * codes_t), axis=2)

        def backprop(dlogP, sink=ACCUMULATE):
            dSp = xp.reshape(dlogP[:, :, None] * codes_t * sigmoid(-codes_t * Sp), (N, C * D))
            # sum the (C * D) path entries into their nodes: static segments, see segment_sum
            cum = xp.cumulative_sum(xp.take(dSp, order, axis=1), axis=1, include_initial=True)
            dS = xp.take(cum, hi, axis=1) - xp.take(cum, lo, axis=1)     # (N, n_nodes)
            sink.matmul_grad(self, "W", dS, H)
            sink.add(self, "b", xp.sum(dS, axis=0))
            return dS @ W

        return logP, backprop
