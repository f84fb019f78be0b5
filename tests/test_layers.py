"""The layers hold: every import in muzo_ops/ points down or within its own room, and no rooms form a circle.

Every import is walked: module level and inside functions, ``import`` and
``from``, relative ones resolved, and those under ``if TYPE_CHECKING:``
INCLUDED (a type-only import still ties the room to the one above it: the
signature names a type owned there). The order is the one in the project's
rules (bottom to top); names listed together form one room:

    (constants, errors, sdnotify, urls, loopback, booleans, faults) < files < redact < mongo < logs < env
    < (queue, devdb) < metrics < deploy < secrets < dashboard < (cli, __main__)

``urls`` (where a URL's user information ends, as clients split it) and
``loopback`` (is this host this machine) are leaf modules of the bottom
room: redact, mongo and env all need them.

``muzo_ops/__init__.py`` is the face (lazy exports of the handler API); it
may name any room, and only the face-level names (``__version__``, ``Job``,
``FatalJobError``) may be imported from it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "muzo_ops"

LEVELS: tuple[tuple[str, ...], ...] = (
    ("constants", "errors", "sdnotify", "urls", "loopback", "booleans", "faults"),
    ("files",),
    ("redact",),
    ("mongo",),
    ("logs",),
    ("env",),
    ("queue", "devdb"),
    ("metrics",),
    ("deploy",),
    ("secrets",),
    ("dashboard",),
    ("cli", "__main__"),
)
LEVEL_OF = {name: i for i, names in enumerate(LEVELS) for name in names}
ROOM_OF = {name: names[0] for names in LEVELS for name in names}  # a module name -> its room
FACE = "__init__"


@dataclass(frozen=True)
class Arrow:
    source: str  # file, relative to the package
    line: int
    importer: str  # room
    imported: str  # room
    target: str  # the dotted module named

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.importer} -> {self.imported} ({self.target})"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    """``muzo_ops.env.checks`` → ``env``; ``muzo_ops.errors`` → ``constants``; ``muzo_ops`` → the face."""
    parts = module.split(".")
    return ROOM_OF.get(parts[1], parts[1]) if len(parts) > 1 else FACE


def is_module(dotted: str) -> bool:
    base = PACKAGE.parent.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def targets(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """The muzo_ops modules an import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "muzo_ops"]
    if node.level:
        base = here.split(".") if is_package else here.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module.split(".")[0] != "muzo_ops":
        return []
    found = []
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        found.append(sub if is_module(sub) else module)
    return found


def arrows() -> list[Arrow]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):  # every statement: module level, functions, TYPE_CHECKING blocks
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in targets(node, here, path.name == "__init__.py"):
                    found.append(Arrow(str(path.relative_to(PACKAGE)), node.lineno, room_of(here),
                                       room_of(target), target))
    return found


def upward(arrow: Arrow) -> bool:
    """Whether ``arrow`` breaks the order (points up)."""
    if arrow.importer == arrow.imported or arrow.importer == FACE:
        return False
    if arrow.imported == FACE:
        return True  # rooms import what they use from its owner, not from the face
    return LEVEL_OF[arrow.imported] >= LEVEL_OF[arrow.importer]


def room_cycles(found: list[Arrow]) -> list[list[str]]:
    """Circles between rooms (strongly connected groups of two or more), the face left out."""
    graph: dict[str, set[str]] = {}
    for a in found:
        if a.importer != a.imported and FACE not in (a.importer, a.imported):
            graph.setdefault(a.importer, set()).add(a.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_every_module_is_in_a_room() -> None:
    rooms = {room_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert rooms - {FACE} <= set(ROOM_OF), f"modules outside every room: {sorted(rooms - set(ROOM_OF))}"


def test_the_walk_sees_function_level_relative_and_type_checking_imports(tmp_path: Path) -> None:
    """The walker itself: each kind of import is found (a walker that sees nothing passes everything)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import muzo_ops.queue.jobs\n"
        "if TYPE_CHECKING:\n    from muzo_ops.secrets import audit\n"
        "def f():\n    from muzo_ops.deploy import plan\n    from . import schema\n    from .checks import Report\n"
    )
    tree = ast.parse(source)
    seen = [t for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
            for t in targets(n, "muzo_ops.env.checks", False)]
    assert seen == ["muzo_ops.queue.jobs", "muzo_ops.secrets.audit", "muzo_ops.deploy.plan",
                    "muzo_ops.env.schema", "muzo_ops.env.checks"]
    found = arrows()
    assert len(found) > 100
    assert any(a.source == "env/__init__.py" and a.imported == "env" for a in found)


def test_no_import_runs_up() -> None:
    bad = [str(a) for a in arrows() if upward(a)]
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


def test_no_rooms_form_a_circle() -> None:
    assert room_cycles(arrows()) == []


def test_the_cycle_finder_finds_one() -> None:
    made = [Arrow("a", 1, "env", "secrets", "x"), Arrow("b", 1, "secrets", "deploy", "y"),
            Arrow("c", 1, "deploy", "env", "z"), Arrow("d", 1, "redact", "files", "w")]
    assert room_cycles(made) == [["deploy", "env", "secrets"]]
