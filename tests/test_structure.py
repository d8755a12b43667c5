"""The public API follows scanpy's conventions (like scanpy's own test_package_structure)."""

from __future__ import annotations

import inspect

import pytest
from anndata import AnnData

import scadv

NAMESPACES = {"pp": scadv.pp, "tl": scadv.tl, "pl": scadv.pl}
PUBLIC = [(f"{ns}.{name}", getattr(mod, name)) for ns, mod in NAMESPACES.items()
          for name in mod.__all__]


def test_every_namespace_exports_something():
    assert {"prepare", "transform"} <= set(scadv.pp.__all__)
    assert {"train_classifier", "predict", "pgd", "fgsm"} <= set(scadv.tl.__all__)
    assert "flip_rate" in scadv.pl.__all__


@pytest.mark.parametrize(("name", "func"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_signature(name, func):
    params = list(inspect.signature(func).parameters.values())
    assert params[0].name == "adata", f"{name}: adata must come first"
    assert params[0].annotation in (AnnData, "AnnData")
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    # adata, plus at most one required subject (label_key, reference): everything else keyword-only
    assert len(positional) <= 2, f"{name}: options must be keyword-only, got {positional}"
    for p in params[len(positional):]:
        assert p.kind is p.KEYWORD_ONLY, f"{name}: {p.name} must be keyword-only"
    names = [p.name for p in params]
    if not name.startswith("pl."):
        assert "copy" in names and inspect.signature(func).parameters["copy"].default is False
    elif name == "pl.report":  # a document, not a figure: no axes to draw into
        assert {"show", "save"} <= set(names)
    else:
        assert {"ax", "show", "save"} <= set(names)
    assert all(p.annotation is not p.empty for p in params), f"{name}: untyped parameters"


@pytest.mark.parametrize(("name", "func"), PUBLIC, ids=[n for n, _ in PUBLIC])
def test_docstring_says_what_is_written(name, func):
    doc = inspect.getdoc(func)
    assert doc and "Parameters" in doc
    assert "Returns" in doc
    if not name.startswith("pl."):
        assert "Writes" in doc or "writes" in doc, f"{name}: say where results are written"
