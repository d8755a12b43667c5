"""The count-space attack in the app: edit one cell's raw counts, UMI by UMI.

Registered in :data:`scadv.app.ATTACKS` as ``'counts'``. Like the PGD entry it goes through
the public functions only (:func:`scadv.tl.count_attack` with ``copy=True`` on a one-cell
AnnData, :func:`scadv.get.perturbed`), so the app's data never changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _keys as K
from .._errors import ScadvInputError
from ._session import RUN_KEY, AttackSpec, CellResult, Option, Session, register, returned

AWAY = "(away from its prediction)"


def _run_counts(session: Session, cell: str, options: Mapping[str, Any]) -> CellResult:
    import scadv

    from .. import _device as D
    from .. import _model as M
    from .. import _recipe as R

    umis = options.get("umis", 10)
    try:
        budget = int(umis)
    except (TypeError, ValueError) as err:
        raise ScadvInputError(f"the UMI budget must be a whole number, got {umis!r}.") from err
    if budget < 1 or budget != float(umis):
        raise ScadvInputError(f"the UMI budget must be a whole number ≥ 1, got {umis!r}.")
    target = options.get("target") or None
    if target == AWAY:
        target = None
    one = session.adata[[cell]].copy()
    res = scadv.tl.count_attack(
        one, budgets=(budget,), target=target, cells="all", model=session.model,
        beam=int(options.get("beam", 4)), top_k=int(options.get("top_k", 16)),
        cap_add=int(options.get("cap_add", 3)), cap_remove=int(options.get("cap_remove", 3)),
        detected_only=bool(options.get("detected_only", False)), key_added=RUN_KEY,
        progress=False, copy=True)
    res = returned(res, "scadv.tl.count_attack")
    name = K.count_layer(RUN_KEY, budget)
    rec = session.record
    cpu = D.resolve("cpu")
    x0 = scadv.get.model_input(one, model=session.model)
    x1 = np.asarray(scadv.get.perturbed(res, name, cells=[cell]), dtype=np.float32)
    c1 = np.asarray(sparse.csr_matrix(scadv.get.perturbed(res, name, cells=[cell],
                                                          space="counts")).toarray())[0]
    c0 = R.source(one, rec["prepare"]).counts(np.array([0]))[0].toarray()[0]
    delta = c1 - c0
    net = M.from_record(rec, cpu)
    _, logits = M.infer(net, np.vstack([x0, x1]), device=cpu)
    proba = M.softmax(logits)
    genes = np.asarray(rec["genes"]).astype(str)
    change = (x1[0] - x0[0]).astype(np.float64)
    # the edited genes first (largest UMI change, then largest model-input change)
    order = np.lexsort((-np.abs(change), -np.abs(delta)))
    table = pd.DataFrame({"gene": genes[order], "before": x0[0][order], "after": x1[0][order],
                          "change": change[order], "counts_before": c0[order],
                          "counts_after": c1[order], "umis": delta[order]})
    used = int(np.abs(delta).sum())
    m = float(res.obs[K.min_umis(RUN_KEY)].iloc[0])
    what = (f"count attack ≤ {budget} UMIs: {used} UMIs edited"
            + (f", fewest found {m:g}" if np.isfinite(m) else ", no flip found"))
    truth = None
    if session.label_key in one.obs and one.obs[session.label_key].notna().iloc[0]:
        truth = str(one.obs[session.label_key].iloc[0])
    return CellResult(cell=cell, attack=what, classes=session.classes, proba_before=proba[0],
                      proba_after=proba[1], genes=table,
                      n_genes_moved=int((delta != 0).sum()), detector=None, truth=truth)


register("counts", AttackSpec(
    label="Count attack (add / remove single UMIs of the raw counts)",
    options=[
        Option("umis", "UMI budget", "number", 10),
        Option("cap_add", "most UMIs added per gene", "number", 3),
        Option("cap_remove", "most UMIs removed per gene", "number", 3),
        Option("detected_only", "only genes the cell expresses", "check", False),
        Option("beam", "beam (1: greedy)", "number", 4),
        Option("target", "target class", "choice", AWAY, ()),
    ],
    run=_run_counts,
))
