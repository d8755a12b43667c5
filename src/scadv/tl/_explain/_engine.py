"""The attribution engine behind :func:`scadv.tl.attribute` and the attribution checks.

An :class:`Explainer` turns a batch of cells (model-space rows) and a target class per cell
into one attribution per (cell, gene). Gradient methods go through captum (a well-kept
library made for exactly this) on any differentiable ``nn.Module`` returning logits;
occlusion and LIME only call the model, so they also explain black-box classifiers (any
callable returning class probabilities). Everything is batched over cells, and the
perturbation methods build their perturbed inputs for many cells at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ... import _progress as PB

METHODS = ("saliency", "grad_x_input", "integrated_gradients", "smoothgrad", "deeplift",
           "deepshap", "occlusion", "lime")
#: Methods that need the model's gradients (a differentiable ``nn.Module``).
GRADIENT_METHODS = ("saliency", "grad_x_input", "integrated_gradients", "smoothgrad",
                    "deeplift", "deepshap")
#: Methods whose attributions are magnitudes (sensitivity in either direction).
UNSIGNED = ("saliency", "smoothgrad")
#: Methods with a completeness property whose gap (the convergence delta) is reported.
WITH_DELTA = ("integrated_gradients", "deeplift", "deepshap")
#: Default of ``n_samples`` per method.
DEFAULT_SAMPLES = {"smoothgrad": 25, "deepshap": 50, "lime": 1000}
#: LIME's ridge penalty and kernel width (cosine distance to the unperturbed cell).
LIME_RIDGE = 1.0
LIME_KERNEL_WIDTH = 1.0

BlackBox = Callable[[np.ndarray], np.ndarray]


@dataclass
class Explainer:
    """Attributions of one method for one model, with everything fixed but the cells.

    Exactly one of ``net`` (differentiable, returns logits; attributions explain the target
    logit) and ``black_box`` (numpy in, class probabilities out; attributions explain the
    target probability) is set.
    """

    method: str
    baseline: np.ndarray  # (genes,)
    net: nn.Module | None = None
    black_box: BlackBox | None = None
    references: np.ndarray | None = None  # (n_ref, genes): DeepSHAP's reference cells
    n_steps: int = 50
    n_samples: int = 25
    noise: float = 0.2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    batch_size: int = 4096

    # ---- the model's output ---------------------------------------------------------------

    def output(self, x: np.ndarray) -> np.ndarray:
        """Logits (differentiable model) or probabilities (black box) of the rows of ``x``."""
        if (black_box := self.black_box) is not None:
            out = [np.asarray(black_box(x[lo:lo + self.batch_size]), dtype=np.float64)
                   for lo in range(0, len(x), self.batch_size)]
            return np.concatenate(out) if out else np.empty((0, 0))
        if (net := self.net) is None:
            raise RuntimeError("internal: an explainer with neither a network nor a black box")
        with torch.no_grad():
            out = [net(torch.as_tensor(x[lo:lo + self.batch_size], device=self.device))
                   .cpu().numpy() for lo in range(0, len(x), self.batch_size)]
        return np.concatenate(out).astype(np.float64)

    def _target_output(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return self.output(x)[np.arange(len(x)), targets]

    # ---- attributions ---------------------------------------------------------------------

    def __call__(self, x: np.ndarray, targets: np.ndarray, *, progress: bool = False
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """Attributions (cells × genes, float32) and, for methods with a completeness property,
        each cell's convergence delta (sum of attributions minus the output difference)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        targets = np.asarray(targets, dtype=np.int64)
        n, d = x.shape
        if self.method == "lime":
            return self._lime(x, targets, progress=progress), None
        rows_per_cell = {"integrated_gradients": self.n_steps, "smoothgrad": self.n_samples,
                         "deepshap": len(self.references) if self.references is not None else 1,
                         "occlusion": d}.get(self.method, 1)
        chunk = max(1, self.batch_size // rows_per_cell)
        attr = np.empty((n, d), dtype=np.float32)
        delta = np.empty(n, dtype=np.float64) if self.method in WITH_DELTA else None
        bar = PB.bar(total=n, desc=self.method, unit="cell", progress=progress)
        cuda_ids = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda_ids), warnings.catch_warnings():
            torch.manual_seed(self.seed)
            warnings.simplefilter("ignore", UserWarning)  # captum's notes on hooks and inputs
            for lo in range(0, n, chunk):
                hi = min(lo + chunk, n)
                a, dl = self._batch(x[lo:hi], targets[lo:hi])
                attr[lo:hi] = a
                if delta is not None:
                    delta[lo:hi] = dl
                bar.update(hi - lo)
        bar.close()
        return attr, delta

    def _batch(self, x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.method == "occlusion":
            return self._occlusion(x, targets), None
        from captum import attr as ca

        dev = self.device
        xt = torch.as_tensor(x, device=dev)
        tt = torch.as_tensor(targets, device=dev)
        base = torch.as_tensor(self.baseline, dtype=torch.float32, device=dev).unsqueeze(0)
        m = self.method
        if m == "saliency":
            out = ca.Saliency(self.net).attribute(xt, target=tt, abs=True)
            return out.detach().cpu().numpy(), None
        if m == "grad_x_input":
            grad = ca.Saliency(self.net).attribute(xt, target=tt, abs=False)
            return (grad * (xt - base)).detach().cpu().numpy(), None
        if m == "smoothgrad":
            out = ca.NoiseTunnel(ca.Saliency(self.net)).attribute(
                xt, nt_type="smoothgrad", nt_samples=self.n_samples, stdevs=float(self.noise),
                target=tt, abs=True)
            return out.detach().cpu().numpy(), None
        if m == "integrated_gradients":
            out, dl = ca.IntegratedGradients(self.net).attribute(
                xt, baselines=base.expand_as(xt), target=tt, n_steps=self.n_steps,
                method="gausslegendre", internal_batch_size=self.batch_size,
                return_convergence_delta=True)
            return out.detach().cpu().numpy(), dl.detach().cpu().numpy()
        if m == "deeplift":
            out, dl = ca.DeepLift(self.net).attribute(
                xt, baselines=base.expand_as(xt), target=tt, return_convergence_delta=True)
            return out.detach().cpu().numpy(), dl.detach().cpu().numpy()
        if m == "deepshap":
            refs = torch.as_tensor(self.references, device=dev)
            out, dl = ca.DeepLiftShap(self.net).attribute(
                xt, baselines=refs, target=tt, return_convergence_delta=True)
            dl = dl.detach().cpu().numpy().reshape(len(x), -1)
            return out.detach().cpu().numpy(), dl.mean(axis=1)
        raise ValueError(f"internal: unknown method {m!r}")

    def _occlusion(self, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Output drop when each gene alone is set to its baseline value."""
        b, d = x.shape
        rows = np.repeat(x[:, None, :], d, axis=1)  # (cells, genes occluded, genes)
        idx = np.arange(d)
        rows[:, idx, idx] = self.baseline[None, :]
        occluded = self.output(rows.reshape(b * d, d)).reshape(b, d, -1)
        full = self.output(x)
        cell = np.arange(b)
        return (full[cell, targets][:, None] - occluded[cell, :, targets]).astype(np.float32)

    def _lime(self, x: np.ndarray, targets: np.ndarray, *, progress: bool) -> np.ndarray:
        """LIME with binary gene masks (kept: the cell's value; dropped: the baseline), one
        shared set of masks for all cells, so one weighted ridge fit explains every cell."""
        n, d = x.shape
        s = int(self.n_samples)
        rng = np.random.default_rng(self.seed)
        z = (rng.random((s, d)) < 0.5).astype(np.float32)  # 1: gene kept
        kept = z.sum(axis=1)
        cos = kept / np.sqrt(np.maximum(kept, 1) * d)
        w = np.exp(-((1.0 - cos) ** 2) / LIME_KERNEL_WIDTH**2)
        # weighted ridge with intercept: centre by the weighted means, solve once for all cells
        zc = z - (w @ z) / w.sum()
        gram = (zc * w[:, None]).T @ zc + LIME_RIDGE * np.eye(d, dtype=np.float64)
        solve = np.linalg.solve(gram, (zc * w[:, None]).T)  # (genes, samples)
        attr = np.empty((n, d), dtype=np.float32)
        chunk = max(1, self.batch_size // s)
        bar = PB.bar(total=n, desc="lime", unit="cell", progress=progress)
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            xb = x[lo:hi]
            # (cells, samples, genes): baseline + mask · (x − baseline)
            rows = self.baseline[None, None, :] + z[None] * (xb - self.baseline)[:, None, :]
            out = self.output(rows.reshape(-1, d)).reshape(hi - lo, s, -1)
            y = out[np.arange(hi - lo), :, targets[lo:hi]]  # (cells, samples)
            y = y - (y @ w)[:, None] / w.sum()
            attr[lo:hi] = (solve @ y.T).T
            bar.update(hi - lo)
        bar.close()
        return attr


def class_scores(attr: np.ndarray, groups: np.ndarray, n_classes: int) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Per class, the mean attribution over the cells of that group: (classes × genes) scores
    (NaN rows for classes without cells) and the number of cells per class."""
    counts = np.bincount(groups, minlength=n_classes)
    onehot = np.zeros((n_classes, len(groups)), dtype=np.float64)
    onehot[groups, np.arange(len(groups))] = 1.0
    sums = onehot @ attr.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = sums / counts[:, None]
    scores[counts == 0] = np.nan
    return scores, counts
