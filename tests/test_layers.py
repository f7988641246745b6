"""The package's layering: a module imports only from lower layers (or its own package's layer).

Every module must be placed in a layer here, so a new module states where it belongs. The
imports are read from the source (module level and inside functions alike), so a lazy
import that points upwards is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prodclf"

#: Lowest first. A name matches its longest listed prefix.
LAYERS: list[tuple[str, ...]] = [
    ("prodclf", "prodclf.errors"),
    ("prodclf.schemas", "prodclf.model.catalog"),
    ("prodclf.config", "prodclf.fashion_mnist", "prodclf.requirements"),
    ("prodclf.storage", "prodclf.session"),
    ("prodclf.library",),
    ("prodclf.images",),
    ("prodclf.model",),
    # What a platform watches a run by (lineage, metrics, log lines): called by the CLI only.
    ("prodclf.taxonomy", "prodclf.observability"),
    (
        "prodclf.tagging.transforms",
        "prodclf.tagging.udf",
        "prodclf.tagging.checks",
        "prodclf.tagging.selection",
        "prodclf.tagging.report",
        "prodclf.tagging.review",
        "prodclf.tagging.plots",
        "prodclf.tagging.progress",
        "prodclf.training.data",
        "prodclf.evaluation.metrics",
        "prodclf.evaluation.report",
    ),
    (
        "prodclf.tagging.job",
        "prodclf.tagging.library",
        "prodclf.training.job",
        "prodclf.evaluation.job",
    ),
    ("prodclf.demo",),
    ("prodclf.cli", "prodclf.__main__"),
]

#: Subpackages' ``__init__`` modules: docstrings only, matched exactly (never as a prefix).
PACKAGES = {
    "prodclf.storage",
    "prodclf.library",
    "prodclf.model",
    "prodclf.tagging",
    "prodclf.training",
    "prodclf.evaluation",
    "prodclf.observability",
}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, matching prefix) for a module name; KeyError when unplaced."""
    best: tuple[int, str] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    if module in PACKAGES:
        return (0, module)
    if best is None or (best[1] == "prodclf" and module != "prodclf"):
        raise KeyError(module)
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, modules: set[str]) -> set[str]:
    """The prodclf modules a source imports (``from pkg import mod`` resolves to the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "prodclf")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "prodclf":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import pointing to a higher layer, or sideways into another package."""
    bad = []
    for importer, imported in sorted(graph.items()):
        here, here_prefix = layer_of(importer)
        for target in sorted(imported):
            there, there_prefix = layer_of(target)
            same_package = importer.rsplit(".", 1)[0] == target.rsplit(".", 1)[0]
            if there > here or (there == here and here_prefix != there_prefix and not same_package):
                bad.append(f"{importer} (layer {here}) imports {target} (layer {there})")
    return bad


def package_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f.read_text(), modules) - {module_name(f)} for f in files}


def test_subpackage_inits_import_nothing() -> None:
    graph = package_graph()
    assert all(graph[p] == set() for p in PACKAGES), {p: graph[p] for p in PACKAGES}


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module in package_graph():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    assert violations(package_graph()) == []


def test_the_check_catches_an_upward_import() -> None:
    graph = package_graph()
    assert "prodclf.tagging.job" not in graph["prodclf.storage.tables"]
    graph["prodclf.storage.tables"] = graph["prodclf.storage.tables"] | {"prodclf.tagging.job"}
    assert violations(graph) == [
        "prodclf.storage.tables (layer 3) imports prodclf.tagging.job (layer 9)"
    ]


def test_imports_are_read_inside_functions_too() -> None:
    source = "def f():\n    from prodclf.evaluation import metrics as m\n    import prodclf.cli\n"
    modules = {"prodclf.evaluation.metrics", "prodclf.cli"}
    assert imports_of(source, modules) == {"prodclf.evaluation.metrics", "prodclf.cli"}


def test_same_layer_imports_only_within_a_package() -> None:
    graph = {
        "prodclf.training.data": {"prodclf.tagging.udf"},  # sideways: refused
        "prodclf.model.runtime": {"prodclf.model.bundle"},  # same package: allowed
    }
    assert violations(graph) == [
        "prodclf.training.data (layer 8) imports prodclf.tagging.udf (layer 8)"
    ]
