"""The meta-detector's two networks, their training, and their storage as plain arrays.

* :class:`TripletNet`: meta-features (M) → 256 → ReLU → 64, L2-normalised; trained with the
  triplet margin loss (anchor and positive: clean cells of one class; negative: an
  adversarial cell).
* :class:`Detector`: the 64-d triplet embedding → 128, two residual blocks
  ``x + FC(ReLU(FC(x)))``, → one logit (adversarial); trained with BCE-with-logits on
  balanced clean / adversarial data, early-stopped on a validation set.

Like the classifier (:mod:`scadv._model`), a stored detector is a dictionary of numpy arrays,
numbers and strings; :func:`from_record` checks every weight's name, shape and dtype before
building the networks, so nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import _progress as PB
from . import _records as REC
from ._errors import ScadvInputError
from ._model import weights_to_arrays

DETECTOR_KIND = "scadv.meta_detector"
FORMAT_VERSION = 2


class TripletNet(nn.Module):
    """Meta-features → ``hidden`` → ReLU → ``embed_dim``, L2-normalised."""

    def __init__(self, n_features: int, hidden: int = 256, embed_dim: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = self.fc2(torch.relu(self.fc1(f)))
        return nn.functional.normalize(z, dim=1)


class Residual(nn.Module):
    """``x + FC(ReLU(FC(x)))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


class Detector(nn.Module):
    """Triplet embedding → ``width``, ``n_blocks`` residual blocks, → one logit."""

    def __init__(self, embed_dim: int = 64, width: int = 128, n_blocks: int = 2) -> None:
        super().__init__()
        self.fc_in = nn.Linear(embed_dim, width)
        self.blocks = nn.Sequential(*[Residual(width) for _ in range(n_blocks)])
        self.head = nn.Linear(width, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.fc_in(z))).squeeze(1)


@dataclass(frozen=True)
class Shape:
    """Widths of both networks, as stored under ``record['arch']``."""

    n_features: int
    hidden: int = 256
    embed_dim: int = 64
    width: int = 128
    n_blocks: int = 2

    def build(self) -> tuple[TripletNet, Detector]:
        return (TripletNet(self.n_features, self.hidden, self.embed_dim),
                Detector(self.embed_dim, self.width, self.n_blocks))

    def weight_shapes(self) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """Name and shape of every weight of the triplet network and of the detector (their
        ``state_dict``), computed without building them."""
        triplet = {"fc1.weight": (self.hidden, self.n_features), "fc1.bias": (self.hidden,),
                   "fc2.weight": (self.embed_dim, self.hidden), "fc2.bias": (self.embed_dim,)}
        w = self.width
        detector = {"fc_in.weight": (w, self.embed_dim), "fc_in.bias": (w,)}
        for i in range(self.n_blocks):
            for fc in ("fc1", "fc2"):
                detector.update({f"blocks.{i}.{fc}.weight": (w, w), f"blocks.{i}.{fc}.bias": (w,)})
        detector.update({"head.weight": (1, w), "head.bias": (1,)})
        return triplet, detector

    def as_dict(self) -> dict[str, int]:
        return {"n_features": self.n_features, "hidden": self.hidden,
                "embed_dim": self.embed_dim, "width": self.width, "n_blocks": self.n_blocks}


@dataclass
class Networks:
    """A fitted detector: feature standardisation, the two networks and their shape."""

    shape: Shape
    mean: np.ndarray  # (M,) feature means of the training data
    scale: np.ndarray  # (M,) feature standard deviations (1 where constant)
    triplet: TripletNet
    detector: Detector

    def to_record(self) -> dict[str, Any]:
        return {
            "arch": self.shape.as_dict(),
            "feature_mean": self.mean.astype(np.float32),
            "feature_scale": self.scale.astype(np.float32),
            "triplet_weights": weights_to_arrays(self.triplet),
            "detector_weights": weights_to_arrays(self.detector),
        }

    @torch.no_grad()
    def embed(self, features: np.ndarray, *, device: torch.device,
              batch_size: int = 8192) -> np.ndarray:
        """The triplet embedding (cells × ``embed_dim``) of raw meta-features."""
        self.triplet.to(device).eval()
        out = []
        for lo in range(0, len(features), batch_size):
            f = self._standardise(features[lo:lo + batch_size], device)
            out.append(self.triplet(f).cpu().numpy())
        return (np.concatenate(out) if out
                else np.empty((0, self.shape.embed_dim), dtype=np.float32))

    @torch.no_grad()
    def logit(self, features: np.ndarray, *, device: torch.device,
              batch_size: int = 8192) -> np.ndarray:
        """The detector's logit (higher: more likely adversarial) of raw meta-features."""
        self.triplet.to(device).eval()
        self.detector.to(device).eval()
        out = []
        for lo in range(0, len(features), batch_size):
            f = self._standardise(features[lo:lo + batch_size], device)
            out.append(self.detector(self.triplet(f)).cpu().numpy())
        return np.concatenate(out) if out else np.empty(0, dtype=np.float32)

    def torch_logit(self, features: torch.Tensor) -> torch.Tensor:
        """Differentiable logit of a feature tensor (for an adaptive attacker)."""
        mean = torch.as_tensor(self.mean, device=features.device)
        scale = torch.as_tensor(self.scale, device=features.device)
        return self.detector(self.triplet((features - mean) / scale))

    def _standardise(self, f: np.ndarray, device: torch.device) -> torch.Tensor:
        f = (np.asarray(f, dtype=np.float32) - self.mean) / self.scale
        return torch.as_tensor(f, device=device)


DETECTOR_FIX = "train the detector again with scadv.tl.meta_detect."
ARCH = {
    "n_features": REC.Field("int", low=1, high=REC.MAX_GENES),
    "hidden": REC.Field("int", low=1, high=REC.MAX_WIDTH),
    "embed_dim": REC.Field("int", low=1, high=REC.MAX_WIDTH),
    "width": REC.Field("int", low=1, high=REC.MAX_WIDTH),
    "n_blocks": REC.Field("int", low=0, high=REC.MAX_LAYERS),
}


def check_record(record: Mapping[str, Any], *, what: str = "meta-detector"
                 ) -> tuple[Shape, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Validate the networks of a stored detector before anything is allocated: declared sizes
    (against hard limits and the stored arrays), feature standardisation (finite, scale > 0)
    and every weight (names, shapes, dtype, finite). Returns the shape and the float32 weights
    of the triplet network and of the detector."""
    top = REC.fields(record, {"arch": REC.Field("map"),
                              "feature_mean": REC.Field("floats", ("n_features",)),
                              "feature_scale": REC.Field("floats", ("n_features",)),
                              "triplet_weights": REC.Field("map"),
                              "detector_weights": REC.Field("map")},
                     what=what, fix=DETECTOR_FIX)
    a = REC.fields(top["arch"], ARCH, what=f"{what} architecture", fix=DETECTOR_FIX)
    shape = Shape(*(a[k] for k in ("n_features", "hidden", "embed_dim", "width", "n_blocks")))
    if len(top["feature_mean"]) != shape.n_features:
        raise REC.malformed(what, "'feature_mean' / 'feature_scale'",
                            f"have {len(top['feature_mean'])} entries; the architecture "
                            f"declares {shape.n_features} features", DETECTOR_FIX)
    scale32 = top["feature_scale"].astype(np.float32)
    if not (np.all(scale32 > 0) and np.all(np.isfinite(scale32))):
        raise REC.malformed(what, "'feature_scale'", "holds zero or negative values",
                            DETECTOR_FIX)
    t_shapes, d_shapes = shape.weight_shapes()
    n = REC.n_parameters(t_shapes) + REC.n_parameters(d_shapes)
    if n > REC.MAX_PARAMETERS:
        raise REC.malformed(what, "arch", f"declares {n} weights (more than "
                            f"{REC.MAX_PARAMETERS})", DETECTOR_FIX)
    t = REC.weights(top["triplet_weights"], t_shapes, what=f"{what} (triplet network)",
                    fix=DETECTOR_FIX)
    d = REC.weights(top["detector_weights"], d_shapes, what=what, fix=DETECTOR_FIX)
    return shape, t, d


def from_record(record: Mapping[str, Any], device: torch.device | str = "cpu") -> Networks:
    """Rebuild a fitted detector from the arrays :meth:`Networks.to_record` stored (checked
    first by :func:`check_record`)."""
    if not isinstance(record, Mapping) or "arch" not in record:
        raise ScadvInputError("stored detector is malformed: no 'arch' entry.")
    shape, t, d = check_record(record)
    triplet, detector = shape.build()
    triplet.load_state_dict({k: torch.from_numpy(v) for k, v in t.items()})
    detector.load_state_dict({k: torch.from_numpy(v) for k, v in d.items()})
    mean = np.asarray(record["feature_mean"], dtype=np.float32)
    scale = np.asarray(record["feature_scale"], dtype=np.float32)
    return Networks(shape, mean, scale, triplet.to(device).eval(), detector.to(device).eval())


# ---- training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of both stages (the brief's defaults)."""

    triplet_epochs: int = 15
    triplet_margin: float = 1.0
    detector_epochs: int = 30
    patience: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2  # AdamW's default


def fit(clean: np.ndarray, clean_class: np.ndarray, adv: np.ndarray, adv_source: np.ndarray,
        val_clean: np.ndarray, val_adv: np.ndarray, *, shape: Shape, options: TrainOptions,
        seed: int, device: torch.device, progress: bool) -> tuple[Networks, dict[str, Any]]:
    """Train the triplet network, then the detector on its frozen embedding.

    Parameters
    ----------
    clean, clean_class
        Meta-features of clean training cells and their class (the classifier's label).
    adv, adv_source
        Meta-features of adversarial training rows and the row of ``clean`` each came from.
    val_clean, val_adv
        Meta-features of held-out clean and adversarial rows (early stopping of the detector).
    """
    all_f = np.vstack([clean, adv])
    mean = all_f.mean(axis=0).astype(np.float32)
    scale = all_f.std(axis=0).astype(np.float32)
    scale[~(scale > 1e-8)] = 1.0
    cuda_ids = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_ids), single_thread(device):
        torch.manual_seed(seed)
        triplet, detector = shape.build()
        nets = Networks(shape, mean, scale, triplet.to(device), detector.to(device))
        rng = np.random.default_rng(seed)
        bar = PB.bar(total=options.triplet_epochs + options.detector_epochs, desc="meta-detector",
                   unit="epoch", progress=progress)
        try:
            t_hist = _fit_triplet(nets, clean, clean_class, adv, adv_source, options=options,
                                  rng=rng, device=device, bar=bar)
            d_hist = _fit_detector(nets, clean, adv, val_clean, val_adv, options=options,
                                   rng=rng, device=device, bar=bar)
        finally:
            bar.close()
    nets.triplet.eval()
    nets.detector.eval()
    return nets, {**t_hist, **d_hist}


@contextlib.contextmanager
def single_thread(device: torch.device) -> Iterator[None]:
    """One CPU thread while training the small networks: their matrices are tiny, and thread
    synchronisation costs more than it saves (see ``benchmarks/threads.py``)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _negatives(anchor: np.ndarray, clean_class: np.ndarray, adv_source: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """For each anchor (a clean row), an adversarial row: one made from the anchor itself when
    there is one, else one made from a cell of its class, else any."""
    n_adv = len(adv_source)
    order = np.argsort(adv_source, kind="stable")
    sorted_src = adv_source[order]
    lo = np.searchsorted(sorted_src, anchor, side="left")
    hi = np.searchsorted(sorted_src, anchor, side="right")
    has_own = hi > lo
    pick = np.empty(len(anchor), dtype=np.int64)
    pick[has_own] = order[lo[has_own] + (rng.random(has_own.sum()) * (hi - lo)[has_own])
                          .astype(np.int64)]
    rest = np.flatnonzero(~has_own)
    if len(rest):
        adv_class = clean_class[adv_source]
        for c in np.unique(clean_class[anchor[rest]]):
            rows = rest[clean_class[anchor[rest]] == c]
            pool = np.flatnonzero(adv_class == c)
            pool = pool if len(pool) else np.arange(n_adv)
            pick[rows] = pool[rng.integers(0, len(pool), len(rows))]
    return pick


def _positives(anchor: np.ndarray, clean_class: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """For each anchor, another clean row of the same class (itself if it is alone)."""
    order = np.argsort(clean_class, kind="stable")
    sorted_cls = clean_class[order]
    lo = np.searchsorted(sorted_cls, clean_class[anchor], side="left")
    hi = np.searchsorted(sorted_cls, clean_class[anchor], side="right")
    return order[lo + (rng.random(len(anchor)) * (hi - lo)).astype(np.int64)]


def _fit_triplet(nets: Networks, clean: np.ndarray, clean_class: np.ndarray, adv: np.ndarray,
                 adv_source: np.ndarray, *, options: TrainOptions, rng: np.random.Generator,
                 device: torch.device, bar: tqdm) -> dict[str, np.ndarray]:
    model = nets.triplet
    fc = nets._standardise(clean, device)
    fa = nets._standardise(adv, device)
    loss_fn = nn.TripletMarginLoss(margin=options.triplet_margin)
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    losses = []
    for _ in range(options.triplet_epochs):
        model.train()
        anchor = rng.permutation(len(clean))
        pos = _positives(anchor, clean_class, rng)
        neg = _negatives(anchor, clean_class, adv_source, rng)
        total = 0.0
        for lo in range(0, len(anchor), options.batch_size):
            sl = slice(lo, lo + options.batch_size)
            a, p, n = (torch.as_tensor(i[sl], device=device) for i in (anchor, pos, neg))
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(fc[a]), model(fc[p]), model(fa[n]))
            loss.backward()
            opt.step()
            total += loss.item() * len(a)
        losses.append(total / len(anchor))
        bar.update(1)
        bar.set_postfix(triplet_loss=f"{losses[-1]:.3f}")
    return {"triplet_loss": np.asarray(losses, dtype=np.float64)}


def _balanced_bce(logits: torch.Tensor, target: torch.Tensor) -> float:
    """BCE with both classes weighted equally."""
    with torch.no_grad():
        per = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return float(0.5 * per[target == 0].mean() + 0.5 * per[target == 1].mean())


def _fit_detector(nets: Networks, clean: np.ndarray, adv: np.ndarray, val_clean: np.ndarray,
                  val_adv: np.ndarray, *, options: TrainOptions, rng: np.random.Generator,
                  device: torch.device, bar: tqdm) -> dict[str, Any]:
    nets.triplet.eval()
    with torch.no_grad():
        zc = nets.triplet(nets._standardise(clean, device))
        za = nets.triplet(nets._standardise(adv, device))
        zv = nets.triplet(nets._standardise(np.vstack([val_clean, val_adv]), device))
    yv = torch.cat([torch.zeros(len(val_clean)), torch.ones(len(val_adv))]).to(device)
    model = nets.detector
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    n = min(len(clean), len(adv))  # balanced: n clean and n adversarial rows per epoch
    history: dict[str, list[float]] = {"detector_loss": [], "detector_val_loss": []}
    best, best_state, best_epoch, bad = float("inf"), None, 0, 0
    for epoch in range(options.detector_epochs):
        model.train()
        ic = rng.permutation(len(clean))[:n]
        ia = rng.permutation(len(adv))[:n]
        z = torch.cat([zc[torch.as_tensor(ic, device=device)],
                       za[torch.as_tensor(ia, device=device)]])
        y = torch.cat([torch.zeros(n), torch.ones(n)]).to(device)
        order = torch.as_tensor(rng.permutation(2 * n), device=device)
        total = 0.0
        for lo in range(0, 2 * n, options.batch_size):
            idx = order[lo:lo + options.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.binary_cross_entropy_with_logits(model(z[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val = _balanced_bce(model(zv), yv)
        history["detector_loss"].append(total / (2 * n))
        history["detector_val_loss"].append(val)
        bar.update(1)
        bar.set_postfix(val_loss=f"{val:.3f}")
        if val < best - 1e-4:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= options.patience:
                bar.update(options.detector_epochs - epoch - 1)
                break
    if best_state is None:  # the validation loss was never finite
        raise ScadvInputError(
            "the meta-detector's validation loss was NaN or infinite in every epoch, so there is "
            "no detector to keep. Check the training cells for extreme values, or lower lr."
        )
    model.load_state_dict(best_state)
    model.eval()
    return {**{k: np.asarray(v, dtype=np.float64) for k, v in history.items()},
            "detector_best_epoch": np.int64(best_epoch + 1)}


def check_options(options: TrainOptions) -> None:
    """Validate the training options; raise :class:`ScadvInputError` naming every problem."""
    problems = []
    if options.triplet_epochs < 0 or options.detector_epochs < 1 or options.patience < 1:
        problems.append("triplet_epochs must be ≥ 0, detector_epochs and patience ≥ 1, got "
                        f"{options.triplet_epochs}, {options.detector_epochs} and "
                        f"{options.patience}")
    if options.batch_size < 1 or not options.lr > 0 or not options.triplet_margin > 0:
        problems.append("batch_size, lr and triplet_margin must be positive")
    if problems:
        raise ScadvInputError("; ".join(problems) + ".")
