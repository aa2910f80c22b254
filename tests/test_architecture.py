"""The layers docs/architecture.md draws, enforced on the source (ast only: nothing is imported).

docs/architecture.md says the layer order once, in its ```layers block; this file reads that block.
The rules: a module imports only from its own layer and the layers below it; no import circle
between modules; the modules of the ```torch-free block import neither torch nor timm (nor, for the
start-up ones, numpy) at module level, directly or through other astrocli modules; an import inside a
function says why with ``# lazy: <reason>``; and no file or function grows past the size limits.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "astrocli"
DOC = REPO / "docs" / "architecture.md"
MAX_FILE_LINES = 650
MAX_FUNCTION_LINES = 60
LAZY_MARK = "# lazy:"
PYTORCH = {"torch", "torchvision", "timm"}  # with astrocli's own modules: what a lazy import must explain


# -- reading the doc and the source ---------------------------------------------------------------


def fenced_block(kind: str, text: str | None = None) -> list[str]:
    """The non-empty, non-comment lines of the ```kind fenced block of docs/architecture.md."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    match = re.search(rf"^```{kind}\n(.*?)^```", text, re.M | re.S)
    assert match, f"docs/architecture.md has no ```{kind} block"
    lines = (line.split("#", 1)[0].strip() for line in match.group(1).splitlines())
    return [line for line in lines if line]


def layer_order(text: str | None = None) -> list[tuple[str, list[str]]]:
    """``[(layer, [module or package names])]`` from the top layer to the bottom one."""
    layers = []
    for line in fenced_block("layers", text):
        name, _, members = line.partition(":")
        layers.append((name.strip(), members.split()))
    return layers


def module_name(path: Path) -> str:
    """``astrocli/engine/state.py`` -> ``engine.state``; ``astrocli/__init__.py`` -> ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module (``engine.state``)
    target: str  # an astrocli module (``checkpoint``) or an outside top-level package (``torch``)
    internal: bool
    line: int
    in_function: bool
    marked: bool  # a function-level import whose block carries ``# lazy:``


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, modules: set[str]) -> Iterator[str]:
    """The modules an import statement loads, as astrocli module names or outside package names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:  # relative: resolve against the importing module's package
        package = (
            module.split(".") if (PACKAGE / module.replace(".", "/")).is_dir() else module.split(".")[:-1]
        )
        package = package[: len(package) - node.level + 1]
        base = ".".join(["astrocli", *package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    if not (base == "astrocli" or base.startswith("astrocli.")):
        yield base
        return
    for alias in node.names:  # `from astrocli.data import arrays` loads the module data.arrays
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}".removeprefix("astrocli.") in modules else base


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    """Every import in ``path`` outside ``if TYPE_CHECKING:`` blocks (annotations only)."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found: list[Import] = []

    def visit(body: list[ast.stmt], in_function: bool) -> None:
        block: list[ast.stmt] = []  # consecutive import statements: one `# lazy:` covers them all
        for node in [*body, None]:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                block.append(node)
                continue
            marked = any(LAZY_MARK in line for n in block for line in lines[n.lineno - 1 : n.end_lineno])
            for stmt in block:
                for target in _targets(stmt, module, modules):
                    internal = target == "astrocli" or target.startswith("astrocli.")
                    name = (target.removeprefix("astrocli.") or "__init__") if internal else target
                    if internal and name == "astrocli":
                        name = "__init__"
                    found.append(Import(module, name, internal, stmt.lineno, in_function, marked))
            block = []
            if node is None:
                continue
            if isinstance(node, ast.If) and _type_checking(node):
                visit(node.orelse, in_function)
                continue
            nested = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for field in ("body", "orelse", "finalbody", "handlers"):
                child = getattr(node, field, None)
                if isinstance(child, list) and child and isinstance(child[0], (ast.stmt, ast.ExceptHandler)):
                    if field == "handlers":
                        for handler in child:
                            visit(handler.body, in_function or nested)
                    else:
                        visit(child, in_function or nested)

    visit(ast.parse(source).body, False)
    return found


def all_imports() -> list[Import]:
    files = source_files()
    names = set(files)
    return [imp for module, path in files.items() for imp in imports_of(module, path, names)]


# -- layers ---------------------------------------------------------------------------------------


def layer_index(layers: list[tuple[str, list[str]]], modules: set[str]) -> dict[str, int]:
    """Each module's layer, counted from the bottom (0); every module must be in exactly one."""
    index: dict[str, int] = {}
    for depth, (_, members) in enumerate(reversed(layers)):
        for member in members:
            owned = {m for m in modules if m == member or m.startswith(member + ".")}
            assert owned, f"docs/architecture.md names '{member}', which is no module of astrocli/"
            for m in owned:
                assert m not in index, f"{m} is in two layers of docs/architecture.md"
                index[m] = depth
    return index


def upward_imports(imports: list[Import], index: dict[str, int]) -> list[str]:
    return [
        f"astrocli/{imp.module.replace('.', '/')}:{imp.line} imports {imp.target}, a higher layer"
        for imp in imports
        if imp.internal and imp.target in index and index[imp.target] > index[imp.module]
    ]


def find_circle(imports: list[Import]) -> list[str] | None:
    """One import circle between astrocli modules (function-level imports count), or None."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.internal and imp.target != imp.module:
            graph.setdefault(imp.module, set()).add(imp.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (circle := walk(nxt)):
                return circle
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (circle := walk(start)):
            return circle
    return None


def test_every_module_has_a_layer_and_none_imports_from_above() -> None:
    modules = set(source_files())
    index = layer_index(layer_order(), modules)
    assert not modules - set(index), (
        f"modules without a layer in docs/architecture.md: {modules - set(index)}"
    )
    upward = upward_imports(all_imports(), index)
    assert not upward, "import from a higher layer: " + "; ".join(upward)


def test_no_import_circle() -> None:
    circle = find_circle(all_imports())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_checks_catch_an_upward_import_and_a_circle() -> None:
    # The rules themselves, on a made-up graph: a check that finds nothing must be able to find something.
    layers = layer_order("```layers\ntop: engine\nbottom: recipe errors\n```\n")
    index = layer_index(layers, {"engine", "recipe", "errors"})
    bad = Import("recipe", "engine", True, 3, True, False)
    assert upward_imports([bad], index) == ["astrocli/recipe:3 imports engine, a higher layer"]
    back = Import("errors", "recipe", True, 1, False, False)
    assert find_circle([bad, Import("engine", "errors", True, 1, False, False), back]) == [
        "engine",
        "errors",
        "recipe",
        "engine",
    ]


# -- torch-free modules ---------------------------------------------------------------------------


def module_level_closure(start: str, imports: list[Import], modules: set[str]) -> set[str]:
    """Everything importing ``start`` loads at module level: astrocli modules, their parent packages
    (``import astrocli.images.pil`` runs astrocli/images/__init__.py) and outside packages."""
    by_module: dict[str, list[Import]] = {}
    for imp in imports:
        if not imp.in_function:
            by_module.setdefault(imp.module, []).append(imp)
    seen: set[str] = set()
    todo = [start]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules]
        todo.append("__init__")
        for imp in by_module.get(current, []):
            if imp.internal:
                todo.append(imp.target)
            else:
                seen.add("!" + imp.target.split(".")[0])
    return seen


def torch_free_rules() -> list[tuple[str, set[str]]]:
    """``[(module or package, forbidden outside packages)]`` from the ```torch-free block."""
    rules = []
    for line in fenced_block("torch-free"):
        forbidden, _, members = line.partition(":")
        for member in members.split():
            rules.append((member, set(forbidden.replace(",", " ").split())))
    return rules


def heavy_imports(imports: list[Import], modules: set[str]) -> list[str]:
    problems = []
    for member, forbidden in torch_free_rules():
        owned = sorted(m for m in modules if m == member or m.startswith(member + "."))
        assert owned, f"the torch-free block names '{member}', which is no module of astrocli/"
        for module in owned:
            loaded = {name[1:] for name in module_level_closure(module, imports, modules) if name[0] == "!"}
            problems += [f"{module} imports {name} at module level" for name in sorted(loaded & forbidden)]
    return problems


def test_torch_free_modules_import_no_torch_at_module_level() -> None:
    heavy = heavy_imports(all_imports(), set(source_files()))
    assert not heavy, "torch-free module (docs/architecture.md): " + "; ".join(heavy)


def test_function_level_imports_say_why() -> None:
    # An import of astrocli or PyTorch inside a function either keeps start-up (or ONNX predict)
    # torch-free, and says so, or it should sit at the top of the module.
    unmarked = sorted(
        {
            f"astrocli/{imp.module.replace('.', '/')}:{imp.line}"
            for imp in all_imports()
            if imp.in_function and not imp.marked and (imp.internal or imp.target.split(".")[0] in PYTORCH)
        }
    )
    assert not unmarked, f"an import inside a function needs a '{LAZY_MARK} <reason>' comment: {unmarked}"


def loads_on_first_use(path: Path) -> bool:
    """Whether a module defines ``__getattr__`` (PEP 562: names loaded on first use, e.g. astrocli.engine)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)


def test_lazy_imports_keep_something_out() -> None:
    # An astrocli import inside a function must spare the importer an outside package (torch, PIL,
    # matplotlib, ...) at module level; one that loads nothing new only hid a circle, or is noise.
    files = source_files()
    imports, modules = all_imports(), set(files)

    def outside(module: str) -> set[str]:
        return {name for name in module_level_closure(module, imports, modules) if name[0] == "!"}

    noise = sorted(
        f"astrocli/{imp.module.replace('.', '/')}:{imp.line} imports {imp.target}"
        for imp in imports
        if imp.in_function
        and imp.internal
        and not outside(imp.target) - outside(imp.module)
        and not loads_on_first_use(files[imp.target])
    )
    assert not noise, "a lazy import that loads nothing new; move it to the top: " + "; ".join(noise)


# -- sizes ----------------------------------------------------------------------------------------


def test_no_file_or_function_too_long() -> None:
    too_long = []
    for module, path in source_files().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES:
            too_long.append(f"{module}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # From the first statement (the docstring) on: a Typer command's signature is its
                # table of options, declarations rather than code to read.
                length = (node.end_lineno or node.lineno) - node.body[0].lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, f"over {MAX_FILE_LINES} lines a file or {MAX_FUNCTION_LINES} a function: {too_long}"


if __name__ == "__main__":  # a quick look at the graph: python tests/test_architecture.py
    sys.exit(pytest.main([__file__, "-q"]))
