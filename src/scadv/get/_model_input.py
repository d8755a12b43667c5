"""``scadv.get.model_input``: the classifier's input of any cells, computed on demand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from .. import _keys as K
from .. import _recipe as R
from .. import _validate as V
from ..tl import _common as C
from ._cells import positions


def model_input(
    adata: AnnData,
    *,
    model: str = K.DEFAULT_MODEL,
    cells: Sequence[str] | np.ndarray | None = None,
    layer: str | None = None,
    missing_genes: R.MissingGenes = "error",
) -> np.ndarray:
    """The input a stored classifier sees for the given cells: z-scores of its genes.

    scadv never stores this matrix; it is computed from ``adata``'s counts (or
    log-normalised values) with the classifier's own recipe, batch by batch, exactly as every
    scadv tool computes it.

    Parameters
    ----------
    adata
        Any AnnData with counts or log-normalised values (or prepared in place).
    model
        Key of the stored classifier whose input is computed (its recipe and genes).
    cells
        Cell names, a boolean mask or positions; default all cells.
    layer
        Read the expression from ``adata.layers[layer]``.
    missing_genes
        ``'error'`` (default) or ``'mean'`` (model genes absent from ``adata`` at their
        training mean).

    Returns
    -------
    Dense float32 array, cells × the classifier's genes (in ``uns['scadv'][model]['genes']``
    order). Writes nothing.
    """
    V.options(locals())
    V.name("model", model)
    V.choice("missing_genes", missing_genes, ("error", "mean"))
    record = C.model_record(adata, model)
    src = R.source(adata, record["prepare"], layer=layer, missing_genes=missing_genes)
    return src.dense(positions(adata, cells), what="the requested model input")
