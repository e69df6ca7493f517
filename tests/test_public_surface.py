"""The public names of DESIGN.md resolve to the objects of their defining modules."""

from __future__ import annotations

import importlib

import pytest

import mpprune
import mptheory


@pytest.mark.parametrize("pkg", [mptheory, mpprune])
def test_lazy_names_resolve(pkg):
    for name, module in pkg._LAZY.items():
        if module == "mpprune.certify" and importlib.util.find_spec(module) is None:
            continue
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018


def test_design_examples():
    law = mptheory.MarchenkoPastur(ratio=0.25, sigma2=1.0)
    lo, hi = law.edges
    assert lo == pytest.approx(0.25) and hi == pytest.approx(2.25)
    assert mptheory.TracyWidom(beta=1).ppf(0.95) == pytest.approx(0.9793, abs=2e-3)
