"""The registries' declared names: known without importing their modules, and exactly the registered ones."""

from __future__ import annotations

import sys

import pytest

from kdsweep.core.dataset_registry import DATASETS
from kdsweep.core.models.registry import MODELS
from kdsweep.core.registry import Registry


@pytest.mark.parametrize("registry", [MODELS, DATASETS], ids=["models", "datasets"])
def test_declared_names_are_exactly_the_registered_ones(registry):
    # a declared name no module registers would pass validation and fail at the first build
    assert registry.load_all() == []
    # and a registered name left undeclared would import torch at validation (tests/test_light_validate.py)
    registered = {n for n in registry._items if not n.startswith("probe")}  # test_failures adds a probe model
    assert registered == set(registry._declared), registered ^ set(registry._declared)


def test_a_declared_name_is_known_before_its_module_is_imported_and_loaded_on_get(tmp_path, monkeypatch):
    (tmp_path / "lazy_family.py").write_text("from test_registry_lazy import REG\nREG.register('tiny')(len)\n")
    (tmp_path / "test_registry_lazy.py").write_text(
        "from kdsweep.core.registry import Registry\nREG = Registry('model', {'lazy_family': ('tiny',)})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from test_registry_lazy import REG

    assert "tiny" in REG and REG.names() == ["tiny"]
    assert "lazy_family" not in sys.modules  # named, not imported
    assert REG.get("tiny") is len  # the first get imports the module that registers it
    assert "lazy_family" in sys.modules
    monkeypatch.delitem(sys.modules, "lazy_family")
    monkeypatch.delitem(sys.modules, "test_registry_lazy")


def test_an_unknown_name_lists_the_declared_ones_too():
    reg = Registry("model", {"nowhere.module": ("declared",)})
    reg.register("built")(len)
    with pytest.raises(ValueError, match=r"unknown model 'x'; choose from \['built', 'declared'\]"):
        reg.get("x")
