"""scadv.models: CellTypist, scikit-learn and PyTorch classifiers rebuilt exactly, on PBMC3k.

Parity is checked on real cells: raw counts go through each adapted model's own preprocessing
and must give the original model's probabilities (max abs difference ≤ 1e-5) and labels.
The CellTypist models are built without ``celltypist.train`` (broken with scikit-learn ≥ 1.8):
a ``StandardScaler`` and a ``LogisticRegression`` are fitted here and wrapped in
``celltypist.models.Model``; the CellTypist reference is ``celltypist.annotate`` itself.
"""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace
from typing import Any

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import torch
from scipy.special import expit
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from torch import nn

import scadv
from scadv import _model as M
from scadv import _recipe as R
from scadv import classifiers as CL
from scadv._errors import ScadvInputError
from scadv.tl import _common as C

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

TOL = 1e-5
N_GENES = 300


@pytest.fixture(scope="module")
def pbmc(_pbmc3k_raw: ad.AnnData) -> SimpleNamespace:
    """Labelled PBMC3k cells: raw counts, log-normalised copy, 300 HVGs and their matrix."""
    counts = _pbmc3k_raw[_pbmc3k_raw.obs["cell_type"].notna()].copy()
    lognorm = counts.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.highly_variable_genes(lognorm, n_top_genes=N_GENES)
    genes = np.asarray(lognorm.var_names[lognorm.var["highly_variable"]])
    del lognorm.uns["hvg"], lognorm.uns["log1p"]
    x = lognorm[:, genes].X.toarray().astype(np.float64)
    y = counts.obs["cell_type"].astype(str).to_numpy()
    return SimpleNamespace(counts=counts, lognorm=lognorm, genes=genes, x=x, y=y)


def _celltypist_parts(pbmc: SimpleNamespace, *, with_mean: bool = True,
                      classes: np.ndarray | None = None) -> tuple[Any, Any]:
    """A CellTypist-style scaler + logistic regression, fitted as celltypist.train does."""
    keep = np.ones(len(pbmc.y), bool) if classes is None else np.isin(pbmc.y, classes)
    scaler = StandardScaler(with_mean=with_mean).fit(pbmc.x[keep])
    z = scaler.transform(pbmc.x[keep])
    z[z > 10] = 10
    clf = LogisticRegression(max_iter=60).fit(z, pbmc.y[keep])
    clf.features = pbmc.genes
    return clf, scaler


@pytest.fixture(scope="module")
def celltypist(tmp_path_factory: pytest.TempPathFactory) -> Any:
    os.environ.setdefault("CELLTYPIST_FOLDER", str(tmp_path_factory.mktemp("celltypist")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("celltypist")


def _ct_model(celltypist: Any, clf: Any, scaler: Any) -> Any:
    description = {"date": "", "details": "PBMC3k test model", "url": "", "source": "",
                   "version": "", "number_celltypes": len(clf.classes_)}
    return celltypist.models.Model(clf, scaler, description)


def _annotate(celltypist: Any, adata: ad.AnnData, model: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return celltypist.annotate(adata, model=model, **kwargs)


# ---- CellTypist -------------------------------------------------------------------------------


def test_celltypist_parity_on_counts(pbmc, celltypist):
    """Raw counts through the adapter's own preprocessing = celltypist.annotate on log1p CP10k."""
    model = _ct_model(celltypist, *_celltypist_parts(pbmc))
    adapted = scadv.models.from_celltypist(model)
    ref = _annotate(celltypist, pbmc.lognorm, model)
    proba = adapted.predict_proba(pbmc.counts)
    assert np.abs(proba - ref.probability_matrix.to_numpy()).max() <= TOL
    decision = adapted.decision_function(pbmc.counts)
    ref_dec = ref.decision_matrix.to_numpy()
    assert np.abs(decision - ref_dec).max() <= 1e-5 * np.abs(ref_dec).max()
    labels = ref.predicted_labels["predicted_labels"].astype(str).to_numpy()
    assert np.array_equal(adapted.predict(pbmc.counts), labels)
    # log-normalised input gives the same, and so does the model input read from an array
    assert np.abs(adapted.predict_proba(pbmc.lognorm) - proba).max() <= 1e-6
    x = adapted.model_input(pbmc.counts)
    z = (pbmc.x - model.scaler.mean_) / model.scaler.scale_
    assert (z > 10).any()
    np.testing.assert_allclose(x, np.minimum(z, 10), atol=1e-4)  # capped from above only
    assert np.array_equal(adapted.predict_proba(x), proba)
    # the stored record is plain arrays with CellTypist's recipe
    record = adapted.to_record()
    assert record["kind"] == "scadv.linear" and record["output"] == "sigmoid"
    assert record["prepare"]["clip"] == "upper" and record["prepare"]["target_sum"] == 1e4
    assert record["source"]["library"] == "celltypist"


def test_celltypist_prob_match_and_majority_voting(pbmc, celltypist):
    model = _ct_model(celltypist, *_celltypist_parts(pbmc))
    adapted = scadv.models.from_celltypist(model)
    ref = _annotate(celltypist, pbmc.lognorm, model, mode="prob match", p_thres=0.5)
    ours = adapted.predict(pbmc.counts, mode="prob match", p_thres=0.5)
    assert np.array_equal(ours, ref.predicted_labels["predicted_labels"].astype(str).to_numpy())
    assert (ours == "Unassigned").any() or ("|" in "".join(ours))  # the mode does something
    clusters = pbmc.counts.obs["cell_type_alt"].astype(str).to_numpy()
    ref = _annotate(celltypist, pbmc.lognorm, model, majority_voting=True,
                    over_clustering=clusters, min_prop=0.6)
    ours = scadv.models.majority_voting(adapted.predict(pbmc.counts), clusters, min_prop=0.6)
    assert np.array_equal(ours, ref.predicted_labels["majority_voting"].astype(str).to_numpy())


def test_celltypist_without_mean_and_missing_genes(pbmc, celltypist):
    """A with_mean=False scaler is not centred; genes the query lacks are dropped by
    CellTypist, which is scadv's missing_genes='mean'."""
    model = _ct_model(celltypist, *_celltypist_parts(pbmc, with_mean=False))
    adapted = scadv.models.from_celltypist(model)
    assert not np.any(adapted.preprocessing["mean"])
    drop = pbmc.genes[::7]
    query = pbmc.lognorm[:, ~pbmc.lognorm.var_names.isin(drop)].copy()
    query.X = query.X.toarray()  # celltypist 1.7.1 fails on sparse input without centring
    ref = _annotate(celltypist, query, model)
    counts = pbmc.counts[:, ~pbmc.counts.var_names.isin(drop)].copy()
    with pytest.raises(ScadvInputError, match="missing_genes='mean'"):
        adapted.predict_proba(counts)
    proba = adapted.predict_proba(query, missing_genes="mean")
    assert np.abs(proba - ref.probability_matrix.to_numpy()).max() <= TOL
    labels = ref.predicted_labels["predicted_labels"].astype(str).to_numpy()
    assert np.array_equal(adapted.predict(query, missing_genes="mean"), labels)


def test_celltypist_adapter_needs_no_celltypist_and_handles_two_classes(pbmc):
    """Duck-typed: an object with .classifier and .scaler is enough. Two cell types are scored
    (−s, s) with per-class sigmoids, as CellTypist's predict_labels_and_prob does."""
    clf, scaler = _celltypist_parts(pbmc, classes=np.array(["B", "NK"]))
    adapted = scadv.models.from_celltypist(SimpleNamespace(classifier=clf, scaler=scaler,
                                                           description={}))
    keep = np.isin(pbmc.y, ["B", "NK"])
    z = np.minimum(scaler.transform(pbmc.x[keep]), 10)
    s = clf.decision_function(z)
    ref = expit(np.column_stack([-s, s]))
    proba = adapted.predict_proba(pbmc.counts[keep])
    assert proba.shape == (keep.sum(), 2)
    assert np.abs(proba - ref).max() <= TOL
    assert np.array_equal(adapted.predict(pbmc.counts[keep]), clf.predict(z))
    with pytest.raises(ScadvInputError, match="not a CellTypist model"):
        scadv.models.from_celltypist(clf)


# ---- scikit-learn ----------------------------------------------------------------------------


SKLEARN = {
    "Pipeline(StandardScaler, LogisticRegression)":
        lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=60)),
    "LogisticRegression": lambda: LogisticRegression(max_iter=60),
    "Pipeline(StandardScaler, LinearSVC)":
        lambda: make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=300)),
    "Pipeline(StandardScaler, MLPClassifier relu)":
        lambda: make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=20, random_state=0)),
    "MLPClassifier tanh": lambda: MLPClassifier((24, 12), activation="tanh", max_iter=20,
                                                random_state=0),
    "MLPClassifier logistic": lambda: MLPClassifier((16,), activation="logistic", max_iter=20,
                                                    random_state=0),
    "Pipeline(StandardScaler, SGDClassifier log_loss)":
        lambda: make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=0.01,
                                                              random_state=0)),
}


@pytest.mark.parametrize("name", list(SKLEARN))
def test_sklearn_parity_on_counts(pbmc, name):
    est = SKLEARN[name]().fit(pbmc.x, pbmc.y)
    adapted = scadv.models.from_sklearn(est, genes=pbmc.genes)
    labels = adapted.predict(pbmc.counts)
    assert np.array_equal(labels, est.predict(pbmc.x))
    if adapted.output == "decision":  # LinearSVC: no probabilities; its decision values
        ref = est.decision_function(pbmc.x)
        assert np.abs(adapted.decision_function(pbmc.counts) - ref).max() <= TOL * max(
            1.0, np.abs(ref).max())
    else:
        assert np.abs(adapted.predict_proba(pbmc.counts) - est.predict_proba(pbmc.x)).max() <= TOL
    expected = {"LinearSVC": "decision", "SGDClassifier": "ovr"}
    assert adapted.output == next((v for k, v in expected.items() if k in name), "softmax")
    relu = "relu" in name
    assert isinstance(adapted.module, M.MLP) == relu  # gets every fast path of scadv's MLP
    if name.startswith("Pipeline"):  # the scaler joined the recipe: the input is z-scores
        assert np.any(adapted.preprocessing["mean"])


def test_sklearn_binary_and_scaler_kept_in_the_network(pbmc):
    """Two classes (logits (0, s)); a pipeline fitted on scadv-prepared z-scores keeps its
    StandardScaler inside the network, after the recipe's clip."""
    keep = np.isin(pbmc.y, ["B", "NK"])
    est = LogisticRegression(max_iter=60).fit(pbmc.x[keep], pbmc.y[keep])
    adapted = scadv.models.from_sklearn(est, genes=pbmc.genes)
    ref = est.predict_proba(pbmc.x[keep])
    assert np.abs(adapted.predict_proba(pbmc.counts[keep]) - ref).max() <= TOL

    prepared = pbmc.counts.copy()
    scadv.pp.prepare(prepared, n_top_genes=200, subset=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=60)).fit(prepared.X,
                                                                                  pbmc.y)
    adapted = scadv.models.from_sklearn(pipe, preprocessing=prepared)
    assert isinstance(adapted.module, M.Feedforward) and adapted.module.standardize
    ref = pipe.predict_proba(prepared.X)
    assert np.abs(adapted.predict_proba(pbmc.counts) - ref).max() <= TOL
    assert np.abs(adapted.predict_proba(prepared) - ref).max() <= TOL


@pytest.mark.parametrize("estimator", [RandomForestClassifier(n_estimators=3, random_state=0),
                                       KNeighborsClassifier(3), SVC(kernel="rbf")])
def test_black_box_estimators_name_the_tools_they_can_use(pbmc, estimator):
    est = estimator.fit(pbmc.x[:300], pbmc.y[:300])
    with pytest.raises(ScadvInputError) as err:
        scadv.models.from_sklearn(est, genes=pbmc.genes)
    message = str(err.value)
    for tool in ("single_gene", "occlusion", "lime", "pgd", "meta_detect"):
        assert tool in message
    assert "black box" in message


def test_other_pipeline_steps_and_celltypist_inner_classifier_are_refused(pbmc):
    pipe = make_pipeline(PCA(5), LogisticRegression()).fit(pbmc.x[:300], pbmc.y[:300])
    with pytest.raises(ScadvInputError, match="PCA"):
        scadv.models.from_sklearn(pipe, genes=pbmc.genes)
    clf, _ = _celltypist_parts(pbmc)
    with pytest.raises(ScadvInputError, match="from_celltypist"):
        scadv.models.from_sklearn(clf, genes=pbmc.genes)
    # the gene-level attacks refuse it too, instead of silently skipping the scaler
    with pytest.raises(ScadvInputError, match="inner classifier of a CellTypist model"):
        CL.resolve(clf, pbmc.counts)
    with pytest.raises(ScadvInputError, match="genes"):
        scadv.models.from_sklearn(LogisticRegression(max_iter=20).fit(pbmc.x, pbmc.y))


# ---- PyTorch ---------------------------------------------------------------------------------


def test_from_torch_module_in_memory_and_feedforward_stored(pbmc):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(N_GENES, 16), nn.Tanh(), nn.Linear(16, 3))
    model = scadv.models.from_torch(net, genes=pbmc.genes, classes=["a", "b", "c"])
    x = model.model_input(pbmc.counts)
    np.testing.assert_allclose(x, pbmc.x, atol=1e-5)  # 'lognorm': log1p CP10k of its genes
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(model.predict_proba(pbmc.counts), ref, atol=1e-6)
    assert not model.storable
    with pytest.raises(ScadvInputError, match="cannot store"):
        model.to_record()
    held = pbmc.counts[:50].copy()
    scadv.tl.add_model(held, model, observed_range=False)  # its description only
    assert held.uns["scadv"]["torch_model"]["kind"] == "scadv.torch"
    with pytest.raises(ScadvInputError, match="held in memory"):
        scadv.models.from_adata(held, "torch_model")
    with pytest.raises(ScadvInputError, match=r"shape \(cells, 2\)"):
        scadv.models.from_torch(net, genes=pbmc.genes, classes=["a", "b"])
    ff = M.Feedforward([N_GENES, 8, 3], activation="tanh")
    stored = scadv.models.from_torch(ff, genes=pbmc.genes, classes=["a", "b", "c"])
    assert stored.storable
    rebuilt = scadv.models.from_record(stored.to_record())
    assert np.array_equal(rebuilt.decision_function(x), stored.decision_function(x))
    # a bare module passed to the gene-level attacks says how to wrap it
    with pytest.raises(ScadvInputError, match="from_torch"):
        CL.resolve(net, pbmc.counts)


# ---- storage ---------------------------------------------------------------------------------


def test_stored_models_survive_h5ad(pbmc, tmp_path):
    adata = pbmc.counts.copy()
    clf, scaler = _celltypist_parts(pbmc)
    models = {
        "celltypist": scadv.models.from_celltypist(SimpleNamespace(classifier=clf,
                                                                   scaler=scaler,
                                                                   description={"v": 1})),
        "linear_svc": scadv.models.from_sklearn(
            LinearSVC(C=0.01, max_iter=200).fit(pbmc.x, pbmc.y), genes=pbmc.genes),
        "mlp_classifier": scadv.models.from_sklearn(
            make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=10, random_state=0))
            .fit(pbmc.x, pbmc.y), genes=pbmc.genes),
        "tanh": scadv.models.from_sklearn(
            MLPClassifier((8,), activation="tanh", max_iter=10, random_state=0)
            .fit(pbmc.x, pbmc.y), genes=pbmc.genes),
    }
    for key, model in models.items():
        scadv.tl.add_model(adata, model, label_key="cell_type",
                           key_added=None if key != "tanh" else "tanh")
    assert set(models) <= set(adata.uns["scadv"])
    path = tmp_path / "models.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key, model in models.items():
        rebuilt = scadv.models.from_adata(back, key)
        assert type(rebuilt.module) is type(model.module)
        assert rebuilt.output == model.output
        assert np.array_equal(rebuilt.decision_function(back), model.decision_function(adata))
        assert np.array_equal(rebuilt.predict(back), model.predict(adata))
        rec = back.uns["scadv"][key]
        assert rec["label_key"] == "cell_type"
        assert rec["prepare"]["observed_range"] == f"{adata.n_obs} cells"
        x = model.model_input(adata)
        np.testing.assert_array_equal(rec["prepare"]["x_max"], x.max(axis=0))


def test_add_model_checks_its_input(pbmc):
    adata = pbmc.counts[:50].copy()
    clf, scaler = _celltypist_parts(pbmc)
    ct = SimpleNamespace(classifier=clf, scaler=scaler, description={})
    with pytest.raises(ScadvInputError, match="from_sklearn"):
        scadv.tl.add_model(adata, LogisticRegression(max_iter=5).fit(pbmc.x, pbmc.y))
    with pytest.raises(ScadvInputError, match="not a column"):
        scadv.tl.add_model(adata, ct, label_key="nope")
    assert "celltypist" not in adata.uns.get("scadv", {})
    out = scadv.tl.add_model(adata, ct, observed_range=False, copy=True)
    assert out is not None and "celltypist" in out.uns["scadv"]
    assert "scadv" not in adata.uns
    rec = out.uns["scadv"]["celltypist"]
    assert rec["prepare"]["observed_range"] == "none"
    np.testing.assert_array_equal(rec["prepare"]["x_max"], 10.0)


def test_recipe_upper_clip():
    recipe = scadv.models.preprocessing(["a", "b"], mean=[1.0, 0.0], std=[0.1, 1.0],
                                        max_value=2.0, clip="upper")
    x = R.lognorm_to_model(np.array([[0.0, 5.0], [2.0, -3.0]], np.float32), recipe)
    np.testing.assert_allclose(x, [[-10.0, 2.0], [2.0, -3.0]])
    np.testing.assert_allclose(R.zero_level(recipe), [-10.0, 0.0])
    both = {**recipe, "clip": "both"}
    np.testing.assert_allclose(R.lognorm_to_model(np.array([[0.0, 5.0]], np.float32), both),
                               [[-2.0, 2.0]])
    assert not R.same(recipe, both) and R.same(recipe, dict(recipe))


# ---- the gene-level attacks and the gradient engine -----------------------------------------


def _ct(pbmc: SimpleNamespace) -> scadv.models.Model:
    clf, scaler = _celltypist_parts(pbmc)
    return scadv.models.from_celltypist(SimpleNamespace(classifier=clf, scaler=scaler,
                                                        description={}))


def test_model_classifier_reads_counts_lognorm_or_its_own_input(pbmc):
    """A CellTypist model in the gene-level attacks applies its own preprocessing to whatever
    the attacked matrix holds, and refuses scaled values of another recipe."""
    model = _ct(pbmc)
    ref = model.predict_proba(pbmc.counts[:200])
    counts = CL.resolve(model, pbmc.counts).bind(pbmc.counts.var_names, adata=pbmc.counts)
    assert counts.mode == "counts" and counts.cols is not None
    assert len(counts.cols) == pbmc.counts.n_vars  # library sizes read every gene
    dense = pbmc.counts.X[:200].toarray()
    np.testing.assert_allclose(counts.predict_proba(dense[:, counts.cols]), ref, atol=TOL)
    ln = CL.resolve(model, pbmc.lognorm).bind(pbmc.lognorm.var_names, adata=pbmc.lognorm)
    assert ln.mode == "lognorm" and ln._linear() is None
    block = pbmc.lognorm.X[:200].toarray()[:, ln.cols]
    np.testing.assert_allclose(ln.predict_proba(block), ref, atol=TOL)
    own = pbmc.counts[:200].copy()
    scadv.pp.transform(own, model.preprocessing)
    direct = CL.resolve(model, own).bind(own.var_names, adata=own)
    assert direct.mode == "model" and direct._linear() is not None
    assert direct._output() == "sigmoid"
    np.testing.assert_allclose(direct.predict_proba(own.X), ref, atol=TOL)
    prepared = pbmc.counts.copy()
    scadv.pp.prepare(prepared, n_top_genes=200, subset=True)
    with pytest.raises(ScadvInputError, match="another preprocessing"):
        CL.resolve(model, prepared).bind(prepared.var_names, adata=prepared)
    # prepare's counts layer holds only its genes: library sizes would be wrong
    subset = prepared[:, :150].copy()
    subset.layers["counts"] = pbmc.counts[:, subset.var_names].X.copy()
    with pytest.raises(ScadvInputError, match="counts of only some genes"):
        CL.ModelClassifier(model).bind(subset.var_names, adata=subset, layer="counts")


def test_gene_engine_fast_path_keeps_celltypist_probabilities(pbmc):
    """The rank-one evaluator of a linear model gives the model's own (sigmoid) probabilities,
    exactly as the generic evaluator does."""
    from scadv.tl._genes import _engine as GE

    model = _ct(pbmc)
    own = pbmc.counts[pbmc.y == "B"].copy()
    scadv.pp.transform(own, model.preprocessing)
    clf = CL.resolve(model, own).bind(own.var_names, adata=own)
    block = np.asarray(own.X, dtype=np.float32)
    fast = GE.evaluator(clf, block, counter=GE.Counter(), batch_rows=512)
    slow = GE.evaluator(clf, block, counter=GE.Counter(), batch_rows=512, fast=False)
    assert isinstance(fast, GE.AffineEvaluator) and not isinstance(slow, GE.AffineEvaluator)
    np.testing.assert_allclose(fast.proba, slow.proba, atol=1e-5)
    rng = np.random.default_rng(0)
    cells = rng.integers(0, len(block), 64)
    genes = rng.integers(0, block.shape[1], 64)
    values = rng.normal(size=64).astype(np.float32) * 3
    np.testing.assert_allclose(fast.pairs(cells, genes, values), slow.pairs(cells, genes, values),
                               atol=1e-5)
    assert fast.proba.sum(axis=1).max() > 1.01  # per-class sigmoids, not a softmax


def test_linear_fast_path_matches_autograd(pbmc):
    """PGD on a linear model takes the exact hand-derived gradient: same result as autograd."""
    from scadv.tl._attacks import _engine as E

    model = _ct(pbmc)
    x = model.model_input(pbmc.counts[:120])
    y = model.decision_function(x).argmax(axis=1)
    assert E.exact_backward(model.module) is not None
    wrapped = nn.Sequential(model.module)  # same function, not recognised: autograd
    assert E.exact_backward(wrapped) is None
    budget = E.Budget(eps=(0.05, 0.2), norm="linf", alpha=(0.02, 0.05), steps=5,
                      random_start=False, n_restarts=1, loss="ce")
    out = {}
    for name, net in (("fast", model.module), ("autograd", wrapped)):
        stats: dict[str, int] = {}
        out[name] = E.run(net, x, y, budget, E.Constraints(), targeted=False,
                          device=torch.device("cpu"), seed=0, batch_size=64, progress=False,
                          stats=stats)
    # the gradients agree to float rounding; a sign step can then differ only where a
    # gradient entry is ~0, so the iterates agree almost everywhere
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g_fast, g_auto = torch.empty_like(xt), torch.empty_like(xt)
    E.linear_backward(model.module, xt, lambda z: E.objective_and_grad(
        z, yt, loss="ce", targeted=False), grad_out=g_fast)
    E.autograd_input_grad(wrapped, xt, yt, loss="ce", targeted=False, grad_out=g_auto)
    np.testing.assert_allclose(g_fast.numpy(), g_auto.numpy(), atol=1e-5)
    assert (np.abs(out["fast"][0] - out["autograd"][0]) > 1e-5).mean() < 1e-3
    assert (out["fast"][1].argmax(-1) == out["autograd"][1].argmax(-1)).mean() > 0.99
    assert (out["fast"][1][1].argmax(-1) != y).mean() > 0.2  # the attack does something
    adv = E.perturb(model.module, torch.from_numpy(x), torch.from_numpy(y), eps=0.1, alpha=0.05,
                    steps=3, random_start=False)
    ref = E.perturb(wrapped, torch.from_numpy(x), torch.from_numpy(y), eps=0.1, alpha=0.05,
                    steps=3, random_start=False)
    assert (np.abs(adv.numpy() - ref.numpy()) > 1e-5).mean() < 1e-3


def test_stored_celltypist_model_through_model_key_tools(pbmc):
    """predict, pgd, fgsm, attribute and the gene-level attacks take model=<key> of a stored
    CellTypist model on raw counts (its own preprocessing streamed); the meta-detector says it
    needs scadv's MLP."""
    adata = pbmc.counts[::4].copy()
    model = _ct(pbmc)
    expected = model.predict(adata)
    y = C.class_index(adata.obs["cell_type"], model.classes)
    adata.obs["split"] = C.stratified_split(y, test_size=0.2, val_size=0.1, seed=0)
    scadv.tl.add_model(adata, model, label_key="cell_type", split_key="split")
    scadv.tl.predict(adata, model="celltypist", progress=False)
    pred = adata.obs["scadv_celltypist_pred"].astype(str).to_numpy()
    assert np.array_equal(pred, expected)
    assert (pred == adata.obs["cell_type"].astype(str)).mean() > 0.75  # measured 0.82
    # CellTypist's own probabilities (per-class sigmoids), not a softmax
    np.testing.assert_allclose(adata.obsm["scadv_celltypist_proba"], model.predict_proba(adata),
                               atol=1e-6)
    scadv.tl.pgd(adata, model="celltypist", eps=(0.05, 0.5), progress=False)  # test split
    flips = adata.uns["scadv"]["pgd_celltypist"]["flip_rate"]
    assert adata.uns["scadv"]["pgd_celltypist"]["n_cells"] == (adata.obs["split"] == "test").sum()
    assert 0 < flips[0] < flips[1]
    # the stored adversarial cells are CellTypist's own input, and it classifies them as recorded
    test = (adata.obs["split"] == "test").to_numpy()
    adv = np.asarray(scadv.get.perturbed(adata, "scadv_pgd_celltypist_eps0.5",
                                         cells=adata.obs_names[test]))
    adv_pred = np.asarray(model.classes)[model.decision_function(adv).argmax(axis=1)]
    recorded = adata.obs["scadv_pgd_celltypist_eps0.5_pred"].astype(str).to_numpy()[test]
    assert np.array_equal(adv_pred, recorded)
    scadv.tl.fgsm(adata, model="celltypist", cells="all", progress=False)
    scadv.tl.attribute(adata, model="celltypist", method="saliency", cells="all",
                       progress=False)
    assert "attr_saliency_celltypist" in adata.uns["scadv"]
    scadv.tl.single_gene(adata, cluster_key="cell_type", target="B", classifier="celltypist",
                         progress=False)
    # the meta-detector reads this model's own signals (the logits of a linear model)
    scadv.tl.meta_detect(adata, model="celltypist", triplet_epochs=1, detector_epochs=2,
                         baselines=False, progress=False, seed=0)
    det = adata.uns["scadv"]["meta"]
    assert det["model"] == "celltypist"
    assert 0.5 < float(det["validation"][str(det["method"])]["auroc"]) <= 1.0
    scadv.tl.meta_score(adata, key="meta", progress=False)
    assert adata.obs["scadv_meta_score"].notna().all()


def test_probability_rule_is_read_off_unsaturated_logits():
    """Large inputs saturate the logits, where a softmax and one-vs-rest sigmoids agree; the
    rule must still be told apart (an SGD log-loss model is one-vs-rest)."""
    rng = np.random.default_rng(1)
    x = rng.poisson(1.0, (400, 1500)).astype(np.float64)
    y = rng.integers(0, 4, 400).astype(str)
    x[y == "1", :40] += 3
    genes = [f"g{i}" for i in range(1500)]
    sgd = make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss", alpha=0.01,
                                                        random_state=0)).fit(x, y)
    lr = LogisticRegression(max_iter=50).fit(x, y)
    for est, rule in ((sgd, "ovr"), (lr, "softmax")):
        model = scadv.models.from_sklearn(est, genes=genes)
        assert model.output == rule
        z = R.lognorm_to_model(x.astype(np.float32), model.preprocessing)
        assert np.abs(model.predict_proba(z) - est.predict_proba(x)).max() <= TOL


def test_gene_attack_with_a_model_object_reads_its_own_preprocessing(pbmc):
    """On lazily prepared data (scadv's recipe recorded, X raw counts) a CellTypist model
    passed as an object reads the counts through its own preprocessing, not scadv's z-scores."""
    adata = pbmc.counts[::3].copy()
    scadv.pp.prepare(adata, n_top_genes=200, progress=False)
    model = _ct(pbmc)
    scadv.tl.single_gene(adata, cluster_key="cell_type", target="B", classifier=model,
                         genes=list(model.genes[:40]), progress=False, key_added="sg")
    rec = adata.uns["scadv"]["sg"]
    assert rec["source"] == "adata.X" and rec["classifier"] == model.name


# ---- gradient tools on model objects ---------------------------------------------------------


def _by_hand(model: scadv.models.Model) -> scadv.models.Model:
    """The CellTypist model's logistic regression as a plain ``nn.Linear`` (autograd path),
    with the same preprocessing: a user's torch module held in memory."""
    lin = nn.Linear(len(model.genes), len(model.classes))
    with torch.no_grad():
        lin.weight.copy_(model.module.head.weight)
        lin.bias.copy_(model.module.head.bias)
    return scadv.models.from_torch(nn.Sequential(lin), genes=model.genes, classes=model.classes,
                                   preprocessing=model.preprocessing, output=model.output,
                                   name="by hand")


def test_pgd_on_a_celltypist_object_matches_the_linear_module_built_by_hand(pbmc, tmp_path):
    """PGD, FGSM and attributions take a Model object and attack it in its own input space
    (raw counts → its preprocessing); the adapted CellTypist model (exact linear gradient) and
    the same linear module built by hand (autograd) flip the same cells, and a rerun is
    bit-identical. The torch module is registered as a 'scadv.torch' record whose results
    survive an h5ad round trip; its key alone cannot rebuild it (clear error)."""
    adata = pbmc.counts[::5].copy()
    ct = _ct(pbmc)
    hand = _by_hand(ct)
    np.testing.assert_allclose(hand.predict_proba(adata), ct.predict_proba(adata), atol=1e-6)
    kw: dict[str, Any] = {"eps": (0.1, 0.3), "loss": "ce", "cells": "all", "progress": False}
    scadv.tl.pgd(adata, model=ct, **kw)
    scadv.tl.pgd(adata, model=hand, **kw)
    assert adata.uns["scadv"]["celltypist"]["kind"] == "scadv.linear"
    assert adata.uns["scadv"]["torch_model"]["kind"] == "scadv.torch"
    a, b = adata.uns["scadv"]["pgd_celltypist"], adata.uns["scadv"]["pgd_torch_model"]
    assert 0 < a["flip_rate"][0] < a["flip_rate"][1]
    np.testing.assert_allclose(a["flip_rate"], b["flip_rate"], atol=0.01)
    for e in ("0.1", "0.3"):
        fa = adata.obs[f"scadv_pgd_celltypist_eps{e}_flipped"].astype(bool).to_numpy()
        fb = adata.obs[f"scadv_pgd_torch_model_eps{e}_flipped"].astype(bool).to_numpy()
        assert (fa == fb).mean() >= 0.99
        xa = np.asarray(scadv.get.perturbed(adata, f"scadv_pgd_celltypist_eps{e}"))
        xb = np.asarray(scadv.get.perturbed(adata, f"scadv_pgd_torch_model_eps{e}"))
        pa, pb = ct.predict_proba(xa), ct.predict_proba(xb)
        # the gradients agree to rounding; a sign step differs only where an entry is ~0,
        # so most cells end at the same adversarial probabilities (measured: 99.1% of these
        # 528 cells within 1e-3 at ε=0.1, 97.9% at ε=0.3) and the same cells flip (100%)
        assert (np.abs(pa - pb).max(axis=1) < 1e-3).mean() >= 0.95
        # the stored adversarial input is what the model classifies as recorded
        pred = adata.obs[f"scadv_pgd_celltypist_eps{e}_pred"].astype(str).to_numpy()
        logits = ct.decision_function(xa)  # (sigmoid probabilities can tie at 1.0)
        assert np.array_equal(np.asarray(ct.classes)[logits.argmax(axis=1)], pred)
    # exactly reproducible
    again = pbmc.counts[::5].copy()
    scadv.tl.pgd(again, model=ct, **kw)
    for e in ("0.1", "0.3"):
        name = f"scadv_pgd_celltypist_eps{e}"
        assert np.array_equal(np.asarray(scadv.get.perturbed(again, name)),
                              np.asarray(scadv.get.perturbed(adata, name)))
    # FGSM and a gradient attribution on the object; passing it twice reuses its record
    scadv.tl.fgsm(adata, model=hand, eps=0.2, cells="all", progress=False)
    assert 0 < adata.uns["scadv"]["fgsm_torch_model"]["flip_rate"][0] <= 1
    scadv.tl.attribute(adata, model=ct, method="saliency", cells=np.arange(adata.n_obs) < 20,
                       progress=False)
    assert "attr_saliency_celltypist" in adata.uns["scadv"]
    # another module under the same default key is refused with the fix
    other = _by_hand(ct)
    with torch.no_grad():
        other.module[0].bias.add_(1.0)
    with pytest.raises(ScadvInputError, match="key_added"):
        scadv.tl.pgd(adata, model=other, **kw)
    path = tmp_path / "torch_model.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(
        np.asarray(scadv.get.perturbed(back, "scadv_pgd_torch_model_eps0.3")),
        np.asarray(scadv.get.perturbed(adata, "scadv_pgd_torch_model_eps0.3")))
    with pytest.raises(ScadvInputError, match="held in memory"):
        scadv.tl.pgd(back, model="torch_model", **kw)
    scadv.tl.pgd(back, model=hand, **{**kw, "eps": 0.1}, key_added="again")  # same module


def test_meta_detector_of_a_torch_module_and_black_box_messages(pbmc):
    """meta_detect on a user's torch module (autograd gradient features); meta_score needs the
    object back, and refuses another module; black-box estimators say which tools they get."""
    adata = pbmc.counts[::3].copy()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(N_GENES, 32), nn.ReLU(), nn.Linear(32, 9))
    x = torch.from_numpy(pbmc.x.astype(np.float32))
    classes = sorted(set(pbmc.y))
    y = torch.as_tensor([classes.index(v) for v in pbmc.y])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    model = scadv.models.from_torch(net, genes=pbmc.genes, classes=classes, name="my net")
    yy = C.class_index(adata.obs["cell_type"], classes)
    adata.obs["split"] = C.stratified_split(yy, test_size=0.3, val_size=0.2, seed=0)
    # labels and split recorded with its description; the tools take the object
    scadv.tl.add_model(adata, model, label_key="cell_type", split_key="split")
    scadv.tl.meta_detect(adata, model=model, triplet_epochs=1, detector_epochs=3,
                         baselines=False, progress=False, seed=0)
    det = adata.uns["scadv"]["meta"]
    assert det["model"] == "torch_model"
    assert 0.5 < float(det["validation"][str(det["method"])]["auroc"]) <= 1.0
    with pytest.raises(ScadvInputError, match="held in memory"):
        scadv.tl.meta_score(adata, key="meta", progress=False)
    scadv.tl.meta_score(adata, key="meta", model=model, progress=False)
    assert adata.obs["scadv_meta_score"].notna().all()
    other = scadv.models.from_torch(nn.Sequential(nn.Linear(N_GENES, 9)), genes=pbmc.genes,
                                    classes=classes)
    with pytest.raises(ScadvInputError, match="not the classifier"):
        scadv.tl.meta_score(adata, key="meta", model=other, progress=False)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(pbmc.x, pbmc.y)
    for tool in (scadv.tl.pgd, scadv.tl.fgsm, scadv.tl.meta_detect):
        with pytest.raises(ScadvInputError, match="compare_models"):
            tool(adata, model=forest, progress=False)
    with pytest.raises(ScadvInputError, match="from_torch"):
        scadv.tl.pgd(adata, model=net, progress=False)
    lr = LogisticRegression(max_iter=20).fit(pbmc.x, pbmc.y)
    with pytest.raises(ScadvInputError, match="from_sklearn"):
        scadv.tl.pgd(adata, model=lr, progress=False)
