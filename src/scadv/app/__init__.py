"""``scadv app``: an interactive web app (Dash) to attack single cells and see what happens.

Pick a cell on the UMAP (or by name), attack it (PGD and its options, or a gene-level attack
that modifies its genes one by one), and see its class probabilities before and after, the
stored meta-detector's verdict and the genes that moved; evaluate the whole test set; save to
a new file on request. Start it with ``scadv app [FILE.h5ad]`` or :func:`serve`; build the Dash
app with :func:`make_app`.

Needs the ``app`` extra: ``pip install 'scadv[app]'`` (Dash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._errors import ScadvInputError
from . import (
    _counts,  # noqa: F401  (registers the count attack)
    _genes,  # noqa: F401  (registers the gene-level attack)
)
from ._session import ATTACKS, AttackSpec, CellResult, Option, Session, load, register

__all__ = ["ATTACKS", "AttackSpec", "CellResult", "Option", "Session", "load", "make_app",
           "register", "serve"]


def make_app(session: Session) -> Any:
    """The Dash app showing ``session`` (call ``.run()`` on it, or serve ``.server``)."""
    try:
        import dash  # noqa: F401
    except ImportError as err:
        raise ScadvInputError("the app needs Dash: pip install 'scadv[app]'.") from err
    from ._page import build

    return build(session)


def serve(path: str | Path | None = None, *, port: int = 8050, host: str = "127.0.0.1",
          label_key: str | None = None, open_browser: bool = True, quick: bool = False) -> None:
    """Load ``path`` (default: the bundled pbmc68k_reduced, trained on start) and serve the
    app at ``http://host:port`` until interrupted."""
    if path is None:
        print("scadv app: preparing pbmc68k_reduced and training a classifier and a "
              "meta-detector (about a minute)...", flush=True)
    session = load(path, label_key=label_key, quick=quick)
    app = make_app(session)
    url = f"http://{host}:{port}/"
    print(f"scadv app on {session.name}: {url} (Ctrl+C to stop)", flush=True)
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.5, webbrowser.open, args=(url,)).start()
    app.run(host=host, port=port, debug=False)
