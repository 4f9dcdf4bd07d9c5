"""Import contracts, read from the source (imports inside functions included, which is where
layering leaks hide): ui never imports cli, and no modules of workbench import each other in a circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"

# Circles not broken yet, each with why; a new circle fails the test, and so does one of these once it is gone.
KNOWN_CYCLES: set[frozenset] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _owner(name: str) -> str | None:
    """The module of ours that ``import name`` runs (a name inside a module resolves to the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_owner(a.name) for a in node.names if a.name.split(".")[0] == "workbench"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            if base.split(".")[0] != "workbench":
                continue
            for alias in node.names:  # `from workbench.x import y` imports the module x.y when there is one
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else _owner(base))
    return found - {None, module}


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[frozenset]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_graph_sees_imports_inside_functions():
    # checks.py imports the output-folder rules inside check_run_config, not at the top
    assert "workbench.training.output" in GRAPH["workbench.training.checks"]
    assert "workbench.models.resolve" in GRAPH["workbench.training.checks"]
    assert "workbench.demo_model" in GRAPH["workbench.demo"]  # ensure_demo's lazy import


def test_cycle_finder_finds_circles_of_any_length():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_modules_import_each_other_in_a_circle():
    found = set(cycles(GRAPH))
    new = found - KNOWN_CYCLES
    assert not new, "new import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)
    gone = KNOWN_CYCLES - found
    assert not gone, "these circles are gone, remove them from KNOWN_CYCLES: " + "; ".join(map(str, gone))


def test_ui_never_imports_cli():
    leaks = {m: sorted(i for i in GRAPH[m] if i.startswith("workbench.cli"))
             for m in MODULES if m.startswith("workbench.ui")}
    assert not {m: i for m, i in leaks.items() if i}


def test_run_folder_file_names_are_written_once():
    # The run folder's layout belongs to workbench.run_folder: no other module spells its file names.
    import re
    from pathlib import Path

    import workbench.run_folder as rf

    names = [rf.CONFIG_NAME, rf.METRICS_NAME, rf.STATUS_NAME, rf.EVENTS_NAME, rf.SKIPPED_ROWS_NAME, rf.STOP_FILE,
             rf.RANKS_DIR, rf.ACCELERATE_CONFIG, rf.LAUNCH_LOG, "checkpoint-{"]
    root = Path(rf.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "run_folder.py":
            continue
        code = path.read_text()  # sentences may name the files; joining one onto a path is the folder's job
        offenders += [(str(path.relative_to(root)), n) for n in names if re.search(r"/\s*f?[\"']" + re.escape(n), code)]
    assert offenders == []
