"""The batched evaluators of the gene attacks agree with classifying every variant's rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from scadv import classifiers as CL
from scadv.tl._genes import _common as G
from scadv.tl._genes import _engine as E
from scadv.tl._genes import _modifications as MOD
from tests.conftest import model_genes, prepared_x


def _setup(adata, classifier, cluster="type0", cluster_key="cell_type"):
    s = G.setup(adata, cluster_key=cluster_key, classifier=classifier, layer=None,
                device="cpu", action="test")
    mask = G.cluster_mask(s, cluster)
    blk = G.block(s, mask)
    idx = G.gene_index(s, None)
    mods = MOD.parse_many(["perc1", "perc99", "decile+2"])
    values = G.values_for(s, mods, idx, mask, 0, cluster)
    return s, blk, idx, G.classifier_cols(s, idx), values


def _both(s, blk, batch_rows=97):
    fast = G.evaluator(s, blk, batch_rows=batch_rows)
    slow = G.evaluator(s, blk, batch_rows=batch_rows, fast=False)
    return fast, slow


@pytest.mark.parametrize("kind", ["mlp", "marker", "forest", "extra_trees"])
def test_fast_evaluators_match_stacked_rows(small_trained, kind):
    a = small_trained
    if kind == "mlp":
        clf = None
    elif kind == "marker":
        clf = CL.MarkerClassifier({f"type{i}": list(model_genes(a)[i * 15:i * 15 + 3])
                                   for i in range(3)})
    else:
        est = RandomForestClassifier if kind == "forest" else ExtraTreesClassifier
        clf = est(n_estimators=12, random_state=0).fit(prepared_x(a),
                                                       a.obs["cell_type"].astype(str))
    s, blk, _idx, cols, values = _setup(a, clf)
    live = cols >= 0  # genes the classifier reads (all but the marker scorer's non-markers)
    cols, values = cols[live], values[:, :, live]
    fast, slow = _both(s, blk)
    assert type(fast) is not E.GenericEvaluator
    assert type(slow) is E.GenericEvaluator
    np.testing.assert_allclose(fast.proba, slow.proba, atol=1e-5)
    rng = np.random.default_rng(0)
    n = len(blk)
    # single-gene pairs
    cells = rng.integers(0, n, 300)
    genes = rng.integers(0, len(cols), 300)
    vals = values[rng.integers(0, 3, 300), cells, genes]
    np.testing.assert_allclose(fast.pairs(cells, cols[genes], vals),
                               slow.pairs(cells, cols[genes], vals), atol=1e-5)
    # whole scan, with and without the two-stage shortcut
    c1, s1, n1 = E.single_gene_scan(fast, cols, values)
    c2, s2, n2 = E.single_gene_scan(slow, cols, values)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(s1, s2, atol=1e-3)
    np.testing.assert_array_equal(n1, n2)
    c3, s3, _ = E.single_gene_scan(fast, cols, values, labels_only=True)
    np.testing.assert_array_equal(E.decide(c1, s1)[0], E.decide(c3, s3)[0])
    # sets of genes (sparse and dense choices) and prefixes
    k = len(cols)
    choice = np.zeros((7, k), dtype=np.int8)
    choice[0, :5] = 1
    choice[1, ::2] = 2
    choice[2] = rng.integers(0, 4, k)
    choice[3, rng.integers(0, k, 3)] = 3
    np.testing.assert_allclose(fast.sets(cols, choice, values), slow.sets(cols, choice, values),
                               atol=1e-5)
    lengths = np.array([1, 7, 3, k])
    np.testing.assert_allclose(fast.prefixes(cols, values[1], lengths),
                               slow.prefixes(cols, values[1], lengths), atol=1e-5)
    # commits change the state identically
    for ev in (fast, slow):
        ev.commit(cols[:4], values[1][:, :4])
        ev.commit(cols[10:11], values[0][:, 10:11])
    np.testing.assert_allclose(fast.proba, slow.proba, atol=1e-5)
    np.testing.assert_array_equal(fast.block, slow.block)


def test_only_changed_cells_are_classified(small_trained):
    s, blk, _idx, cols, values = _setup(small_trained, None)
    ev = G.evaluator(s, blk, batch_rows=10_000)
    before = s.counter.rows
    _, _, n_changed = E.single_gene_scan(ev, cols, values)
    assert s.counter.rows - before == n_changed.sum() < values.size


def test_non_rowwise_function_sees_whole_clusters(small_trained):
    """A classifier that normalises over the cells it is given is called on whole clusters."""
    a = small_trained
    seen = []

    def centred(x):
        seen.append(len(x))
        z = x[:, :2] - x[:, :2].mean(axis=0)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    clf = CL.FunctionClassifier(centred, classes=["u", "v"], rowwise=False)
    s, blk, _idx, cols, values = _setup(a, clf)
    ev = G.evaluator(s, blk, batch_rows=50)
    E.single_gene_scan(ev, cols[:6], values[:, :, :6])
    assert set(seen) == {len(blk)}


def test_decide_majority_then_probability():
    counts = np.array([[3, 3, 1], [5, 1, 1]])
    sums = np.array([[1.0, 2.0, 0.5], [2.0, 0.9, 0.8]])
    label, score = E.decide(counts, sums)
    np.testing.assert_array_equal(label, [1, 0])
    np.testing.assert_allclose(score, [2.0 / 7, 2.0 / 7])
