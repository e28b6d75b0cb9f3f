"""Layers import downward only (docs/architecture.md, "Layers"): every import in the package,
at module level or inside a function, names a module of the same or a lower layer."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top; a module may import from its own layer or any earlier one.
LAYERS = [
    ("pivotrl_nemo.utils", "pivotrl_nemo.registry", "pivotrl_nemo.distributed.env"),
    ("pivotrl_nemo.config",),
    ("pivotrl_nemo.kernels",),
    ("pivotrl_nemo.distributed",),
    ("pivotrl_nemo.data",),
    ("pivotrl_nemo.verifiers",),
    ("pivotrl_nemo.domains",),
    ("pivotrl_nemo.models",),
    ("pivotrl_nemo.weight_sync",),
    ("pivotrl_nemo.rollout",),
    ("pivotrl_nemo.algorithms",),
    ("pivotrl_nemo.pipeline",),
    ("pivotrl_nemo.cli",),
]


def layer_of(module: str) -> int | None:
    """The layer of a ``pivotrl_nemo`` module (longest matching prefix), None outside the package."""
    if module == "pivotrl_nemo":  # the package's own __init__ imports nothing
        return 0
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["pivotrl_nemo", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["pivotrl_nemo", "kernels"]:
        base = ROOT.joinpath("kernels", *parts[2:])
    else:
        base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{name}.{alias.name}"
                is_module = _is_module(sub)
                out.append((node.lineno, sub if is_module else name))
    return out


FILES = sorted([*(ROOT / "pivotrl_nemo").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")])


def test_the_layer_table_covers_every_module():
    missing = [str(p) for p in FILES if layer_of(_module_name(p)) is None]
    assert not missing


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_downward(path):
    module = _module_name(path)
    mine = layer_of(module)
    assert mine is not None
    upward = [
        (line, name) for line, name in _imports(path, module) if (other := layer_of(name)) is not None and other > mine
    ]
    assert not upward, f"{module} (layer {mine}) imports upward: {upward}"
