"""The data/ layout's import rules, read from the source with ast (nothing is imported, so this runs in
well under a second and needs no dependency): no import cycle among data/ modules, and the stages point one
way -- the training-time loader and the task features never import the preparation tools, and the shared
shard contract at the data/ root imports none of the stages built on it.

Every import statement counts, including ones inside functions: a late import still makes a cycle at run time.
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (importer package, forbidden package, why)
RULES = [
    ("data.loader", "data.prep", "training would load the preparation tools (Dask, blingfire, mwparserfromhell)"),
    ("data.features", "data.prep", "fine-tuning would load the preparation tools"),
    ("data.features", "data.loader", "task features do not read pretraining shards"),
    ("data.lddl_format", "data.prep", "the shard contract must not depend on a stage that uses it"),
    ("data.lddl_format", "data.loader", "the shard contract must not depend on a stage that uses it"),
    ("data.masking", "data.prep", "the masking rule must not depend on a stage that uses it"),
    ("data.masking", "data.loader", "the masking rule must not depend on a stage that uses it"),
]


def module_name(path, root):
    """Dotted module name of a .py file under `root` (a package's __init__.py is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def data_modules(root):
    """{dotted name: path} of every module of the data package under `root`."""
    return {module_name(p, root): p for p in sorted((root / "data").rglob("*.py"))}


def imported_modules(path, name, known):
    """The modules of `known` that the file at `path` (module `name`) imports, anywhere in the file.

    `from pkg import x` counts as importing `pkg.x` when that is a module, else `pkg`; relative imports are
    resolved against the module's package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            # `import data.loader.x` runs data/__init__ and data/loader/__init__ too; the module itself is
            # the edge that matters (the package __init__ files import nothing, checked below).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root):
    """{module: set of data modules it imports} for the data package under `root`."""
    modules = data_modules(root)
    return {name: imported_modules(path, name, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of module names (first == last), or None."""
    state = {}  # name -> "open" while on the DFS stack, "done" after

    def visit(name, stack):
        state[name] = "open"
        stack.append(name)
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [])
            if cycle:
                return cycle
    return None


def in_package(module, package):
    return module == package or module.startswith(package + ".")


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    # The detector itself, on graphs whose answer is known: the old hdf5_loader <-> lddl_loader pair.
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_are_read_from_the_source(tmp_path):
    # Late imports, `from pkg import module` and relative imports are all edges.
    pkg = tmp_path / "data" / "loader"
    pkg.mkdir(parents=True)
    (tmp_path / "data" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from data.loader import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    (pkg / "c.py").write_text("import data.loader.a\nimport os\n")
    graph = import_graph(tmp_path)
    assert graph["data.loader.a"] == {"data.loader.b"}
    assert graph["data.loader.b"] == {"data.loader.a"}
    assert graph["data.loader.c"] == {"data.loader.a"}
    assert find_cycle(graph) == ["data.loader.a", "data.loader.b", "data.loader.a"]


def test_no_import_cycle_among_data_modules():
    graph = import_graph(REPO)
    assert "data.loader.lddl_loader" in graph and "data.prep.preprocess_bert_pretrain" in graph
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("importer, forbidden, why", RULES)
def test_stages_point_one_way(importer, forbidden, why):
    graph = import_graph(REPO)
    assert any(in_package(m, importer) for m in graph), f"no module {importer}: update RULES to the layout"
    bad = sorted(f"{m} imports {dep}" for m, deps in graph.items() if in_package(m, importer)
                 for dep in deps if in_package(dep, forbidden))
    assert not bad, f"{why}: {bad}"


def test_package_init_files_import_nothing_from_data():
    # So that importing data.loader.x never drags in another stage through a package __init__.
    graph = import_graph(REPO)
    packages = [m for m, p in data_modules(REPO).items() if p.name == "__init__.py"]
    assert {"data", "data.prep", "data.loader", "data.features"} <= set(packages)
    assert {m: graph[m] for m in packages if graph[m]} == {}
