"""The code's house rules, read from the source with ast: which layer may import which, and no private names
used across modules.  Each checker takes one module's source and returns its violations as text, so that
tests can run it on the tree and on small synthetic sources alike.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# The pure layers and what they must never import: kernel I/O, the daemon, and what sits above them.
PURE_LAYERS = ("hwsflow.wire", "hwsflow.core")
ABOVE_PURE = ("hwsflow.linux", "hwsflow.daemon", "hwsflow.tools", "hwsflow.cli")

# Underscore names that are public by convention, reachable on objects or modules that are not ours.
PUBLIC_BY_CONVENTION = frozenset({
    "_replace", "_asdict", "_fields", "_make", "_field_defaults",  # collections.namedtuple's API
    "_exit",  # os._exit: leaving a forked child without running the parent's cleanup
    "_getframe",  # sys._getframe
})


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def module_name(path: Path, root: Path) -> str:
    """hwsflow/wire/sflow.py -> hwsflow.wire.sflow; a package's __init__.py is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ImportFrom names, relative imports resolved against `module`."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(tree: ast.AST, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every module an import anywhere in the tree (functions included) may bind: for `from a import b`
    both a and a.b, since b may be a submodule."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, is_package)
            yield node.lineno, source
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{source}.{alias.name}"


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def layer_violations(source: str, path: str, module: str, is_package: bool = False) -> list[Violation]:
    """A module of a pure layer importing from kernel I/O, the daemon or above."""
    if not _within(module, PURE_LAYERS):
        return []
    tree = ast.parse(source, path)
    found = {(line, name) for line, name in imported_modules(tree, module, is_package) if _within(name, ABOVE_PURE)}
    return [Violation(path, line, f"{module} (a pure layer) imports {name}") for line, name in sorted(found)]


def _private(name: str) -> bool:
    """_x is private; __x__ (dunders) and _x_ (sunder names such as ctypes' _fields_) are protocols."""
    return name.startswith("_") and not name.endswith("_") and name not in PUBLIC_BY_CONVENTION


def _own_object(node: ast.expr) -> bool:
    """self, cls and super() reach the class's own state; anything else is another object."""
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _twin(module: str, name: str) -> bool:
    """pkg._x is the private half of pkg.x (a C extension behind its Python face): x may import it."""
    parent, _, own = module.rpartition(".")
    return name == f"{parent}._{own}"


def private_violations(source: str, path: str, module: str = "", is_package: bool = False) -> list[Violation]:
    """Another module's _private name used here: imported by name, or reached as an attribute of anything
    but self, cls or super() (an imported module, another object: `builder._pos`).  The one exception is
    a module importing its private twin (hwsflow.core.fastpath imports hwsflow.core._fastpath)."""
    tree = ast.parse(source, path)
    modules: set[str] = set()  # local names bound to imported modules, for a clearer message
    found: list[Violation] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.asname or alias.name.split(".")[0])
                if any(_private(part) for part in alias.name.split(".")) and not _twin(module, alias.name):
                    found.append(Violation(path, node.lineno, f"imports private module {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            source_module = _absolute(node, module, is_package)
            if any(_private(part) for part in source_module.split(".")) and not _twin(module, source_module):
                found.append(Violation(path, node.lineno, f"imports from private module {source_module}"))
            for alias in node.names:
                modules.add(alias.asname or alias.name)
                if _private(alias.name) and not _twin(module, f"{source_module}.{alias.name}"):
                    found.append(Violation(path, node.lineno, f"imports private name {alias.name} from {source_module}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and not _own_object(node.value):
            owner = ast.unparse(node.value)
            kind = "module" if isinstance(node.value, ast.Name) and node.value.id in modules else "object"
            found.append(Violation(path, node.lineno, f"uses private {node.attr} of {kind} {owner}"))
    return sorted(found, key=lambda v: (v.line, v.what))


def python_files(root: Path, *dirs: str) -> Iterator[Path]:
    for d in dirs:
        yield from sorted((root / d).rglob("*.py"))


Checker = Callable[[str, str, str, bool], list[Violation]]


def check_tree(checker: Checker, root: Path, *dirs: str) -> list[Violation]:
    """One rule over every module under root/dirs."""
    found: list[Violation] = []
    for path in python_files(root, *dirs):
        found += checker(path.read_text(), path.relative_to(root).as_posix(), module_name(path, root),
                         path.name == "__init__.py")
    return found
