"""Imports between the parts of entropy_rl follow the layer order written in docs/design.md.

A part is a subpackage (`entropy_rl/train/`) or a top-level module (`entropy_rl/plan.py`).
The order is the ```layers block of docs/design.md's "Dependency direction": one layer a
line, top first, the parts of one line independent of each other. A part imports only parts
on lower lines. Every import counts: at module level, inside a function, under
`TYPE_CHECKING`.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "entropy_rl"
DESIGN = REPO / "docs" / "design.md"


def layer_order(design: Path = DESIGN) -> dict[str, int]:
    """{part: depth} of the ```layers block (0 = the top line); a line is `part, part  comment`."""
    block = design.read_text().split("```layers\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  ", 1)[0] for line in block.splitlines() if line.strip()]
    return {name.strip(): depth for depth, line in enumerate(lines) for name in line.split(",")}


def parts(root: Path) -> set[str]:
    """The subpackages and top-level modules of the package at `root`."""
    return {path.stem for path in root.iterdir()
            if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()}


def _imported_modules(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted module name, line) of every import in `tree`; `from X import name` counts as
    X.name (a submodule, or a name of X), relative imports resolved against `module`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            imported += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return imported


def import_edges(root: Path) -> dict[tuple[str, str], list[str]]:
    """{(importing part, imported part): ["path:line", ...]} between different parts of the
    package at `root` (imports of the package's own `__init__` names are not between parts)."""
    known, edges = parts(root), {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if len(relative.parts) == 1 and relative.stem == "__init__":
            continue
        source = relative.parts[0].removesuffix(".py")
        module = ".".join((PACKAGE, *relative.with_suffix("").parts))
        is_package = relative.stem == "__init__"
        for name, line in _imported_modules(ast.parse(path.read_text(), str(path)), module.removesuffix(".__init__"),
                                            is_package):
            pieces = name.split(".")
            if pieces[0] != PACKAGE or len(pieces) < 2 or pieces[1] not in known or pieces[1] == source:
                continue
            where = edges.setdefault((source, pieces[1]), [])
            if f"{PACKAGE}/{relative}:{line}" not in where:
                where.append(f"{PACKAGE}/{relative}:{line}")
    return edges


def cycles(edges) -> list[list[str]]:
    """The groups of parts that import each other, directly or through others (sorted)."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)

    def reachable(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for target in graph.get(stack.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return seen

    reach = {part: reachable(part) for part in graph}
    groups = {tuple(sorted({part} | {other for other in reach[part] if part in reach.get(other, ())}))
              for part in graph if part in reach[part]}
    return sorted(map(list, groups))


def upward_imports(edges, order: dict[str, int]) -> list[str]:
    """`source -> target (where)` for every import of a part on the same line or a line above."""
    return [f"{source} -> {target} ({', '.join(where[:3])})" for (source, target), where in sorted(edges.items())
            if order[target] <= order[source]]


def test_every_part_has_a_layer():
    order, found = layer_order(), parts(REPO / PACKAGE)
    assert not found - set(order), f"parts missing from docs/design.md's layers: {sorted(found - set(order))}"
    assert not set(order) - found, f"docs/design.md's layers name no such part: {sorted(set(order) - found)}"


def test_no_cycle_between_parts():
    assert cycles(import_edges(REPO / PACKAGE)) == []


def test_imports_point_down_the_layers():
    assert upward_imports(import_edges(REPO / PACKAGE), layer_order()) == []


def private_uses(root: Path) -> list[str]:
    """`path:line module._name` for every use of another module's private name in the
    package at `root`: `from module import _name`, or `alias._name` where alias is bound by
    an import to a module (or a name) of the package. Dunder names are public."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        module = ".".join((PACKAGE, *relative.with_suffix("").parts)).removesuffix(".__init__")
        tree = ast.parse(path.read_text(), str(path))
        bound = {}  # local name -> the dotted name it was imported as
        for local, name, line in _bindings(tree, module, relative.stem == "__init__"):
            if name.startswith(f"{PACKAGE}.") and name.rsplit(".", 1)[0] != module:
                bound[local] = name
                if _private(name.rsplit(".", 1)[1]):
                    found.append(f"{PACKAGE}/{relative}:{line} {name}")
        found += [f"{PACKAGE}/{relative}:{node.lineno} {bound[node.value.id]}.{node.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in bound and _private(node.attr)]
    return found


def _bindings(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, str, int]]:
    """(local name, dotted name, line) of every name an import in `tree` binds (`import a.b`
    without `as` binds only `a`, left out), relative imports resolved against `module`."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    bindings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bindings += [(alias.asname or alias.name, alias.name, node.lineno) for alias in node.names
                         if alias.asname or "." not in alias.name]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            bindings += [(alias.asname or alias.name, f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return bindings


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def test_no_module_uses_another_modules_private_names():
    assert private_uses(REPO / PACKAGE) == []
