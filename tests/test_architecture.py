"""The import graph: fronts stay thin, nothing points upward, and there are no cycles.

Read from the source with ``ast`` (every import, also those inside functions), so a shortcut
taken anywhere fails here, not in review.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRONTS = ("cogs", "bot.web", "bot.cli", "bot.discord_bot", "bot.__main__")
BACKENDS = ("bot.ledger", "bot.stores", "bot.providers", "bot.cloudflare_api")
SERVICES = (
    "bot.service", "bot.generation", "bot.library", "bot.backends", "bot.runtime",
    "bot.batches", "bot.placeholders", "bot.recovery", "bot.deletion", "bot.reports",
    "bot.api_keys", "bot.server_admin", "bot.scheduler", "bot.requests", "bot.presentation",
    "bot.idempotency", "bot.grids", "bot.lease_fence",
)  # fmt: skip
# What fronts must not reach through the runtime or the service: the parts behind them.
HIDDEN_ATTRIBUTES = {"ledger", "store", "provider", "backends"}


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted([*ROOT.glob("bot/**/*.py"), *ROOT.glob("cogs/*.py")]):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


MODULES = modules()


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def imports_of(tree: ast.Module) -> set[str]:
    """The project modules a module imports (``from bot import imaging`` is bot.imaging)."""
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named.add(node.module)
            named.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in named if name in MODULES}


GRAPH = {name: imports_of(tree) - {name} for name, tree in MODULES.items()}


def arrows(sources: tuple[str, ...], targets: tuple[str, ...]) -> Iterator[str]:
    for name, imported in GRAPH.items():
        if within(name, sources):
            yield from (f"{name} → {t}" for t in sorted(imported) if within(t, targets))


def test_the_graph_walk_sees_the_project() -> None:
    assert "cogs.imagine" in MODULES and "bot.service" in MODULES
    assert "bot.generation.pipeline" in GRAPH["bot.generation"]
    assert "bot.imaging" in GRAPH["bot.library"]  # `from bot import imaging` counts


def test_fronts_import_no_ledger_store_or_provider() -> None:
    assert list(arrows(FRONTS, BACKENDS)) == []


def test_fronts_reach_no_ledger_store_or_provider_through_an_attribute() -> None:
    reached = [
        f"{name}:{node.lineno} .{node.attr}"
        for name, tree in MODULES.items()
        if within(name, FRONTS)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in HIDDEN_ATTRIBUTES
    ]
    assert reached == []


def test_nothing_below_the_fronts_imports_a_front() -> None:
    upward = [
        f"{name} → {target}"
        for name, imported in GRAPH.items()
        if not within(name, FRONTS)
        for target in sorted(imported)
        if within(target, FRONTS)
    ]
    assert upward == []


def test_backends_import_no_service_and_not_each_other() -> None:
    assert list(arrows(BACKENDS, SERVICES)) == []
    assert list(arrows(("bot.ledger",), ("bot.stores", "bot.providers"))) == []
    assert list(arrows(("bot.stores", "bot.providers"), ("bot.ledger",))) == []


def test_the_parts_of_the_service_do_not_import_the_facade() -> None:
    parts = ("bot.generation", "bot.library", "bot.deletion", "bot.recovery", "bot.backends")
    assert list(arrows(parts, ("bot.service", "bot.runtime"))) == []


def test_no_cog_imports_another_cog() -> None:
    cogs = tuple(
        name for name, tree in MODULES.items()
        if name.startswith("cogs.") and any(
            isinstance(node, ast.AsyncFunctionDef) and node.name == "setup" for node in tree.body
        )
    )  # fmt: skip
    assert {"cogs.imagine", "cogs.library", "cogs.quota"} <= set(cogs)
    assert list(arrows(tuple(MODULES), cogs)) == []


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components: any with two modules or more is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in GRAPH[name]:
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while (top := stack.pop()) != name:
                component.append(top)
            if component:
                cycles.append(sorted([name, *component]))

    for name in GRAPH:
        if name not in index:
            visit(name)
    assert cycles == []


def test_no_code_asks_which_backend_is_in_use_by_name() -> None:
    """Backends say what they can do (capability flags); only start-up chooses by name."""
    chooses = {"bot.runtime", "bot.config"}
    asked = []
    for name, tree in MODULES.items():
        if name in chooses:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names_a_backend = any(
                isinstance(s, ast.Constant) and s.value in ("local", "cloudflare") for s in sides
            )
            asks = any(
                isinstance(s, ast.Attribute) and s.attr in ("name", "image_provider", "image_store")
                for s in sides
            )
            if names_a_backend and asks:
                asked.append(f"{name}:{node.lineno}")
    assert asked == []


def test_every_module_of_the_bot_is_small() -> None:
    """No module of the bot (bot/ and cogs/, every package) over ~450 lines."""
    mine = [*ROOT.glob("bot/**/*.py"), *ROOT.glob("cogs/*.py")]
    assert len(mine) > 60
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in mine}
    assert {name: n for name, n in lines.items() if n > 450} == {}
