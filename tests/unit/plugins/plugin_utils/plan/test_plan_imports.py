"""The planner's modules import one another without a cycle, and the model knows no
feature: each feature module (tunnels, ipsec, firewall, masquerade, relay) plans from
the model and writes its own section, and gateway.py assembles office_plan."""

from __future__ import annotations

import ast
from pathlib import Path

PLAN = Path(__file__).resolve().parents[5] / "plugins/plugin_utils/plan"
PACKAGE = "ansible_collections.sitelink.gateway.plugins.plugin_utils.plan"
FEATURES = {"tunnels", "ipsec", "firewall", "masquerade", "relay"}


def imports(path: Path) -> set[str]:
    """The plan modules ``path`` imports, anywhere in it (a function's body too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
            elif node.level == 0 and (node.module or "").startswith(PACKAGE):
                base = node.module[len(PACKAGE) + 1 :] or None
            else:
                continue
            if base:
                found.add(base.split(".")[0])
            else:  # from . import a, b
                found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name[len(PACKAGE) + 1 :].split(".")[0])
    return found


def graph() -> dict[str, set[str]]:
    modules = {p.stem: p for p in PLAN.glob("*.py") if p.stem != "__init__"}
    return {name: imports(path) & set(modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module, or one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges[node]:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_the_planner():
    assert cycles(graph()) == []


def test_the_cycle_check_finds_one():
    assert cycles({"model": {"gateway"}, "gateway": {"model"}, "build": {"model"}}) == [
        ["gateway", "model"]
    ]


def test_the_model_imports_no_feature_and_no_assembly():
    edges = graph()
    assert edges["model"] <= {"schema"}, edges["model"]
    assert not (FEATURES | {"gateway", "build"}) & edges["model"]
    # Each feature module's section is what gateway.py assembles.
    assert edges["gateway"] >= FEATURES
