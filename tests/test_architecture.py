"""The whole project's import rules (issues 9 and 21), read from the source with ast like tests/test_layout.py:
no import cycle among the project's modules; nothing imports an entry point (the `run_*.py` scripts and the
`inference.export` / `inference.server` commands); `utils/` (what every task may use) imports no task code, no
data stage, nothing of the program layer and not `inference`; `tasks/` never imports an entry point;
`inference/`'s library modules (model directory, predictor, verified export, quantization, batching, requests)
import no task code but the pure-numpy task scoring; no module imports another package's private (`_name`)
objects; in the fine-tuning and inference code, project imports sit at the top of the module unless the line
says why. And where each concern lives (issue 21): loop parts and task scoring under `tasks/`, every edit of a
built program in `program_rewrites`, the non-finite policy in `utils.nonfinite` (host side) and
`program_rewrites` (graph side)."""
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
    ("utils", "optimizer"), ("utils", "program_rewrites"), ("utils", "gloo_data_parallel"), ("utils", "loss"),
    ("utils", "lr_scheduler"),
    ("optimizer", "program"), ("optimizer", "program_rewrites"), ("optimizer", "tasks"),
    ("program_rewrites", "program"), ("program_rewrites", "tasks"), ("program_rewrites", "data"),
    ("gloo_data_parallel", "program"), ("gloo_data_parallel", "tasks"),
    ("utils", "run_pretraining"), ("utils", "run_squad"), ("utils", "run_glue"),
    ("tasks", "run_pretraining"), ("tasks", "run_squad"), ("tasks", "run_glue"), ("data", "tasks"), ("data", "program"),
    ("program", "tasks"), ("modeling", "program"), ("modeling", "tasks"),
    ("cpu_kernels", "program"), ("cpu_kernels", "tasks"), ("cpu_kernels", "data"), ("cpu_kernels", "optimizer"),
    ("utils", "inference"), ("data", "inference"), ("program", "inference"), ("modeling", "inference"),
    ("cpu_kernels", "program_rewrites"),
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


def test_inference_is_in_the_graph_and_its_library_imports_no_task_code_but_scoring():
    graph = project_graph()
    assert {"inference.predictor", "inference.verified_export", "inference.export"} <= set(graph)
    assert "tasks.finetune_config" in graph["inference.export"]  # edges of inference modules are read
    bad = sorted(f"{m} imports {d}" for m, deps in graph.items()
                 if in_package(m, "inference") and m not in INFERENCE_COMMANDS
                 for d in deps if in_package(d, "tasks") and d not in PURE_NUMPY)
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


# Issue 21: `utils/` holds foundations only. Each of these is used by one layer and lives there; a module of
# the same name anywhere else (e.g. moved back under utils/) would smear its concern again.
HOMES = {
    "tasks.metric_window": "the pretraining loop's read of its on-device metric window",
    "tasks.resume_agreement": "the pretraining loop's agreement of every rank on the step to resume",
    "tasks.squad_postprocess": "SQuAD's logits -> answers (run_squad, inference, benchmarks)",
    "tasks.squad_metrics": "SQuAD's official scores",
    "tasks.glue_metrics": "GLUE's scores",
    "gloo_data_parallel": "the CPU all-reduce optimizer wrapper program.py builds with",
    "program_rewrites": "every edit of a built program after minimize",
    "utils.nonfinite": "the non-finite policy and its host side",
}
# Task scoring is pure numpy (STYLE rule 18): the server and the benchmarks use it without a program.
PURE_NUMPY = ("tasks.squad_postprocess", "tasks.squad_metrics", "tasks.glue_metrics")


def _defined_names(path):
    """Names of the functions and classes defined at the top level of the file at `path`."""
    tree = ast.parse(path.read_text(), str(path))
    return [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]


def _called_attributes(path):
    """Attribute names called anywhere in the file at `path` (`block._insert_op(...)` gives "_insert_op")."""
    tree = ast.parse(path.read_text(), str(path))
    return {node.func.attr for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}


def _imported_roots(path):
    """Top-level names of every module the file at `path` imports (`paddle.static` gives "paddle")."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("home", sorted(HOMES))
def test_each_concern_has_one_home(home):
    modules = project_modules()
    assert home in modules, f"{home} ({HOMES[home]}) is missing: update HOMES to the layout"
    stem = home.rpartition(".")[2]
    others = sorted(m for m in modules if m != home and m.rpartition(".")[2] == stem)
    assert not others, f"{stem} lives in {home} ({HOMES[home]}), not also in {others}"


def test_only_program_rewrites_edits_ops_of_a_built_program():
    # Inserting, removing or re-wiring ops after minimize is a rewrite; program.py only decides which run.
    edits = {"_insert_op", "_remove_op", "set_input"}
    bad = sorted(f"{name} calls {sorted(edits & _called_attributes(path))}"
                 for name, path in project_modules().items()
                 if name != "program_rewrites" and edits & _called_attributes(path))
    assert not bad, bad
    assert edits <= _called_attributes(project_modules()["program_rewrites"])  # the scan sees the calls


def test_the_non_finite_policy_is_defined_in_its_two_homes():
    # Graph side: program_rewrites; host side (errors, guard, the parameter test): utils.nonfinite.
    found = {(name, defined) for name, path in project_modules().items() for defined in _defined_names(path)
             if "nonfinite" in defined.lower() or "diverged" in defined.lower()}
    assert {m for m, _ in found} == {"program_rewrites", "utils.nonfinite"}, sorted(found)
    assert {("utils.nonfinite", "TrainingDiverged"), ("utils.nonfinite", "NonFiniteGuard"),
            ("utils.nonfinite", "NonFiniteParameters"), ("program_rewrites", "skip_nonfinite_updates"),
            ("program_rewrites", "count_nonfinite_updates")} <= found


@pytest.mark.parametrize("module", PURE_NUMPY)
def test_task_scoring_needs_no_paddle(module):
    assert "paddle" not in _imported_roots(project_modules()[module])
