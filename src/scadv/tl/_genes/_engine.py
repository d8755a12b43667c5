"""Batched evaluation of gene-level variants of one cluster, for any classifier.

An :class:`Evaluator` holds one cluster's cells (cells × the classifier's input genes) and
answers three kinds of questions, each with as few classifier calls as possible:

``pairs``
    Many (cell, gene, new value) triples, each one cell with one gene changed: the
    single-gene scan and CGD's probes. Only cells whose value really changes are sent.
``sets``
    Many variants of the whole cluster, each changing a set of genes (each gene unmodified or
    one of several modifications): dichotomy, max-change, grid and random walk.
``commit``
    Make a change permanent (max-change's accepted genes, CGD's steps).

Three implementations:

* :class:`GenericEvaluator` stacks variants into rows and calls ``predict_proba`` once per
  batch (any row-wise classifier); a non-row-wise classifier gets one call per variant, on the
  whole cluster.
* :class:`AffineEvaluator` is exact algebra for classifiers whose first step is linear: scadv's
  MLP (a frozen PCA projection, then 256 → 128 → 64 → C) and the marker scorer. Changing gene
  *g* of a cell by δ changes the first hidden pre-activation by δ · U[g] (a rank-one update of a
  cached product), so a variant costs the layers after the first, not a 2,000-wide row.
* :class:`ForestEvaluator` is exact for scikit-learn random forests / extra-trees: changing one
  gene of a cell can only change the trees whose decision path for that cell tests the gene,
  so only those trees are re-traversed, from the first node that tests it (no rows are built).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ... import _model as M
from ..._errors import ScadvInputError
from ...classifiers import Classifier

#: Floats of stacked input rows per classifier call in the generic path (64 MB).
_GENERIC_FLOATS = 1 << 24
#: Refresh the affine cache from scratch after this many commits (float32 drift).
_REFRESH_EVERY = 64


class _Tree(Protocol):
    """The arrays of a fitted scikit-learn tree (``estimator.tree_``) this module reads."""

    @property
    def children_left(self) -> np.ndarray: ...
    @property
    def children_right(self) -> np.ndarray: ...
    @property
    def feature(self) -> np.ndarray: ...
    @property
    def threshold(self) -> np.ndarray: ...
    @property
    def value(self) -> np.ndarray: ...


class _Forest(Protocol):
    """A fitted scikit-learn tree or tree ensemble (what :meth:`Classifier._forest` returns)."""

    @property
    def classes_(self) -> np.ndarray: ...


class _Progress(Protocol):
    """A progress bar (``tqdm``)."""

    def update(self, n: int = 1) -> object: ...


@dataclass
class Counter:
    """Classifier calls and rows (cells) classified, for the benchmarks and the records."""

    calls: int = 0
    rows: int = 0


def decide(counts: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster decision from per-class label counts and probability sums (last axis: classes).

    The majority label; ties go to the label with the higher mean probability. Returns the
    label and its mean probability (the cluster's score).
    """
    n = counts.sum(axis=-1, keepdims=True)
    key = counts + sums / (n + 1.0)
    label = key.argmax(axis=-1)
    score = np.take_along_axis(sums, label[..., None], axis=-1)[..., 0] / np.maximum(n[..., 0], 1)
    return label, score


def decide_proba(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cluster decision of variants, from probabilities (…, cells, classes)."""
    c = proba.shape[-1]
    labels = proba.argmax(axis=-1)
    counts = (labels[..., None] == np.arange(c)).sum(axis=-2)
    return decide(counts, proba.sum(axis=-2, dtype=np.float64))


class Evaluator:
    """One cluster's cells and batched questions about variants of them (see the module)."""

    def __init__(self, clf: Classifier, block: np.ndarray, *, counter: Counter,
                 batch_rows: int) -> None:
        self.clf = clf
        self.block = np.array(block, dtype=np.float32, order="C")
        self.n, self.d = self.block.shape
        self.counter = counter
        self.batch_rows = max(int(batch_rows), 1)
        self.proba = self._current()

    # ---- what subclasses provide -----------------------------------------------------------

    def _current(self) -> np.ndarray:
        """Probabilities of the current block (one call)."""
        raise NotImplementedError

    def pairs(self, cells: np.ndarray, genes: np.ndarray, values: np.ndarray,
              variant: np.ndarray | None = None) -> np.ndarray:
        """Probabilities (P × C) of cell ``cells[i]`` with gene ``genes[i]`` set to ``values[i]``.

        ``variant`` groups pairs that belong to one variant of the cluster (only a
        non-row-wise classifier needs it; pairs of one variant are contiguous).
        """
        raise NotImplementedError

    def sets(self, genes: np.ndarray, choice: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Probabilities (V × cells × C) of variants of the whole cluster.

        Variant ``v`` sets gene ``genes[j]`` to ``values[choice[v, j] - 1, :, j]`` where
        ``choice[v, j] > 0`` and leaves it unchanged where it is 0.
        """
        raise NotImplementedError

    def commit(self, genes: np.ndarray, values: np.ndarray) -> None:
        """Make ``block[:, genes] = values`` the new current state."""
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------------

    @property
    def n_classes(self) -> int:
        return self.proba.shape[1]

    @property
    def pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def prefixes(self, genes: np.ndarray, values: np.ndarray, lengths: np.ndarray
                 ) -> np.ndarray:
        """Probabilities (V × cells × C): variant ``v`` sets the first ``lengths[v]`` genes."""
        choice = (np.arange(len(genes))[None, :] < np.asarray(lengths)[:, None]).astype(np.int8)
        return self.sets(genes, choice, values[None])

    def _call(self, x: np.ndarray) -> np.ndarray:
        """One classifier call, validated and counted."""
        self.counter.calls += 1
        self.counter.rows += len(x)
        proba = self.clf.predict_proba(np.ascontiguousarray(x, dtype=np.float32))
        proba = np.asarray(proba, dtype=np.float32)
        if proba.shape != (len(x), len(self.clf.classes)):
            raise ScadvInputError(
                f"{self.clf.describe()} returned probabilities of shape {proba.shape} for "
                f"{len(x)} cells and {len(self.clf.classes)} classes."
            )
        if not np.isfinite(proba).all():
            raise ScadvInputError(f"{self.clf.describe()} returned NaN or infinite probabilities.")
        return proba


def _gather_sets(cur: np.ndarray, choice: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(V × cells × k) values of the chosen genes in each variant."""
    full = np.concatenate([cur[None], values], axis=0)  # (M+1, n, k)
    n, k = cur.shape
    return full[choice[:, None, :], np.arange(n)[None, :, None], np.arange(k)[None, None, :]]


class GenericEvaluator(Evaluator):
    """Stacked rows through ``predict_proba`` (any classifier)."""

    def _current(self) -> np.ndarray:
        return self._rows(self.block)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        step = max(1, min(self.batch_rows, _GENERIC_FLOATS // max(self.d, 1)))
        if len(x) <= step:
            return self._call(x)
        return np.concatenate([self._call(x[lo:lo + step]) for lo in range(0, len(x), step)])

    def pairs(self, cells: np.ndarray, genes: np.ndarray, values: np.ndarray,
              variant: np.ndarray | None = None) -> np.ndarray:
        if not len(cells):
            return np.empty((0, self.n_classes), dtype=np.float32)
        if self.clf.rowwise:
            step = max(1, min(self.batch_rows, _GENERIC_FLOATS // max(self.d, 1)))
            parts = []
            for lo in range(0, len(cells), step):
                c, g, v = cells[lo:lo + step], genes[lo:lo + step], values[lo:lo + step]
                rows = self.block[c]
                rows[np.arange(len(c)), g] = v
                parts.append(self._call(rows))
            return np.concatenate(parts)
        if variant is None:
            variant = np.arange(len(cells))
        out = np.empty((len(cells), self.n_classes), dtype=np.float32)
        starts = np.flatnonzero(np.r_[True, variant[1:] != variant[:-1]])
        for first, end in zip(starts, np.r_[starts[1:], len(cells)], strict=True):
            x = self.block.copy()
            x[cells[first:end], genes[first:end]] = values[first:end]
            out[first:end] = self._call(x)[cells[first:end]]
        return out

    def sets(self, genes: np.ndarray, choice: np.ndarray, values: np.ndarray) -> np.ndarray:
        n_var = len(choice)
        out = np.empty((n_var, self.n, self.n_classes), dtype=np.float32)
        cur = self.block[:, genes]
        per_call = 1 if not self.clf.rowwise else max(
            1, min(self.batch_rows, _GENERIC_FLOATS // max(self.d, 1)) // self.n)
        for lo in range(0, n_var, per_call):
            hi = min(lo + per_call, n_var)
            x = np.repeat(self.block[None], hi - lo, axis=0)
            x[:, :, genes] = _gather_sets(cur, choice[lo:hi], values)
            out[lo:hi] = self._call(x.reshape(-1, self.d)).reshape(hi - lo, self.n, -1)
        return out

    def commit(self, genes: np.ndarray, values: np.ndarray) -> None:
        self.block[:, genes] = values
        self.proba = self._current()


class AffineEvaluator(Evaluator):
    """Exact rank-k updates of a cached first layer (scadv's MLP, linear scorers).

    The first pre-activation is ``a = Wb (Wa x + ba) + bb`` (``Wb`` absent for a single
    layer); what follows is ``tail``: ReLU and the remaining layers for the MLP, a temperature
    for a linear scorer. ``H = Wa x + ba`` and ``A = a`` are cached for the current block.
    """

    def __init__(self, clf: Classifier, block: np.ndarray, *, counter: Counter,
                 batch_rows: int, wa: torch.Tensor, ba: torch.Tensor, wb: torch.Tensor | None,
                 bb: torch.Tensor | None, layers: list[nn.Linear] | None, temperature: float,
                 device: torch.device) -> None:
        if (wb is None) != (bb is None):
            raise ValueError("the second affine step needs both its weights and its bias.")
        self.device = device
        self.wa, self.ba, self.wb, self.bb = wa, ba, wb, bb
        self.layers = layers  # None: linear scorer (no ReLU)
        self.temperature = float(temperature)
        self.output = clf._output()  # how logits become the classifier's probabilities
        # U[g] = d a / d x_g (genes × first hidden width), for the rank-one pairs
        self.u = (wb @ wa).t().contiguous() if wb is not None else wa.t().contiguous()
        self._commits = 0
        super().__init__(clf, block, counter=counter, batch_rows=batch_rows)

    @classmethod
    def for_classifier(cls, clf: Classifier, block: np.ndarray, *, counter: Counter,
                       batch_rows: int) -> AffineEvaluator | None:
        """The affine evaluator of ``clf``, or ``None`` when it has no affine first step."""
        if (mlp := clf._mlp()) is not None:
            net, device = mlp
            net.eval()
            linears = [m for m in net.body if isinstance(m, nn.Linear)]
            first, rest = linears[0], [*linears[1:], net.head]
            if isinstance(net.input, nn.Linear):
                wa, ba = net.input.weight.detach(), net.input.bias.detach()
                wb, bb = first.weight.detach(), first.bias.detach()
            else:
                wa, ba, wb, bb = first.weight.detach(), first.bias.detach(), None, None
            return cls(clf, block, counter=counter, batch_rows=batch_rows, wa=wa, ba=ba, wb=wb,
                       bb=bb, layers=rest, temperature=1.0, device=device)
        if (lin := clf._linear()) is not None:
            w, b, temperature = lin
            dev = torch.device("cpu")
            return cls(clf, block, counter=counter, batch_rows=batch_rows,
                       wa=torch.as_tensor(w, dtype=torch.float32),
                       ba=torch.as_tensor(b, dtype=torch.float32), wb=None, bb=None,
                       layers=None, temperature=temperature, device=dev)
        return None

    # ---- the network after the first pre-activation ------------------------------------------

    def _pre(self, h: torch.Tensor) -> torch.Tensor:
        if self.wb is None or self.bb is None:  # a single affine step (both None together)
            return h
        return torch.addmm(self.bb, h, self.wb.t())

    @torch.no_grad()
    def _proba_from_pre(self, a: torch.Tensor, *, inplace: bool = False) -> np.ndarray:
        """Softmax of the logits, given first pre-activations (rows × width); one call.
        ``inplace``: ``a`` may be overwritten."""
        self.counter.calls += 1
        self.counter.rows += a.shape[0]
        if self.layers is None:
            logits = a / self.temperature
        else:
            h = a.clamp_(min=0) if inplace else torch.relu(a)
            for i, lin in enumerate(self.layers):
                h = torch.addmm(lin.bias, h, lin.weight.t())
                if i < len(self.layers) - 1:
                    h.clamp_(min=0)
            logits = h
        return M.probabilities_torch(logits, self.output).cpu().numpy()

    def _t(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)

    @torch.no_grad()
    def _current(self) -> np.ndarray:
        self.h = torch.addmm(self.ba, self._t(self.block), self.wa.t())
        self.a = self._pre(self.h)
        return self._proba_from_pre(self.a)

    # ---- questions -------------------------------------------------------------------------

    @torch.no_grad()
    def pairs(self, cells: np.ndarray, genes: np.ndarray, values: np.ndarray,
              variant: np.ndarray | None = None) -> np.ndarray:
        if not len(cells):
            return np.empty((0, self.n_classes), dtype=np.float32)
        out = []
        for lo in range(0, len(cells), self.batch_rows):
            c = torch.as_tensor(cells[lo:lo + self.batch_rows], device=self.device)
            g = torch.as_tensor(genes[lo:lo + self.batch_rows], device=self.device)
            delta = self._t(values[lo:lo + self.batch_rows]
                            - self.block[cells[lo:lo + self.batch_rows],
                                         genes[lo:lo + self.batch_rows]])
            a = self.a.index_select(0, c)
            a.addcmul_(self.u.index_select(0, g), delta[:, None])
            out.append(self._proba_from_pre(a, inplace=True))
        return np.concatenate(out)

    @torch.no_grad()
    def sets(self, genes: np.ndarray, choice: np.ndarray, values: np.ndarray) -> np.ndarray:
        n_var, k = choice.shape
        out = np.empty((n_var, self.n, self.n_classes), dtype=np.float32)
        if n_var == 0:
            return out
        cur = self.block[:, genes]
        delta = self._t(values - cur[None])  # (M, n, k)
        wa_g = self.wa[:, torch.as_tensor(genes, device=self.device)]  # (r, k)
        sparse_ok = np.count_nonzero(choice) < 0.25 * choice.size
        per_call = max(1, self.batch_rows // self.n)
        if not sparse_ok:  # the dense path holds variants × cells × genes deltas
            per_call = max(1, min(per_call, (1 << 22) // max(self.n * k, 1)))
        for lo in range(0, n_var, per_call):
            hi = min(lo + per_call, n_var)
            ch = choice[lo:hi]
            if sparse_ok:
                h = self._sets_sparse(ch, delta, wa_g)
            else:
                full = torch.cat([torch.zeros_like(delta[:1]), delta], dim=0)  # (M+1, n, k)
                idx = torch.as_tensor(ch, dtype=torch.long, device=self.device)
                d_v = full[idx[:, None, :], torch.arange(self.n, device=self.device)[None, :, None],
                           torch.arange(k, device=self.device)[None, None, :]]
                h = (d_v.reshape(-1, k) @ wa_g.t()).view(hi - lo, self.n, -1)
                h += self.h[None]
            a = self._pre(h.reshape(-1, h.shape[-1]))
            out[lo:hi] = self._proba_from_pre(a).reshape(hi - lo, self.n, -1)
        return out

    def _sets_sparse(self, ch: np.ndarray, delta: torch.Tensor, wa_g: torch.Tensor
                     ) -> torch.Tensor:
        """First-factor outputs of variants that change few genes: one rank-one update per
        (variant, gene), accumulated with ``index_add_``."""
        h = self.h[None].repeat(len(ch), 1, 1)  # (V, n, r)
        v_idx, j_idx = np.nonzero(ch)
        m_idx = ch[v_idx, j_idx].astype(np.int64) - 1
        step = max(1, (1 << 22) // max(self.n * wa_g.shape[0], 1))
        for lo in range(0, len(v_idx), step):
            v = torch.as_tensor(v_idx[lo:lo + step], device=self.device)
            j = torch.as_tensor(j_idx[lo:lo + step], device=self.device)
            m = torch.as_tensor(m_idx[lo:lo + step], device=self.device)
            d = delta[m, :, j]  # (E, n)
            contrib = d[:, :, None] * wa_g.t()[j][:, None, :]  # (E, n, r)
            h.index_add_(0, v, contrib)
        return h

    @torch.no_grad()
    def prefixes(self, genes: np.ndarray, values: np.ndarray, lengths: np.ndarray
                 ) -> np.ndarray:
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        bounds = np.r_[0, lengths[order]]
        delta = self._t(values - self.block[:, genes])
        wa_g = self.wa[:, torch.as_tensor(genes, device=self.device)]
        h = self.h.clone()
        hs = torch.empty((len(lengths), *self.h.shape), device=self.device)
        for i in range(len(order)):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if hi > lo:
                h += delta[:, lo:hi] @ wa_g[:, lo:hi].t()
            hs[order[i]] = h
        out = np.empty((len(lengths), self.n, self.n_classes), dtype=np.float32)
        per_call = max(1, self.batch_rows // self.n)
        for lo in range(0, len(lengths), per_call):
            hi = min(lo + per_call, len(lengths))
            a = self._pre(hs[lo:hi].reshape(-1, hs.shape[-1]))
            out[lo:hi] = self._proba_from_pre(a).reshape(hi - lo, self.n, -1)
        return out

    @torch.no_grad()
    def commit(self, genes: np.ndarray, values: np.ndarray) -> None:
        genes = np.asarray(genes)
        values = np.asarray(values, dtype=np.float32).reshape(self.n, len(genes))
        delta = self._t(values - self.block[:, genes])
        self.block[:, genes] = values
        self._commits += 1
        if self._commits % _REFRESH_EVERY == 0:
            self.proba = self._current()
            return
        self.h += delta @ self.wa[:, torch.as_tensor(genes, device=self.device)].t()
        self.a = self._pre(self.h)
        self.proba = self._proba_from_pre(self.a)


class ForestEvaluator(GenericEvaluator):
    """Exact partial re-traversal of a scikit-learn tree ensemble (see the module) for single
    genes; variants of many genes (``sets``) go through the stacked rows of the parent."""

    def __init__(self, clf: Classifier, block: np.ndarray, *, counter: Counter,
                 batch_rows: int, forest: _Forest) -> None:
        self.forest = forest
        self.trees: list[_Tree] = [t.tree_ for t in getattr(forest, "estimators_", [forest])]
        # leaf class distributions, normalised as DecisionTreeClassifier.predict_proba does
        self.leaf_proba = []
        for t in self.trees:
            v = np.asarray(t.value[:, 0, :], dtype=np.float64)
            s = v.sum(axis=1, keepdims=True)
            self.leaf_proba.append(v / np.where(s == 0, 1.0, s))
        # the forest's classes may be a subset of / ordered differently from clf.classes
        self.n_trees = len(self.trees)
        super().__init__(clf, block, counter=counter, batch_rows=batch_rows)

    def _current(self) -> np.ndarray:
        self.counter.calls += 1
        self.counter.rows += self.n
        x = self.block
        self.paths = []  # per tree: (n, depth) node ids on each cell's path, -1 padded
        self.leaves = np.empty((self.n_trees, self.n), dtype=np.int64)
        proba = np.zeros((self.n, self.leaf_proba[0].shape[1]), dtype=np.float64)
        for i, t in enumerate(self.trees):
            path = _paths(t, x)
            self.paths.append(path)
            leaf = path[np.arange(self.n), (path >= 0).sum(axis=1) - 1]
            self.leaves[i] = leaf
            proba += self.leaf_proba[i][leaf]
        self.base_sum = proba
        return (proba / self.n_trees).astype(np.float32)

    def pairs(self, cells: np.ndarray, genes: np.ndarray, values: np.ndarray,
              variant: np.ndarray | None = None) -> np.ndarray:
        if not len(cells):
            return np.empty((0, self.n_classes), dtype=np.float32)
        self.counter.calls += 1
        self.counter.rows += len(cells)
        total = self.base_sum[cells].copy()
        vals32 = np.asarray(values, dtype=np.float32).astype(np.float64)
        for i, t in enumerate(self.trees):
            path = self.paths[i][cells]  # (P, depth)
            feat = np.where(path >= 0, t.feature[np.maximum(path, 0)], -2)
            hit = feat == genes[:, None]
            touched = hit.any(axis=1)
            if not touched.any():
                continue
            rows = np.flatnonzero(touched)
            start = path[rows, hit[rows].argmax(axis=1)]  # first node on the path testing the gene
            leaf = _descend(t, self.block, cells[rows], start, genes[rows], vals32[rows])
            old = self.leaves[i, cells[rows]]
            moved = leaf != old
            if moved.any():
                r = rows[moved]
                total[r] += self.leaf_proba[i][leaf[moved]] - self.leaf_proba[i][old[moved]]
        return (total / self.n_trees).astype(np.float32)

    def scan(self, gene_cols: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Single-gene scan without building a row: per tree, the nodes on each cell's path
        whose decision a variant flips; only from the first such node is the tree re-traversed.

        Returns label counts and probability sums (modifications × genes × classes).
        """
        n_mod, n, k = values.shape
        col_to_j = np.full(self.d, -1, dtype=np.int64)
        live = np.flatnonzero(gene_cols >= 0)
        col_to_j[gene_cols[live]] = live
        keys, deltas = [], []
        for i, t in enumerate(self.trees):
            path = self.paths[i]
            internal = (path >= 0) & (t.children_left[np.maximum(path, 0)] >= 0)
            cell, depth = np.nonzero(internal)  # row-major: each cell's nodes from the root
            node = path[cell, depth]
            f = t.feature[node]
            j = col_to_j[f]
            keep = j >= 0
            cell, node, f, j = cell[keep], node[keep], f[keep], j[keep]
            thr = t.threshold[node]
            old_left = self.block[cell, f].astype(np.float64) <= thr
            for m in range(n_mod):
                new = values[m, cell, j].astype(np.float32).astype(np.float64)
                new_left = new <= thr
                flip = new_left != old_left
                if not flip.any():
                    continue
                fc, fj, fnode, fnew = cell[flip], j[flip], node[flip], new[flip]
                key = fc * k + fj  # first flipping node per (cell, gene): entries are in path order
                _, first = np.unique(key, return_index=True)
                fc, fj, fnode, fnew = fc[first], fj[first], fnode[first], fnew[first]
                start = np.where(fnew <= t.threshold[fnode], t.children_left[fnode],
                                 t.children_right[fnode])
                leaf = _descend(t, self.block, fc, start, gene_cols[fj], fnew)
                old = self.leaves[i, fc]
                moved = leaf != old
                if moved.any():
                    keys.append((m * k + fj[moved]) * n + fc[moved])
                    deltas.append(self.leaf_proba[i][leaf[moved]] - self.leaf_proba[i][old[moved]])
        c = self.n_classes
        base_pred = self.pred
        counts = np.broadcast_to(np.bincount(base_pred, minlength=c),
                                 (n_mod * k, c)).astype(np.int64)
        sums = np.broadcast_to(self.proba.sum(axis=0, dtype=np.float64), (n_mod * k, c)).copy()
        if keys:
            key = np.concatenate(keys)
            delta = np.concatenate(deltas)
            order = np.argsort(key, kind="stable")
            key, delta = key[order], delta[order]
            uniq, start = np.unique(key, return_index=True)
            total = np.add.reduceat(delta, start, axis=0)
            var, cell = uniq // n, uniq % n
            proba = ((self.base_sum[cell] + total) / self.n_trees)
            new = proba.argmax(axis=1)
            counts += (np.bincount(var * c + new, minlength=n_mod * k * c)
                       - np.bincount(var * c + base_pred[cell], minlength=n_mod * k * c)
                       ).reshape(-1, c)
            dp = proba - self.proba[cell]
            for cls in range(c):
                sums[:, cls] += np.bincount(var, weights=dp[:, cls], minlength=n_mod * k)
        return counts.reshape(n_mod, k, c), sums.reshape(n_mod, k, c)



def _paths(tree: _Tree, x: np.ndarray) -> np.ndarray:
    """Node ids on each row's decision path (rows × max depth + 1, padded with -1)."""
    left, right = tree.children_left, tree.children_right
    feature, threshold = tree.feature, tree.threshold
    n = len(x)
    node = np.zeros(n, dtype=np.int64)
    cols = [node.copy()]
    rows = np.arange(n)
    active = left[node] >= 0
    while active.any():
        nd = node[active]
        go_left = x[rows[active], feature[nd]].astype(np.float64) <= threshold[nd]
        node = node.copy()
        node[active] = np.where(go_left, left[nd], right[nd])
        step = np.full(n, -1, dtype=np.int64)
        step[active] = node[active]
        cols.append(step)
        active = (node >= 0) & (left[np.maximum(node, 0)] >= 0) & active
    return np.stack(cols, axis=1)


def _descend(tree: _Tree, block: np.ndarray, cells: np.ndarray, start: np.ndarray,
             gene: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Leaves reached from nodes ``start`` by rows of ``block`` with one gene replaced."""
    left, right = tree.children_left, tree.children_right
    feature, threshold = tree.feature, tree.threshold
    node = start.copy()
    active = left[node] >= 0
    while active.any():
        idx = np.flatnonzero(active)
        nd = node[idx]
        f = feature[nd]
        x = block[cells[idx], f].astype(np.float64)
        x = np.where(f == gene[idx], value[idx], x)
        node[idx] = np.where(x <= threshold[nd], left[nd], right[nd])
        active[idx] = left[node[idx]] >= 0
    return node


def evaluator(clf: Classifier, block: np.ndarray, *, counter: Counter, batch_rows: int,
              fast: bool = True) -> Evaluator:
    """The fastest exact evaluator for ``clf`` (``fast=False``: always the generic one)."""
    if fast and clf.rowwise:
        ev = AffineEvaluator.for_classifier(clf, block, counter=counter, batch_rows=batch_rows)
        if ev is not None:
            return ev
        forest = clf._forest()
        if forest is not None and _forest_matches(forest, clf):
            return ForestEvaluator(clf, block, counter=counter, batch_rows=batch_rows,
                                   forest=forest)
    return GenericEvaluator(clf, block, counter=counter, batch_rows=batch_rows)


def _forest_matches(forest: _Forest, clf: Classifier) -> bool:
    """The forest's probabilities are exactly its trees' mean (no sample weights tricks)."""
    return len(np.asarray(forest.classes_)) == len(clf.classes)


def single_gene_scan(ev: Evaluator, gene_cols: np.ndarray, values: np.ndarray, *,
                     bar: _Progress | None = None, labels_only: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (modification, gene) variant of the cluster, one gene at a time.

    Parameters
    ----------
    ev
        The cluster's evaluator.
    gene_cols
        Per scanned gene, its column in the classifier's input (-1: the classifier does not
        read it, so changing it changes nothing).
    values
        (modifications × cells × genes) new values.
    bar
        Progress bar advanced by the number of (modification, gene) variants done.
    labels_only
        Only the cluster's label is needed: cells are classified in two stages, and a variant
        whose label can no longer change after the first stage (the original label keeps a
        majority whatever the remaining cells do) is not classified further. Its counts and
        sums then hold the classified cells and the base values of the others: its label is
        exact, its score approximate.

    Returns
    -------
    Per variant (modifications × genes × classes): label counts and probability sums over the
    cluster's cells, and (modifications × genes) the number of cells whose value changed.
    """
    n_mod, n, k = values.shape
    c = ev.n_classes
    base_pred = ev.pred
    live = gene_cols >= 0
    cur = ev.block[:, np.where(live, gene_cols, 0)]
    changed = (values != cur[None]) & live[None, None, :]  # (M, n, k)
    changed = np.ascontiguousarray(changed.transpose(0, 2, 1)).reshape(n_mod * k, n)
    per_variant = changed.sum(axis=1)
    counts = np.broadcast_to(np.bincount(base_pred, minlength=c), (n_mod * k, c)).astype(np.int64)
    sums = np.broadcast_to(ev.proba.sum(axis=0, dtype=np.float64), (n_mod * k, c)).copy()
    if isinstance(ev, ForestEvaluator):
        counts, sums = ev.scan(gene_cols, values)
        ev.counter.calls += 1
        ev.counter.rows += int(per_variant.sum())
        if bar is not None:
            bar.update(n_mod * k)
        return counts, sums, per_variant.reshape(n_mod, k)
    split = _first_stage(base_pred, c) if labels_only else n
    if split < n:
        stage1 = changed.copy()
        stage1[:, split:] = False
        _accumulate(ev, stage1, gene_cols, values, k, counts, sums, None)
        # undecided: the original label could still lose if every unclassified changed cell
        # moved to the strongest other label
        base = int(np.bincount(base_pred, minlength=c).argmax())
        others = np.delete(counts, base, axis=1).max(axis=1) if c > 1 else 0
        pending = changed[:, split:].sum(axis=1)
        undecided = counts[:, base] <= others + 2 * pending
        stage2 = changed & undecided[:, None]
        stage2[:, :split] = False
        _accumulate(ev, stage2, gene_cols, values, k, counts, sums, None)
        if bar is not None:
            bar.update(n_mod * k)
    else:
        _accumulate(ev, changed, gene_cols, values, k, counts, sums, bar)
    return counts.reshape(n_mod, k, c), sums.reshape(n_mod, k, c), per_variant.reshape(n_mod, k)


def _first_stage(base_pred: np.ndarray, c: int) -> int:
    """Cells classified in the first stage: enough that, if they keep their labels, the
    original label's lead over any other label (over all cells) exceeds what the remaining
    cells could take away (two per cell), with a margin of 5% of the cells for the ones that
    do change; all cells when the lead is too small to stop early."""
    n = len(base_pred)
    counts = np.bincount(base_pred, minlength=c)
    base = int(counts.argmax())
    lead = counts[base] - (np.delete(counts, base).max() if c > 1 else 0)
    rest = (lead - 0.05 * n) / 2  # cells that may stay unclassified
    return n if rest < 1 else int(np.clip(np.ceil(n - rest) + 1, 1, n))


def _accumulate(ev: Evaluator, changed: np.ndarray, gene_cols: np.ndarray, values: np.ndarray,
                k: int, counts: np.ndarray, sums: np.ndarray, bar: _Progress | None) -> None:
    """Classify the changed (variant, cell) pairs and add their effect to counts and sums."""
    c = ev.n_classes
    base_pred = ev.pred
    n_var = changed.shape[0]
    ends = np.cumsum(changed.sum(axis=1))
    lo = 0
    while lo < n_var:
        # as many whole variants as fit in one batch (at least one)
        budget = (ends[lo - 1] if lo else 0) + ev.batch_rows
        hi = min(max(lo + 1, int(np.searchsorted(ends, budget, side="right"))), n_var)
        vi, ci = np.nonzero(changed[lo:hi])
        if len(vi):
            var = vi + lo
            m, j = var // k, var % k
            proba = ev.pairs(ci, gene_cols[j], values[m, ci, j], variant=var)
            new = proba.argmax(axis=1)
            nv = hi - lo
            counts[lo:hi] += (np.bincount(vi * c + new, minlength=nv * c)
                              - np.bincount(vi * c + base_pred[ci], minlength=nv * c)
                              ).reshape(nv, c)
            dp = proba.astype(np.float64) - ev.proba[ci]
            for cls in range(c):
                sums[lo:hi, cls] += np.bincount(vi, weights=dp[:, cls], minlength=nv)
        if bar is not None:
            bar.update(hi - lo)
        lo = hi
