"""``scadv.tl.adaptive_pgd``: PGD by an attacker who knows the meta-detector."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scanpy.logging as logg
import torch
from anndata import AnnData

from ... import _detector as DT
from ... import _device as D
from ... import _keys as K
from ... import _model as M
from ... import _provenance as P
from ... import _validate as V
from ..._errors import ScadvInputError
from .. import _common as C
from .._attacks import _attack as A
from .._attacks import _engine as E
from . import _common as MC


def adaptive_pgd(
    adata: AnnData,
    *,
    detector: str = K.DEFAULT_DETECTOR,
    lam: float = 1.0,
    eps: float | Sequence[float] = 0.1,
    alpha: float | None = None,
    steps: int = 20,
    loss: A.Loss = "margin",
    kappa: float | None = 1.0,
    keep_zeros: bool = False,
    clip: A.Clip = None,
    genes: Sequence[str] | np.ndarray | None = None,
    cells: C.Cells = "test",
    key_added: str | None = None,
    batch_size: int = 256,
    seed: int = 42,
    device: D.Device = "auto",
    progress: bool = True,
    copy: bool = False,
) -> AnnData | None:
    r"""PGD against the classifier *and* a stored meta-detector (an adaptive attacker).

    Each step follows the gradient of :math:`\min(L_\mathrm{cls}(x), \kappa) - \lambda \cdot
    \mathrm{logit}_\mathrm{det}(x)` (Carlini and Wagner's recipe against detectors): push
    the classifier away from its clean prediction until it is fooled by a margin
    :math:`\kappa`, while keeping the detector's logit low. The detector's method is
    differentiated end to end (the consistency detector through the classifier, its squeezed
    copy and the twin; the triplet detector through its meta-features including the
    input-gradient features, by double back-propagation). Every step runs and the last
    iterate is kept (no early stop: stopping at the first flip would leave the detector term
    no room). The realism gate is not differentiable and is not followed: every model-space
    edit of measured counts leaves the count lattice, so the gate flags these cells whatever
    λ is; what this attacker measures is how far the method alone holds. An attacker who
    wants to pass the gate edits counts: :func:`scadv.tl.adaptive_count_attack`.

    Evaluate the result with :func:`scadv.tl.meta_evaluate`: the layers are scored like every
    other attack on the classifier.

    Parameters
    ----------
    adata
        Prepared, with a stored classifier and a detector from :func:`scadv.tl.meta_detect`.
    detector
        Key of the stored detector (its classifier is attacked).
    lam
        Weight λ ≥ 0 of the detector logit; 0 is plain PGD without early stop.
    eps
        One or several L∞ budgets (model-space z-score units).
    alpha
        Step size; default ``2.5 · ε / steps``.
    steps
        Gradient steps.
    loss
        Classifier part: ``'margin'`` (best other logit minus the clean class's; default) or
        ``'ce'`` (cross-entropy).
    kappa
        Cap of the classifier part: once the cell is fooled by this much, only the detector
        term is followed. ``None``: no cap.
    keep_zeros, clip, genes
        Realism constraints, as in :func:`scadv.tl.pgd`.
    cells
        ``'test'`` (default), ``'all'``, names or a mask.
    key_added
        Name of the run; default ``'adaptive_lam<λ>'`` (e.g. ``'adaptive_lam1'``).
    batch_size
        Cells per batch.
    seed
        Seed (kept for the record; the attack has no random start).
    device
        ``'auto'``, ``'cpu'`` or ``'cuda'``.
    progress
        Show a progress bar.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    A copy if ``copy=True``, else ``None``. Writes the same keys as :func:`scadv.tl.pgd`
    under ``key_added``: ``layers['scadv_<k>_eps<e>']``, the ``obs`` columns
    ``scadv_<k>_eps<e>_pred``, ``_flipped`` and ``_flipped_to``, and ``uns['scadv'][k]``
    with ``method='adaptive_pgd'``, ``detector``, ``lam`` and ``kappa``.
    """
    V.options(locals())
    V.name("detector", detector)
    V.nonneg("lam", lam)
    if kappa is not None:
        V.positive("kappa", kappa)
    V.flag("keep_zeros", keep_zeros)
    V.clip("clip", clip)
    start = logg.info(f"running adaptive PGD against detector {detector!r} (λ={lam:g})")
    params = P.call_params(locals(), adaptive_pgd)
    if not np.isfinite(lam) or lam < 0:
        raise ScadvInputError(f"lam must be a finite number ≥ 0, got {lam}.")
    if kappa is not None and not kappa > 0:
        raise ScadvInputError(f"kappa must be positive or None, got {kappa}.")
    eps_t = A.check_budget(eps, norm="linf", loss=loss, steps=steps, n_restarts=1, alpha=alpha)
    adata = V.start(adata, copy=copy)
    dev = D.resolve(device)
    det = MC.load(adata, detector, source=None, device=dev)
    model = str(det.record["model"])
    key = key_added or f"adaptive_lam{K.format_eps(lam)}"
    det.freeze()

    def objective(net: M.MLP, device: torch.device) -> E.Objective:
        def score(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            attack_score, _, _ = E.objective_and_grad(logits, y, loss=loss, targeted=False)
            if kappa is not None:
                attack_score = attack_score.clamp(max=float(kappa))
            if lam == 0:
                return attack_score
            return attack_score - float(lam) * det.torch_logit(x)
        return score

    alphas = tuple(2.5 * e / int(steps) if alpha is None else float(alpha) for e in eps_t)
    budget = A.Budget(eps=eps_t, norm="linf", alpha=alphas, steps=int(steps),
                      random_start=False, n_restarts=1, loss=loss)
    # the autograd path runs many small operations per step: one CPU thread avoids thread
    # synchronisation, which dominated on a busy 2-core machine (benchmarks/threads.py)
    with DT.single_thread(dev):
        A.attack(adata, method="adaptive_pgd", start=start, params=params, budget=budget,
                 target=None, away_from="prediction", genes=genes, clip=clip,
                 keep_zeros=keep_zeros, cells=cells, model=model, key_added=key,
                 batch_size=batch_size, seed=seed, device=dev, progress=progress,
                 early_stop=False, objective=objective,
                 extra={"detector": detector, "lam": float(lam),
                        "kappa": "None" if kappa is None else float(kappa)})
    return adata if copy else None
