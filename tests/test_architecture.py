"""The whole project's import rules (issues 9 and 21), read from the source with ast like tests/test_layout.py:
no import cycle among the project's modules; nothing imports an entry point (the `run_*.py` scripts and the
`inference.export` / `inference.server` commands); `utils/` (what every task may use) imports no task code, no
data stage, not `program` and not `inference`; `tasks/` never imports an entry point; `inference/`'s library
modules (model directory, predictor, verified export, quantization, batching, requests) import no task code;
no module imports another package's private (`_name`) objects; in the fine-tuning and inference code, project
imports sit at the top of the module unless the line says why."""
import ast

import pytest

from test_layout import REPO, find_cycle, imported_modules, in_package, module_name

ENTRY_POINTS = ("run_pretraining", "run_squad", "run_glue", "run_pretraining_inference", "inference.export",
                "inference.server")


def project_modules():
    """{dotted name: path} of the project's Python modules (tests, benchmarks and the venv left out)."""
    paths = [p for p in REPO.glob("*.py")]
    for package in ("data", "tasks", "utils", "cpu_kernels", "inference"):
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
    ("utils", "inference"), ("data", "inference"), ("program", "inference"), ("modeling", "inference"),
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


INFERENCE_COMMANDS = ("inference.export", "inference.server")


def test_inference_is_in_the_graph_and_its_library_imports_no_task_code():
    graph = project_graph()
    assert {"inference.predictor", "inference.verified_export", "inference.export"} <= set(graph)
    assert "tasks.finetune_config" in graph["inference.export"]  # edges of inference modules are read
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items()
                 if in_package(m, "inference") and m not in INFERENCE_COMMANDS
                 for d in deps if in_package(d, "tasks"))
    assert not bad, bad


def _private_imports(path, name, modules):
    """`from other.package import _private` lines of one module: (line, imported module, name)."""
    top = name.split(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] in {m.split(".")[0] for m in modules} and node.module.split(".")[0] != top:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        yield node.lineno, node.module, alias.name


def test_no_module_imports_another_packages_private_names():
    modules = project_modules()
    bad = [f"{name}:{line} imports {module}.{private}" for name, path in modules.items()
           for line, module, private in _private_imports(path, name, modules)]
    assert not bad, bad


def _function_level_imports(path, modules):
    """(line, text) of project imports inside functions without a comment saying why."""
    source = path.read_text()
    lines = source.splitlines()
    tops = {m.split(".")[0] for m in modules}
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in inner.names] if isinstance(inner, ast.Import) else [inner.module or ""]
                    text = lines[inner.lineno - 1]
                    if any(n.split(".")[0] in tops for n in names) and "#" not in text:
                        yield inner.lineno, text.strip()


@pytest.mark.parametrize("scope", ["run_squad", "run_glue", "tasks", "inference"])
def test_fine_tuning_and_inference_import_at_the_top(scope):
    modules = project_modules()
    bad = [f"{name}:{line}: {text}" for name, path in modules.items() if in_package(name, scope)
           for line, text in _function_level_imports(path, modules)]
    assert not bad, bad
