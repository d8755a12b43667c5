"""The gene-level attack in the app: adverSCarial's CGD on one cell, gene by gene.

Registered in :data:`scadv.app.ATTACKS` as ``'genes'``. The picked cell is made its own
cluster in a one-cell copy and :func:`scadv.tl.cgd` modifies its genes one at a time until its
label switches (to the class asked for, or the most likely other class); the modified cell is
read back with :func:`scadv.get.perturbed`. Like the other entries it goes through the public
functions only, so the app's data never changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .. import _keys as K
from .._errors import ScadvInputError
from ._session import (
    RUN_KEY,
    AttackSpec,
    CellResult,
    Option,
    Session,
    attacked_cell,
    register,
    returned,
)

#: The ``to`` choice that lets CGD pick the most likely other class.
NEXT = "(most likely other class)"
_CLUSTER = "_scadv_app_cell"


def _positive(options: Mapping[str, Any], name: str, default: float) -> float:
    raw = options.get(name, default)
    try:
        value = float(raw)
    except (TypeError, ValueError) as err:
        raise ScadvInputError(f"{name} must be a number, got {raw!r}.") from err
    if not (np.isfinite(value) and value > 0):
        raise ScadvInputError(f"{name} must be a positive number, got {raw!r}.")
    return value


def _run_genes(session: Session, cell: str, options: Mapping[str, Any]) -> CellResult:
    import scadv

    max_genes = int(_positive(options, "max_genes", 50))
    alpha = _positive(options, "alpha", 0.1)
    eps = _positive(options, "eps", 0.1)
    to = options.get("target") or None
    if to == NEXT:
        to = None
    one = session.adata[[cell]].copy()
    one.obs[_CLUSTER] = pd.Categorical(["cell"])
    res = returned(scadv.tl.cgd(one, cluster_key=_CLUSTER, target="cell", to=to,
                                classifier=session.model, alpha=alpha, eps=eps,
                                max_genes=max_genes, gradient=bool(options.get("gradient", False)),
                                add_layer=True, key_added=RUN_KEY, progress=False, copy=True),
                   "scadv.tl.cgd")
    name = K.gene_attack_layer(RUN_KEY)
    x0 = np.asarray(scadv.get.model_input(one, model=session.model), dtype=np.float32)
    x1 = np.asarray(scadv.get.perturbed(res, name, cells=[cell]), dtype=np.float32)
    n = int((np.abs(x1[0] - x0[0]) > 1e-6).sum())
    return attacked_cell(session, cell, one, res, name, x0, x1,
                         attack=f"gene-level CGD: {n} gene{'s' * (n != 1)} modified")


register("genes", AttackSpec(
    label="Gene-level attack (adverSCarial's CGD: modify genes one by one)",
    options=[
        Option("max_genes", "most genes modified", "number", 50),
        Option("alpha", "step: α·|value| + ε, α =", "number", 0.1),
        Option("eps", "ε", "number", 0.1),
        Option("gradient", "order genes by the true gradient", "check", False),
        Option("target", "switch to", "choice", NEXT, ()),
    ],
    run=_run_genes,
))
