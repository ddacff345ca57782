"""The layer contract (issue 19): imports point down, checked over every first-party module.

An AST walk over components/, pipelines/, demo/ and bench/ (tests excluded) that sees every
``import`` statement, the ones inside function bodies included (import-linter's ``layers``
contract, written out because import-linter is not installed). Rules:

(a) a room imports only rooms on lower lines of ``LAYERS``: never a room above it, never a
    sibling on its own line (``ALLOWED_SIBLINGS`` names the noted exceptions);
(b) no cycle between rooms (every edge counted);
(c) the kernel (``components.common``) imports nothing first-party but ``components.settings``;
(d) a first-party import inside a function body sits only in a KFP component's body (a
    ``@dsl.component`` function: KFP needs it there) or a CLI module (start-up time), or its
    line says why: ``# deferred: <reason>``.

There are no exceptions: a violation is a bug to fix where the import is (move the primitive two
rooms need into the kernel, or the code that needs a higher room into that room).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("components", "pipelines", "demo", "bench")

#: The rooms, top to bottom. A room may import the rooms on lower lines only.
LAYERS: list[tuple[str, ...]] = [
    ("components.cli", "demo", "bench"),  # entry points
    ("pipelines",),  # KFP definitions, kfp.local runner, launchers
    ("components.govern", "components.retrain"),
    ("components.deploy",),
    ("components.register", "components.serve"),
    ("components.monitor",),
    ("components.evaluate", "components.package"),
    ("components.train",),
    ("components.ingest", "components.datagen"),
    ("components.common",),  # the kernel
    ("components.settings",),
]
KERNEL = "components.common"
#: Sibling imports the layering allows: the entry points reuse the demo's closed loop.
ALLOWED_SIBLINGS = {("components.cli", "demo"), ("bench", "demo")}
DEFERRED_MARK = "# deferred:"
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


RANK = {room: i for i, line in enumerate(LAYERS) for room in line}


def room_of(module: str) -> str | None:
    """The room a dotted module belongs to (None for the bare ``components`` package)."""
    parts = module.split(".")
    if parts[0] != "components":
        return parts[0]
    return f"components.{parts[1]}" if len(parts) > 1 else None


def is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def first_party_files() -> list[Path]:
    files = []
    for top in FIRST_PARTY:
        for path in sorted((ROOT / top).rglob("*.py") if (ROOT / top).is_dir() else []):
            rel = path.relative_to(ROOT)
            if "tests" in rel.parts or path.name.startswith("test_") or path.name == "conftest.py":
                continue
            files.append(path)
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str | None = None):
    """Yields (imported module, line number, in a function body, in a KFP component's body,
    the statement's source lines)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    script_dir = not (path.parent / "__init__.py").is_file()  # bench/: scripts import siblings

    def resolve(node) -> list[str]:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from components import settings` imports the module components.settings.
            names = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base
                     for a in node.names]
        out = []
        for name in names:
            top = name.split(".")[0]
            if script_dir and (path.parent / f"{top}.py").is_file():
                name = f"{module_name(path.parent / top)}{name[len(top):]}"
            if name.split(".")[0] in FIRST_PARTY and name not in out:
                out.append(name)
        return out

    def walk(node, in_function: bool, in_kfp: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                text = "\n".join(lines[child.lineno - 1 : child.end_lineno])
                for name in resolve(child):
                    yield name, child.lineno, in_function, in_kfp, text
            inner = in_function or isinstance(child, FUNCTIONS)
            yield from walk(child, inner, in_kfp or is_kfp_component(child))

    yield from walk(tree, False, False)


def is_kfp_component(node) -> bool:
    """A function decorated with ``@dsl.component`` (or ``@component``), called or not."""
    for dec in getattr(node, "decorator_list", []):
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "component":
            return True
    return False


def scan():
    """The whole first-party import graph, read once per test session."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)  # (file, module) -> "file:line"
    room_edges: set[tuple[str, str]] = set()
    deferred: list[str] = []  # "file:line" of imports in function bodies without a reason
    unplaced: list[str] = []
    for path in first_party_files():
        rel = path.relative_to(ROOT).as_posix()
        importer = room_of(module_name(path))
        found = list(imports_of(path))
        if importer not in RANK and (importer is not None or found):  # None: the bare namespace
            unplaced.append(rel)
        for module, line, in_function, in_kfp, text in found:
            edges[(rel, module)].append(f"{rel}:{line}")
            imported = room_of(module)
            if imported and imported != importer:
                room_edges.add((importer, imported))
            exempt = in_kfp or importer == "components.cli"
            if in_function and not exempt and not _has_reason(text):
                deferred.append(f"{rel}:{line}")
    return edges, room_edges, deferred, unplaced


def _has_reason(text: str) -> bool:
    for line in text.splitlines():
        _, mark, reason = line.partition(DEFERRED_MARK)
        if mark and reason.strip():
            return True
    return False


_SCAN = None


def graph():
    global _SCAN
    if _SCAN is None:
        _SCAN = scan()
    return _SCAN


def violations() -> dict[tuple[str, str], str]:
    """(file, module) -> why, for every import that breaks rule (a) or (c)."""
    edges, _, _, _ = graph()
    found = {}
    for (rel, module), where in edges.items():
        importer = room_of(module_name(ROOT / rel))
        imported = room_of(module)
        if importer == KERNEL and imported not in (KERNEL, "components.settings"):
            found[(rel, module)] = f"kernel imports {module} ({where[0]})"
        elif imported is None or imported == importer:
            continue
        elif imported not in RANK:
            found[(rel, module)] = f"{module} is in no room of LAYERS ({where[0]})"
        elif RANK[imported] < RANK[importer]:
            found[(rel, module)] = f"{importer} imports {imported}, a room above it ({where[0]})"
        elif RANK[imported] == RANK[importer] and (importer, imported) not in ALLOWED_SIBLINGS:
            found[(rel, module)] = f"{importer} imports its sibling {imported} ({where[0]})"
    return found


def cycles(room_edges: set[tuple[str, str]]) -> list[set[str]]:
    """The strongly connected sets of two or more rooms (Tarjan's algorithm)."""
    succ = defaultdict(set)
    for a, b in room_edges:
        succ[a].add(b)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted({r for edge in room_edges for r in edge}):
        if v not in index:
            visit(v)
    return found


def test_every_first_party_module_sits_in_a_room():
    _, _, _, unplaced = graph()
    assert not unplaced, f"add these files' rooms to LAYERS: {unplaced}"


def test_imports_point_down():
    """Rules (a) and (c): no import goes up or sideways, the kernel imports only settings."""
    found = violations()
    assert not found, "imports against the layer order:\n" + "\n".join(sorted(found.values()))


def test_no_cycle_between_rooms():
    """Rule (b), on every edge."""
    _, room_edges, _, _ = graph()
    found = sorted(sorted(c) for c in cycles(room_edges))
    assert not found, f"rooms that import each other (fix the imports): {found}"


def test_first_party_imports_sit_at_module_top():
    """Rule (d): outside KFP component bodies and the CLI, a deferred import says why on its
    line."""
    _, _, deferred, _ = graph()
    assert not deferred, (
        "first-party imports in function bodies: move them to module top, or end the line "
        f"with '{DEFERRED_MARK} <reason>' (a cycle it would close, a heavy import it would "
        f"bring to start-up): {deferred}")


def test_the_checker_sees_what_it_must(tmp_path):
    """The walk sees function-body, relative and `from package import module` imports, and
    which function bodies are KFP components'."""
    path = tmp_path / "probe.py"
    path.write_text(
        "from components import settings\n"
        "def f():\n"
        "    from .common import storage\n"
        "    import pipelines.local  # deferred: a reason\n"
        "    return lambda: __import__('x')\n"
        "@dsl.component(base_image='x')\n"
        "def step():\n"
        "    from components.govern import core\n")
    seen = [(m, fn, kfp, _has_reason(t))
            for m, _, fn, kfp, t in imports_of(path, "components.probe")]
    assert seen == [("components.settings", False, False, False),
                    ("components.common.storage", True, False, False),
                    ("pipelines.local", True, False, True),
                    ("components.govern.core", True, True, False)]
    assert cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [{"a", "b", "c"}]
