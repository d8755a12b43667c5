"""scadv.classifiers: the adapters the gene-level attacks question."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC, LinearSVC

import scadv
from scadv import classifiers as CL
from scadv._errors import ScadvInputError
from tests.conftest import make_model_space, model_genes, prepared_x, two_gene_rule


def test_marker_scores_are_mean_positive_minus_mean_negative():
    genes = ["a", "b", "c", "d"]
    clf = CL.MarkerClassifier({"T1": {"positive": ["a", "b"], "negative": ["c"]},
                               "T2": ["d"]}).bind(genes)
    x = np.array([[1.0, 3.0, 2.0, 0.5], [0.0, 0.0, -1.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(clf.scores(x), [[2.0 - 2.0, 0.5], [0.0 + 1.0, 4.0]])
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert clf.classes == ["T1", "T2"]
    assert list(np.asarray(genes)[clf._relevant()]) == genes  # every gene is a marker here


def test_marker_classifier_names_missing_markers():
    with pytest.raises(ScadvInputError, match="include_genes"):
        CL.MarkerClassifier({"B": ["MS4A1", "NOT_A_GENE"]}).bind(["MS4A1", "CD3E"])
    with pytest.raises(ScadvInputError, match="no positive marker"):
        CL.MarkerClassifier({"B": {"negative": ["CD3E"]}})


def test_pbmc_markers_classify_pbmc3k_better_than_chance(pbmc3k_markers):
    """The built-in scorer is a real (if weak) classifier: well above the 26% majority rate."""
    a = pbmc3k_markers
    clf = CL.MarkerClassifier(CL.PBMC_MARKERS).bind(model_genes(a))
    pred = np.asarray(clf.classes)[clf.predict_proba(prepared_x(a)).argmax(axis=1)]
    labelled = a.obs["cell_type"].notna().to_numpy()
    acc = (pred[labelled] == a.obs["cell_type"].astype(str).to_numpy()[labelled]).mean()
    assert acc > 0.6  # measured 0.66


def test_sklearn_adapter_and_errors():
    a = make_model_space()
    y = a.obs["cluster"].astype(str)
    clf = CL.resolve(LogisticRegression().fit(a.X, y), a).bind(a.var_names)
    assert isinstance(clf, CL.SklearnClassifier)
    assert clf.classes == ["A", "B"]
    assert clf.predict_proba(a.X).shape == (a.n_obs, 2)
    with pytest.raises(ScadvInputError, match="predict_proba"):
        CL.resolve(LinearSVC().fit(a.X, y), a)
    with pytest.raises(ScadvInputError, match="probability=True"):
        CL.resolve(SVC().fit(a.X, y), a)
    with pytest.raises(ScadvInputError, match="fitted on 3 genes"):
        CL.resolve(LogisticRegression().fit(a.X[:, :3], y), a).bind(a.var_names)


def test_sklearn_adapter_uses_feature_names():
    a = make_model_space()
    frame = pd.DataFrame(a.X[:, [3, 0, 1]], columns=["g3", "g0", "g1"])
    est = LogisticRegression().fit(frame, a.obs["cluster"].astype(str))
    clf = CL.SklearnClassifier(est).bind(a.var_names)
    np.testing.assert_array_equal(clf.cols, [3, 0, 1])


def test_function_adapter_reads_class_names_and_checks_shapes():
    a = make_model_space()
    clf = CL.resolve(two_gene_rule, a).bind(a.var_names)
    assert isinstance(clf, CL.FunctionClassifier)
    clf.predict_proba(a.X)
    assert clf.classes == ["A", "B"]
    bad = CL.FunctionClassifier(lambda x: np.ones(len(x)), name="flat").bind(a.var_names)
    with pytest.raises(ScadvInputError, match="one row per cell"):
        bad.predict_proba(a.X)


def test_resolve_refuses_other_objects(small_trained):
    with pytest.raises(ScadvInputError, match="classifier must be"):
        CL.resolve(42, small_trained)
    with pytest.raises(ScadvInputError, match="no scadv classifier 'other'"):
        CL.resolve("other", small_trained)
    assert isinstance(CL.resolve(None, small_trained), CL.StoredMLP)


def test_public_namespace():
    assert {"MarkerClassifier", "SklearnClassifier", "FunctionClassifier", "StoredMLP",
            "PBMC_MARKERS"} <= set(scadv.classifiers.__all__)
