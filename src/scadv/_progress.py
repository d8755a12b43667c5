"""The one place scadv makes progress bars: silent when asked, or at scanpy verbosity 0."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def enabled(progress: bool | None = True) -> bool:
    """Whether a bar shows: the function's ``progress=`` option (``None``: on) and scanpy's
    verbosity (``sc.settings.verbosity = 0``, errors only, silences every bar)."""
    if progress is False:
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
