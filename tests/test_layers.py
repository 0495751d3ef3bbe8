"""Imports point down the layers: cli -> inference, training -> models, data
-> config, catalog, registry, errors; inference and training never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "rsfusion"
#: the layer of each top-level module or subpackage of rsfusion
LAYERS = {
    "errors": 0, "config": 0, "config_schema": 0, "catalog": 0, "registry": 0, "paths": 0,
    "yamlio": 0, "allocator": 0, "hostmem": 0, "data": 1, "models": 1, "training": 2, "inference": 2, "cli": 3,
}  # fmt: skip
#: imports that look up on purpose: lazy loaders of built-in plugins, inside a function
ALLOWED = {
    ("rsfusion.registry", "rsfusion.models"): "the registry loads the built-in models on lookup",
    (
        "rsfusion.catalog",
        "rsfusion.data.natural.card",
    ): "natural cards are parsed by the data layer",
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "rsfusion" else None


def upward_imports(root: Path = PACKAGE) -> list[str]:
    """``importer -> imported`` for every import of a higher layer (or a sibling at layer 2+)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        src = _part(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                dst = _part(name)
                tool = src == dst == "cli" and name != "rsfusion.cli" and module != name
                if tool and not module.endswith("__init__"):  # one command-line tool another
                    found.append(f"{module} -> {name}")
                if src not in LAYERS or dst not in LAYERS or src == dst:
                    continue
                up = LAYERS[dst] > LAYERS[src]
                sideways = LAYERS[dst] == LAYERS[src] >= 2
                if (up or sideways) and (module, name) not in ALLOWED:
                    found.append(f"{module} -> {name}")
    return found


def test_no_module_imports_a_higher_layer():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    package = tmp_path / "rsfusion"
    (package / "data").mkdir(parents=True)
    (package / "data" / "bad.py").write_text("from rsfusion.inference.predict import x\n")
    (package / "inference").mkdir()
    (package / "inference" / "ok.py").write_text("import rsfusion.data.bad\n")
    assert upward_imports(package) == ["rsfusion.data.bad -> rsfusion.inference.predict"]
