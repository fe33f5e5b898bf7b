"""The routing recipes of otel-collector/recipes/ against docs/routing.md, without a
Collector (`make lint` validates them with one, tests/e2e/test_routing.py runs them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stack.local import RECIPE_ENDPOINTS, RECIPES_DIR

REPO = Path(__file__).resolve().parents[2]
ROUTING_DOC = (REPO / "docs" / "routing.md").read_text(encoding="utf-8")
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))


def test_there_are_recipes() -> None:
    assert {p.stem for p in RECIPES} >= {
        "tenant-endpoint",
        "long-term-copy",
        "second-tier-copy",
        "tenant-tuning",
        "agent-kinds",
        "none",
    }


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_and_its_variables_are_in_the_docs(recipe: Path) -> None:
    text = recipe.read_text(encoding="utf-8")
    assert "docs/routing.md" in text, f"{recipe.name}: its header should point at the docs"
    assert f"{recipe.stem}" in ROUTING_DOC, f"docs/routing.md does not describe {recipe.name}"
    for variable in re.findall(r"\$\{env:([A-Z0-9_]+)", text):
        assert f"`{variable}`" in ROUTING_DOC, f"docs/routing.md does not list {variable}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_no_recipe_writes_tenant_id(recipe: Path) -> None:
    document = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    processors = yaml.safe_dump(document.get("processors") or {})
    assert not re.search(r"(set|merge_maps|replace_\w+)\([^)]*tenant_id", processors)
    assert not re.search(r"key: tenant_id", processors)


def test_the_endpoints_the_recipes_add_are_the_ones_the_stack_gives_ports() -> None:
    added = {
        variable
        for recipe in RECIPES
        for variable in re.findall(r"endpoint: \$\{env:([A-Z0-9_]+)", recipe.read_text())
        if variable.startswith("COLLECTOR_")
    }
    assert added == set(RECIPE_ENDPOINTS)
