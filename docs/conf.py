"""Sphinx configuration for the scadv documentation (MyST Markdown + NumPy docstrings)."""

from __future__ import annotations

from importlib.metadata import version as _version

project = "scadv"
author = "scadv developers"
copyright = "2026, scadv developers"
release = _version("scadv")

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "generated/*.md"]

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
