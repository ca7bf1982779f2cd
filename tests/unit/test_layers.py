"""The package layout holds: no import circle between Herald's modules, and no module much
over 300 lines (the layer contracts themselves run in .ci/run: .ci/importlinter.ini)."""

from __future__ import annotations

import grimp

from tests.support import ROOT

#: Lines a module may have ("aim under ~300").
MAX_LINES = 330


def test_no_import_circles() -> None:
    graph = grimp.build_graph("service", "workers", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    circles: list[list[str]] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph.find_modules_directly_imported_by(mod)):
            if state.get(dep) == 1:
                circles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[mod] = 2

    for mod in modules:
        if mod not in state:
            visit(mod)
    assert circles == [], circles


def test_no_module_is_much_over_300_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in [*ROOT.glob("service/**/*.py"),
                                                   *ROOT.glob("workers/*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, long
