"""The package's modules import each other without a cycle, lazy imports (inside functions) included.

The graph is read from the source with `ast`, not from what an import happens to load, so a cycle
hidden in a function body that runs only sometimes is found too."""
import ast
from pathlib import Path

import refpose

PACKAGE = Path(refpose.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set) -> set:
    """The refpose modules a file imports, anywhere in it (`from X import name` counts X.name when
    that is a module, else X)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
    return {m for m in found if m in modules and m != name}


def graph() -> dict:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) for m, p in files.items()}


def find_cycle(g: dict) -> list | None:
    """One cycle of the graph (a list of modules, first == last), or None. A package's
    `__init__` importing its own submodules is how a package exposes them, not a cycle, so the
    edge from a submodule to its own package's __init__ is left out."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(g[m]):
            if m.startswith(n + "."):
                continue
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(g):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None          # a package and its submodule


def test_no_import_cycle_among_refposes_modules():
    g = graph()
    assert "refpose.pose.driver" in g["refpose.cli.infer"]       # imported inside a function: read too
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
