"""scadv: adversarial robustness of single-cell RNA-seq classifiers, as a scanpy plugin.

Namespaces follow scanpy: :mod:`scadv.pp` (preprocessing), :mod:`scadv.tl` (tools),
:mod:`scadv.pl` (plots), :mod:`scadv.get` (arrays of what scadv computed) and
:mod:`scadv.datasets`; :mod:`scadv.models` brings the classifier you already use (CellTypist,
scikit-learn, PyTorch) to every tool; :mod:`scadv.classifiers` wraps any classifier for the
gene-level attacks.
"""

from importlib.metadata import PackageNotFoundError, version

from . import classifiers, datasets, get, models, pl, pp, tl
from ._errors import ScadvInputError

try:
    __version__ = version("scadv")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "ScadvInputError", "__version__", "classifiers", "datasets", "get", "models", "pl", "pp",
    "tl",
]
