"""The import graph of im_runtime: no cycles, and every module imports only from its own
layer or the layers below it (docs/architecture.md, "Layers").

Read from the source with `ast`, so every import counts: module level, inside functions
and under `if TYPE_CHECKING:` alike (a lazy import is still a dependency, and a type-only
cycle still ties two modules together).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "im_runtime"

# Lowest first. A module may import modules of a lower rank, and of its own package (without
# cycles); nothing of a higher rank. Top-level modules of the package are named by their
# module name, packages by their folder.
LAYERS: list[set[str]] = [
    {"im_runtime", "proto", "config", "logs", "metrics", "runtime", "coalesced_writes"},  # foundations
    {"protocol"},  # frame codec, request types, ids (sans I/O)
    {"storage"},  # stores behind interfaces (memory, Redis, MongoDB)
    {"idgen"},  # snowflake and segment ids (segments come from a store)
    {"dispatch", "access", "client"},  # services and adapters over the protocol and the stores
    {"route"},  # token check, sessions, ipList, HTTP API (the history page uses dispatch's queries)
    {"cluster", "bench"},  # distributed roles, links, ZooKeeper; the load generator
    {"allinone", "chat"},  # the embedded stack; the command-line chat client
    {"roles", "cli"},  # commands
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group(module: str) -> str:
    """The layer entry of a module: `im_runtime.storage.redis_store` -> `storage`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        # keep imports of our own modules (an imported name that is not a module drops out)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _is_package_init_edge(source: str, target: str) -> bool:
    """`from im_runtime import metrics` names the package itself too: not a dependency on
    the package's other modules."""
    return target == "im_runtime"


def test_every_module_has_a_layer():
    missing = sorted({group(m) for m in import_graph()} - set(RANK))
    assert not missing, f"add these to LAYERS (and docs/architecture.md): {missing}"


def test_no_import_cycles():
    graph = {m: {t for t in targets if not _is_package_init_edge(m, t)} for m, targets in import_graph().items()}
    assert cycles(graph) == []


def test_no_upward_imports():
    upward = sorted(
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if RANK[group(target)] > RANK[group(source)]
    )
    assert upward == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks above would pass on an empty graph; these prove they can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "im_runtime.storage.interfaces" in graph["im_runtime.dispatch.service"]
    assert RANK[group("im_runtime.dispatch.service")] > RANK[group("im_runtime.storage.interfaces")]
    assert RANK[group("im_runtime.cluster.dispatch")] > RANK[group("im_runtime.route.service")]
