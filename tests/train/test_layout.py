"""ia_train's shape: every module's imports (at the top or inside a function) point down the floors
below, and no group of modules imports itself round in a circle. A new module must be given a floor
here, so the layout stays a decision, not an accident."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "python" / "ia_train"

# the parts of ia_train from the bottom up; a module may import its own part or a lower one
FLOORS = ["errors", "optional", "config", "runtime", "sandbox", "tasks", "models", "rollout", "rewards",
          "evaluation", "loop", "study", "cli", "__main__"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """The ia_train modules `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "ia_train"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ia_train":
                continue
            known = modules()
            for alias in node.names:  # `from . import checkpoint` names a module
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out


def part(name: str) -> str:
    return name.split(".")[1] if "." in name else "__init__"


def test_every_part_has_a_floor():
    parts = {part(n) for n in modules()} - {"__init__", "assets"}
    assert parts <= set(FLOORS), f"give these a floor in FLOORS: {sorted(parts - set(FLOORS))}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_point_down(name):
    path = modules()[name]
    here = part(name)
    for target in imported(name, path):
        there = part(target)
        if there in (here, "__init__"):
            continue
        assert FLOORS.index(there) < FLOORS.index(here), f"{name} imports {target}, a floor above it"


def test_no_import_circle():
    graph = {name: imported(name, path) - {name} for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_ia_kernels_does_not_import_ia_train():
    kernels = ROOT.parents[1] / "ia_kernels"
    for path in kernels.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "ia_train" for n in names), path
