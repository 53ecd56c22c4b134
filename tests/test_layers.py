"""The import graph of the project's packages, as docs/design.md maps it: no module imports a layer above its
own, and no two modules import each other, directly or round a longer loop. Every ``import`` counts, also one
inside a function (a lazy import is still an arrow). The layers and what each may import are listed once,
below."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shards", "loaders", "models", "bench")
TOP_MODULES = ("train",)

#: each layer and the layers below it that it may import (its own layer is always allowed); a module belongs to the
#: longest layer name that prefixes it
LAYERS: dict[str, tuple[str, ...]] = {
    "shards.base": (),  # errors, host, interrupt, progress, lock, atomic: what every package shares
    "shards.format": ("shards.base",),
    "shards.read": ("shards.base", "shards.format"),
    "shards.remote": ("shards.base", "shards.format", "shards.read"),  # URLs, object storage, the staging cache
    "shards.packing": ("shards.base", "shards.format", "shards.read", "shards.remote"),
    "shards": ("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing"),  # verify, cli
    "loaders.recipe": ("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
    "loaders.batch": (
        *("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
        "loaders.recipe",
    ),
    "loaders": (
        *("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
        *("loaders.recipe", "loaders.batch"),
    ),  # audit, preview, the CLI
    "models": (),  # networks, losses, methods: nothing of the project (no loader, no shard)
    "models.training": (
        *("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
        *("loaders.recipe", "loaders.batch", "loaders", "models"),
    ),
    # the command lines of loaders and models (``python -m loaders``, ``python -m models``) are entry points like
    # train.py: ``loaders audit --method`` asks the methods' registry which augmentation family a method trains with
    "loaders.__main__": (
        *("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
        *("loaders.recipe", "loaders.batch", "loaders", "models", "models.training"),
    ),
    "models.__main__": (
        *("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
        *("loaders.recipe", "loaders.batch", "loaders", "models", "models.training"),
    ),
    "bench": (
        *("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
        *("loaders.recipe", "loaders.batch", "loaders", "models", "models.training", "train"),
    ),
    "train": (
        *("shards.base", "shards.format", "shards.read", "shards.remote", "shards.packing", "shards"),
        *("loaders.recipe", "loaders.batch", "loaders", "models", "models.training"),
    ),
}


def project_modules() -> dict[str, Path]:
    """Every module of the project by its dotted name (a package by its own name, from its __init__.py)."""
    out = {name: ROOT / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports: for ``from P import X`` the module P.X when there is one, else P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # ``import shards.base.errors`` names a module; trim a name
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer_of(module: str) -> str:
    return max((layer for layer in LAYERS if module == layer or module.startswith(layer + ".")), key=len)


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    for module in graph():
        assert layer_of(module) in LAYERS


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for module, targets in graph().items():
        layer = layer_of(module)
        allowed = {layer, *LAYERS[layer]}
        upward += [
            f"{module} -> {t} ({layer} may not import {layer_of(t)})" for t in targets if layer_of(t) not in allowed
        ]
    assert upward == []


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_check_sees_arrows():
    """The graph finds what it must: a lazy import inside a function and a ``from package import module``."""
    edges = graph()
    assert "shards.format.schema" in edges["shards.format.manifest"]
    assert "bench.harness" in edges["bench.loader"]
    assert "shards.base.errors" in edges["shards.base.host"]
    assert layer_of("shards.verify") == "shards" and layer_of("models.training.trainer") == "models.training"


def test_each_name_is_imported_from_one_place():
    """Every importer, the tests included, takes a name from one place: the module that defines it, or the package
    whose ``__init__`` re-exports it, never both ways and never from a module that merely imports it too (a
    reader looks it up in one place)."""
    modules = project_modules()
    passed_on: dict[tuple[str, str], tuple[str, str]] = {}  # (module, name) -> (module, name) it was imported from
    imports: list[tuple[str, str]] = []  # (module imported from, name), one per importing statement and name
    importers = {**modules, **{f"tests.{p.stem}": p for p in sorted((ROOT / "tests").glob("*.py"))}}
    for name, path in importers.items():
        tree = ast.parse(path.read_text(), str(path))
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module or node.module.split(".")[0] not in modules:
                continue
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    continue  # a module, not a name
                if id(node) in top_level and name in modules:
                    passed_on[(name, alias.asname or alias.name)] = (node.module, alias.name)
                if not (path.name == "__init__.py" and node.module.startswith(name + ".")):  # a re-export
                    imports.append((node.module, alias.name))

    def origin(module: str, attr: str) -> tuple[str, str]:
        while (module, attr) in passed_on:
            module, attr = passed_on[(module, attr)]
        return module, attr

    places: dict[tuple[str, str], set[str]] = {}
    for module, attr in imports:
        places.setdefault(origin(module, attr), set()).add(module)
    assert {f"{m}.{a}": sorted(p) for (m, a), p in places.items() if len(p) > 1} == {}
