"""The console scripts with LDDL's command names (pyproject.toml, installed by scripts/setup.sh).

Static part (always runs): every name is declared, each target function exists, its module imports
utils.preflight before anything else (zlib before paddle) and the package __init__ files on the way import
nothing. Installed part (skipped when the project is not installed in .venv): every declared script exists in
.venv/bin and runs as a user runs it, from another directory with a clean environment.
"""
import ast
import os
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
LDDL_NAMES = {"preprocess_bert_pretrain", "balance_dask_output", "download_wikipedia"}
OUR_NAMES = {"inspect_shards", "build_vocab"}


def declared_scripts():
    """{command: "module:function"} from pyproject.toml's [project.scripts]."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def first_import(tree):
    """The dotted name of the first import statement at module level, or None."""
    for node in tree.body:
        if isinstance(node, ast.Import):
            return node.names[0].name
        if isinstance(node, ast.ImportFrom):
            return node.module
    return None


def installed():
    """True when the project is installed in .venv (its dist-info is there); the scripts must then exist."""
    python = VENV_BIN / "python"
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; m.distribution('bert-paddle')"],
                           capture_output=True, cwd="/", timeout=60)
    return probe.returncode == 0


def clean_env():
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "OMP_NUM_THREADS": "1",
            "LC_ALL": "C.UTF-8"}


def test_lddl_command_names_are_declared():
    assert LDDL_NAMES | OUR_NAMES <= set(declared_scripts())


@pytest.mark.parametrize("name", sorted(LDDL_NAMES | OUR_NAMES))
def test_target_imports_preflight_first(name):
    module, _, function = declared_scripts()[name].partition(":")
    parts = module.split(".")
    path = REPO.joinpath(*parts).with_suffix(".py")
    tree = ast.parse(path.read_text(), str(path))
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{path}: no {function}()"
    assert first_import(tree) == "utils.preflight", f"{path}: the first import must be utils.preflight"
    for depth in range(1, len(parts)):
        init = REPO.joinpath(*parts[:depth], "__init__.py")
        init_tree = ast.parse(init.read_text(), str(init))
        assert first_import(init_tree) is None, f"{init} imports something: it would run before utils.preflight"


@pytest.fixture(scope="module")
def venv_installed():
    if not installed():
        pytest.skip("the project is not installed in .venv (run `bash scripts/setup.sh`)")


@pytest.mark.parametrize("name", sorted(LDDL_NAMES | OUR_NAMES))
def test_console_script_exists_in_venv(venv_installed, name):
    script = VENV_BIN / name
    assert script.is_file() and os.access(script, os.X_OK), f"{script} missing: re-run `bash scripts/setup.sh`"
    module, _, function = declared_scripts()[name].partition(":")
    assert f"from {module} import {function}" in script.read_text()


def test_preprocess_bert_pretrain_help_exits_0(venv_installed, tmp_path):
    proc = subprocess.run([str(VENV_BIN / "preprocess_bert_pretrain"), "--help"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--sink" in proc.stdout and "--wikipedia" in proc.stdout


def test_download_wikipedia_takes_no_target_and_checks_flags(venv_installed, tmp_path):
    # Bad input is refused before any network access: exit 2 and one error line naming the flag.
    proc = subprocess.run([str(VENV_BIN / "download_wikipedia"), "--output-dir", str(tmp_path / "out"),
                           "--wiki-dump-date", "2020"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: --wiki-dump-date must be a date YYYYMMDD, got '2020'"
    assert not (tmp_path / "out").exists()
    usage = subprocess.run([str(VENV_BIN / "download_wikipedia"), "--help"], cwd=tmp_path, env=clean_env(),
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: download_wikipedia [-h]")
    assert "{vocab,squad,wikipedia,all}" not in usage.stdout
