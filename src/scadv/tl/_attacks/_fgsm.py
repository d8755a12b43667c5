"""``scadv.tl.fgsm``: the fast gradient sign method (one full-size step)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scanpy.logging as logg
from anndata import AnnData

from ... import _device as D
from ... import _keys as K
from ... import _provenance as P
from ... import _validate as V
from .. import _common as C
from .._models import _resolve as RS
from . import _attack as A


def fgsm(
    adata: AnnData,
    *,
    eps: float | Sequence[float] = (0.05, 0.1, 0.15),
    norm: A.Norm = "linf",
    loss: A.Loss = "ce",
    target: str | None = None,
    away_from: A.AwayFrom = "prediction",
    genes: Sequence[str] | np.ndarray | None = None,
    clip: A.Clip = None,
    keep_zeros: bool = False,
    cells: C.Cells = "test",
    model: RS.ModelSpec = K.DEFAULT_MODEL,
    key_added: str | None = None,
    batch_size: int = 256,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    r"""Fast gradient sign method: one step of size ε, :math:`x' = x_0 + \varepsilon \,
    \mathrm{sign}(\nabla_x L)` (L∞; the normalised gradient under L2).

    The one-step case of :func:`scadv.tl.pgd` (``alpha=eps, steps=1``).

    Parameters
    ----------
    adata
        In the model's input space (prepared, or transformed with :func:`scadv.pp.transform`).
    eps
        One or several budgets, in z-score units of the model input.
    norm
        ``'linf'`` (sign of the gradient) or ``'l2'`` (normalised gradient).
    loss
        ``'ce'`` (cross-entropy, the classic FGSM) or ``'margin'``.
    target
        Push cells toward this class instead of away from their current class.
    away_from
        ``'prediction'`` (default) or ``'label'``; see :func:`scadv.tl.pgd`.
    genes
        Only these model genes (names or a boolean mask) may change.
    clip
        ``'observed'`` or ``(low, high)``: keep values in a box.
    keep_zeros
        Genes at zero expression stay at zero; expressed genes stay above zero.
    cells
        ``'test'`` (default), ``'all'``, cell names or a boolean mask.
    model
        The classifier to attack: the key of a stored classifier of any kind (scadv's MLP, or
        one stored with :func:`scadv.tl.add_model`), or a :class:`scadv.models.Model`
        (CellTypist, scikit-learn or your own torch module) or a CellTypist ``Model`` object.
        The attack runs in THAT model's input space, through its own preprocessing; an object
        is first registered under ``adata.uns['scadv'][model.default_key]`` (see
        :func:`scadv.tl.add_model`), and ``eps`` is in its model-input units (z-scores for
        CellTypist, log1p units for an unscaled ``'lognorm'`` model).
    key_added
        Name of this attack run; default ``'fgsm'`` (``'fgsm_<model>'`` for other models).
    batch_size
        Cells per batch.
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes the same keys as :func:`scadv.tl.pgd`,
    named after ``key_added`` (default ``'fgsm'``): ``layers['scadv_fgsm_eps<e>']``, the obs
    columns ``scadv_fgsm_eps<e>_pred``, ``_flipped`` and ``_flipped_to``, and
    ``uns['scadv']['fgsm']``.

    Notes
    -----
    Results are reproducible for a given seed, device and CPU thread count. With several CPU
    threads the last bits of matrix products depend on the thread count, and the attack's
    gradient-sign step can turn that into a different result for a few cells (measured on
    PBMC3k: identical at 1, 2 and 4 threads; at 8 threads 0.4% of the attacked cells moved by up
    to 0.05). Fix the count (``torch.set_num_threads``) for bit-identical reruns; each step
    records it in its ``provenance`` (``cpu_threads``). See the usage page, "Safety and
    reproducibility".
    """
    V.options(locals())
    V.flag("keep_zeros", keep_zeros)
    V.name("target", target, allow_none=True)
    V.choice("away_from", away_from, ("prediction", "label"))
    V.model_spec("model", model)
    V.clip("clip", clip)
    start = logg.info("running FGSM attack")
    params = P.call_params(locals(), fgsm)
    eps_t = A.check_budget(eps, norm=norm, loss=loss, steps=1, n_restarts=1, alpha=None)
    adata = V.start(adata, copy=copy)
    budget = A.Budget(eps=eps_t, norm=norm, alpha=eps_t, steps=1, random_start=False,
                      n_restarts=1, loss=loss)
    A.attack(adata, method="fgsm", start=start, params=params, budget=budget, target=target,
             away_from=away_from, genes=genes, clip=clip, keep_zeros=keep_zeros, cells=cells,
             model=model, key_added=key_added, batch_size=batch_size, seed=0, device=device,
             progress=progress)
    return adata if copy else None
