"""The shape of the imports: no cycle between our modules, and a worker process that never loads the web stack.

The one-way rules themselves are import-linter contracts (pyproject.toml, run by scripts/test.sh); these two checks
are the ones a contract cannot state: the absence of any cycle, and what a real worker process has in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys

import grimp

PACKAGES = ("api", "db", "inference")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycle_between_our_modules() -> None:
    graph = grimp.build_graph(*PACKAGES)  # every import statement, function-level and TYPE_CHECKING ones included
    assert len(graph.modules) > 50  # the graph really holds our code
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")
    assert _cycles(graph) == [["a", "b"]]


def test_the_worker_entry_does_not_load_the_web_stack() -> None:
    code = (
        "import json, sys\n"
        "import api.worker.process, api.worker.runner, api.dispatchers.local\n"
        "print(json.dumps(sorted(name for name in sys.modules if name.split('.')[0] in ('fastapi', 'starlette'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout) == []
