"""The whole project's import rules (issue 9), read from the source with ast like tests/test_layout.py:
no import cycle among the project's modules; nothing imports an entry point; `utils/` (what every task may
use) imports no task code, no data stage and not `program`; `tasks/` never imports an entry point."""
import pytest

from test_layout import REPO, find_cycle, imported_modules, in_package, module_name

ENTRY_POINTS = ("run_pretraining", "run_squad", "run_glue", "run_pretraining_inference")


def project_modules():
    """{dotted name: path} of the project's Python modules (tests, benchmarks and the venv left out)."""
    paths = [p for p in REPO.glob("*.py")]
    for package in ("data", "tasks", "utils", "cpu_kernels"):
        paths += sorted((REPO / package).rglob("*.py"))
    return {module_name(p, REPO): p for p in paths}


def project_graph():
    modules = project_modules()
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def test_no_import_cycle_in_the_project():
    graph = project_graph()
    assert {"program", "tasks.pretraining", "utils.checkpoint", "data.loader.lddl_loader"} <= set(graph)
    assert {"program", "utils.checkpoint", "data.loader.lddl_loader"} <= graph["tasks.pretraining"]  # edges read
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("importer, forbidden", [
    ("utils", "program"), ("utils", "data"), ("utils", "tasks"),
    ("utils", "run_pretraining"), ("utils", "run_squad"), ("utils", "run_glue"),
    ("tasks", "run_pretraining"), ("tasks", "run_squad"), ("tasks", "run_glue"), ("data", "tasks"), ("data", "program"),
    ("program", "tasks"), ("modeling", "program"), ("modeling", "tasks"),
    ("cpu_kernels", "program"), ("cpu_kernels", "tasks"), ("cpu_kernels", "data"), ("cpu_kernels", "optimizer"),
])
def test_layers_point_down(importer, forbidden):
    graph = project_graph()
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items() if in_package(m, importer)
                 for d in deps if in_package(d, forbidden))
    assert not bad, bad


def test_nothing_imports_an_entry_point():
    graph = project_graph()
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps if d in ENTRY_POINTS)
    assert not bad, bad
