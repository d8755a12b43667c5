"""Sphinx configuration for the scadv documentation (MyST Markdown + NumPy docstrings)."""

from __future__ import annotations

import os
import shutil
import sys
from importlib.metadata import version as _version
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(DOCS))  # _examples: data of the example figures on the pl.* pages

import _examples  # noqa: E402

project = "scadv"
author = "scadv developers"
copyright = "2026, scadv developers"
release = _version("scadv")

extensions = [
    "myst_nb",  # MyST Markdown (it includes myst_parser) and notebooks
    "matplotlib.sphinxext.plot_directive",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
# *.py: conf.py and _examples.py are not pages (the tutorials are, under tutorials/)
exclude_patterns = ["_build", "generated/*.md", "*.py", "jupyter_execute"]
templates_path = ["_templates"]

# ---- tutorials: tutorials/*.py (jupytext percent scripts) rendered as executed notebooks ----
# With SCADV_EXECUTED_TUTORIALS (a folder of notebooks the test suite has just executed, see
# tests/conftest.executed_tutorials) those are rendered as they are: CI runs each tutorial once.
# Otherwise (make docs) myst-nb executes the scripts itself, cached in _build/.jupyter_cache
# and re-run only when a tutorial changes.
_TUTORIALS = DOCS / "tutorials"  # generated at each build, ignored by git
shutil.rmtree(_TUTORIALS, ignore_errors=True)
_TUTORIALS.mkdir()
_EXECUTED = os.environ.get("SCADV_EXECUTED_TUTORIALS")
for _script in sorted((REPO / "tutorials").glob("*.py")):
    _done = Path(_EXECUTED) / f"{_script.stem}.ipynb" if _EXECUTED else None
    if _done is not None and _done.exists():
        shutil.copy(_done, _TUTORIALS / _done.name)
    else:
        shutil.copy(_script, _TUTORIALS / _script.name)
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "off" if _EXECUTED else os.environ.get("SCADV_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_merge_streams = True
os.environ.setdefault("SCADV_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the rendered notebooks
os.environ.setdefault("SCADV_TUTORIAL_OUT", str(DOCS / "_build" / "tutorial_out"))

# ---- the example figure on every pl.* page (_templates/autosummary/function.rst) ------------
autosummary_context = {"scadv_examples": _examples.SNIPPETS}
plot_formats = [("png", 90)]
plot_html_show_formats = False
plot_html_show_source_link = False
plot_rcparams = {"figure.max_open_warning": 0}

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Writes", "params_style")]
nitpicky = False

try:
    import furo  # noqa: F401

    html_theme = "furo"
except ImportError:  # pragma: no cover - plain theme without the docs extra
    html_theme = "alabaster"
html_title = f"scadv {release}"
html_static_path = ["_static"]
