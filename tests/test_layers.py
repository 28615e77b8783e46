"""The import graph of the five packages: arrows one way, no circles (docs/architecture.md).

    web/  ->  signaling/, fallback/, media/  ->  telehealth/ (the core)

- The wiring (telehealth.app, telehealth.server, telehealth.cli) may import anything; nothing
  outside it imports the wiring.
- The core imports no outer package.
- signaling/ may use fallback/ (signaling/watch.py adapts the wire to the decisions); no other
  arrow runs between signaling/, fallback/ and media/, and none of them imports web/.
- fallback/ is pure decisions: the standard library, msgspec and the core's plain types only
  (never the store, the wire, aiohttp).
- No circle between modules, counting every import: at module level, inside functions and
  under TYPE_CHECKING alike.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("telehealth", "signaling", "fallback", "media", "web")
WIRING = {"telehealth.app", "telehealth.server", "telehealth.cli"}
# What fallback/ may import from the core: plain types and pure helpers, no I/O.
FALLBACK_CORE = {"telehealth.tokens", "telehealth.errors", "telehealth.model", "telehealth.phones"}
FALLBACK_THIRD_PARTY = {"msgspec"}



def package_of(module: str) -> str:
    return module.split(".", 1)[0]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(path: Path, module: str, known: set[str]) -> Iterator[str]:
    """Every module ``module`` imports (ours resolved to the module, others to the top name)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _ours(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                name = f"{base}.{alias.name}"
                yield name if name in known else _ours(base, known)


def _ours(name: str, known: set[str]) -> str:
    while name and name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {module: {target for target in imported(path, module, known) if target != module}
            for module, path in found.items()}


def refused(source: str, target: str) -> str | None:
    """Why the arrow ``source -> target`` breaks the layers, or None when it is allowed."""
    src, dst = package_of(source), package_of(target)
    if dst not in PACKAGES:
        if src == "fallback" and dst not in sys.stdlib_module_names and dst not in FALLBACK_THIRD_PARTY:
            return "fallback/ uses only the standard library and msgspec"
        return None
    if source in WIRING:
        return None
    if target in WIRING:
        return "only the wiring imports the wiring"
    if src == "telehealth" and dst != "telehealth":
        return "the core imports no outer package"
    if src == "fallback" and dst == "telehealth" and target not in FALLBACK_CORE:
        return f"fallback/ takes from the core only {sorted(FALLBACK_CORE)}"
    sideways = src in ("signaling", "fallback", "media") and dst not in (src, "telehealth")
    if sideways and (src, dst) != ("signaling", "fallback"):
        return f"{src}/ may use only itself and the core" + (" (and fallback/)" if src == "signaling" else "")
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_walk_sees_the_packages_and_their_imports() -> None:
    # A walk that found nothing would pass everything.
    edges = graph()
    assert {package_of(m) for m in edges} == set(PACKAGES)
    assert "telehealth.store" in edges["signaling.endpoint"]
    assert "signaling.endpoint" in edges["telehealth.app"]
    assert "aiohttp" in edges["web.pages"]


def test_no_arrow_points_the_wrong_way() -> None:
    edges = graph()
    wrong = sorted(f"{source} -> {target}: {why}" for source, targets in edges.items() for target in targets
                   if (why := refused(source, target)) is not None)
    assert wrong == []


def test_no_circles() -> None:
    assert cycles(graph()) == []


def test_the_rules_refuse_what_they_should() -> None:
    assert refused("telehealth.store", "signaling.hub") is not None
    assert refused("web.pages", "telehealth.app") is not None
    assert refused("fallback.notices", "telehealth.store") is not None
    assert refused("fallback.flow", "aiohttp") is not None
    assert refused("media.probe", "signaling.protocol") is not None
    assert refused("signaling.hub", "web.pages") is not None
    assert refused("signaling.watch", "fallback.flow") is None
    assert refused("web.ops", "signaling.hub") is None
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
