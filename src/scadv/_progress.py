"""The one place scadv makes progress bars: silent when asked, or at scanpy verbosity 0."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any

with warnings.catch_warnings():
    # in a notebook without ipywidgets, tqdm.auto warns once and falls back to text bars
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm


def enabled(progress: bool | None = True) -> bool:
    """Whether a bar shows: the function's ``progress=`` option (``None``: on), scanpy's
    verbosity (``sc.settings.verbosity = 0``, errors only, silences every bar) and tqdm's own
    ``TQDM_DISABLE`` environment variable (set when the documentation renders notebooks)."""
    if progress is False:
        return False
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return False
    import scanpy as sc

    try:
        level = int(sc.settings.verbosity)
    except (TypeError, ValueError):  # pragma: no cover - an unknown verbosity object
        level = 1
    return level > 0


def bar(iterable: Iterable[Any] | None = None, *, progress: bool | None = True,
        mininterval: float = 0.5, leave: bool = False, **kwargs: Any) -> tqdm:
    """A ``tqdm.auto`` bar (``mininterval=0.5``, not left behind), disabled by
    :func:`enabled`. Keyword arguments go to ``tqdm`` (``total``, ``desc``, ``unit``...)."""
    return tqdm(iterable, disable=not enabled(progress), mininterval=mininterval, leave=leave,
                **kwargs)
