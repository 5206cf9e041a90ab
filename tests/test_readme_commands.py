"""The README's commands, as a new user copies them (issue 14: "every README command works exactly as written").

Every command line of the README's ```bash blocks and of its data-pipeline table is checked in the
cheapest way that still fails when it breaks:
  * `bash scripts/run_*.sh ...` (presets included): run for real with DRY_RUN=1 on a fresh data
    directory; exit 0 and a printed plan (a `missing:` list is fine: nothing is downloaded here);
  * `python run_*.py ...`, `python -m <module> ...`: every `--flag` written must be one the command
    defines (a renamed or removed flag fails here), and a command written in full must parse;
  * scripts that download, build images or run for minutes (demo, test, docker, create_datasets): the
    file exists and `bash -n` accepts it;
  * the data-pipeline table is also run for real, in its order, on the offline sample corpus (with the
    table's placeholders D, V, S, K filled in), then the README's phase-1 pre-training command trains 4
    steps of bert-tiny on the shards it built.
"""
import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
SLOW_SCRIPTS = ("scripts/demo.sh", "scripts/test.sh", "scripts/docker/", "data/create_datasets_from_start.sh")


def _open_quote(text):
    """True while `text` has an unclosed quote (a command whose quoted argument spans lines)."""
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return True
    return False


def _logical_lines(block):
    """A bash block's commands: continuation lines and multi-line quoted arguments joined, comments and
    blank lines dropped."""
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        if _open_quote(current + line):
            current += line + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            lines.append(current.strip())
        current = ""
    return lines


def table_commands():
    """The backticked commands of the README's tables (the data-pipeline table)."""
    commands = []
    for row in re.findall(r"^\|.*\|$", README, re.M):
        commands += [c.replace("\\|", "|") for c in re.findall(r"`((?:python|bash) [^`]+)`", row)]
    return commands


def readme_commands():
    """Every command of the README: the ```bash blocks' lines and the tables' commands."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        commands += _logical_lines(block)
    return commands + table_commands()


COMMANDS = readme_commands()


def _without_comment(command):
    return re.sub(r"\s+#\s.*$", "", command)


def test_the_readme_has_the_commands_this_test_knows_how_to_check():
    kinds = {_kind(c) for c in COMMANDS}
    assert {"dry-run", "python-script", "python-module", "slow-script"} <= kinds, kinds
    assert len(COMMANDS) >= 25


def _kind(command):
    command = _without_comment(command)
    if re.search(r"\bbash scripts/(run_pretraining(_p[12])?|run_squad|run_glue)\.sh", command):
        return "dry-run"
    if command.startswith("bash ") and any(s in command for s in SLOW_SCRIPTS + ("scripts/run_pretraining_p",)):
        return "slow-script"
    if re.search(r"\brun_\w+\.py\b", command):
        return "python-script"
    if re.search(r"python -m [\w.]+", command):
        return "python-module"
    return "other"


# ------------------------------------------------------------------------------------------- dry runs
DRY_RUNS = [c for c in COMMANDS if _kind(c) == "dry-run"]


@pytest.mark.parametrize("command", DRY_RUNS)
def test_launch_script_commands_dry_run_on_a_fresh_clone(command, tmp_path):
    command = _without_comment(command).replace("...", "")
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "DEVICE", "RESULTS_DIR", "VOCAB_FILE")}
    env.update(DRY_RUN="1", BERT_PREP_WORKING_DIR=str(tmp_path / "download"), RESULTS_DIR=str(tmp_path / "r"),
               DEMO_DIR=str(tmp_path / "demo"))
    if not command.startswith("DRY_RUN=1 "):
        command = "DRY_RUN=1 " + command
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (command, proc.stderr)
    assert proc.stdout.strip(), command
    # A preset that does not exist expands to nothing (the script then runs its defaults): caught here.
    assert not [line for line in proc.stderr.splitlines()
                if ": error: " in line or "command not found" in line or "No such file" in line], proc.stderr


NAMED_FLAG_SCRIPTS = [c for c in DRY_RUNS if re.search(r"run_pretraining_p[12]\.sh", c)]


def test_the_readme_dry_runs_the_glue_presets_cpu_demo_included():
    assert any("mrpc_cpu_demo" in c for c in DRY_RUNS), DRY_RUNS


def test_the_readme_names_both_named_flag_scripts():
    assert len(NAMED_FLAG_SCRIPTS) == 2, NAMED_FLAG_SCRIPTS


@pytest.mark.parametrize("command", NAMED_FLAG_SCRIPTS)
def test_named_flag_scripts_on_a_cpu_machine_stop_with_one_line(command, tmp_path):
    """Without DRY_RUN, on a machine whose paddle has no CUDA: one error line naming the CPU preset, nothing
    launched (it used to start paddle.distributed.launch and print its 62-line traceback)."""
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nif [[ $1 == -c ]]; then echo nocuda; exit 0; fi\n'
                    'echo "launched: $*" >&2; exit 1\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "GPUS")}
    env.update(PYTHON=str(fake), BERT_PREP_WORKING_DIR=str(tmp_path / "download"))
    proc = subprocess.run(["bash", "-c", _without_comment(command)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "launched" not in proc.stderr and "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "no GPU is usable" in line and "cpu_demo" in line, line


@pytest.mark.parametrize("command", NAMED_FLAG_SCRIPTS)
def test_named_flag_scripts_dry_run_lists_what_is_missing(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GPUS",)}
    env.update(DRY_RUN="1", PYTHON="fakepy", BERT_PREP_WORKING_DIR=str(tmp_path / "download"))
    proc = subprocess.run(["bash", "-c", _without_comment(command)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (printed,) = proc.stdout.splitlines()
    assert printed.startswith("fakepy -m paddle.distributed.launch --gpus=0,1,2,3,4,5,6,7 run_pretraining.py ")
    assert f"input dir '{tmp_path}/download/pretrain/phase" in proc.stderr and "missing: 2 thing(s)" in proc.stderr


def test_the_readmes_output_directories_are_not_committed_by_accident():
    """Issue 24 item 9: export/ (where the README's export commands write) was not in .gitignore."""
    outputs = set(re.findall(r"--output-dir (export/\w+)", README)) | {"results/x", "demo_output/x"}
    assert {"export/squad", "export/mrpc"} <= outputs
    for path in sorted(outputs):
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
        assert proc.returncode == 0, f"{path} is not ignored by .gitignore"


def test_the_test_command_lists_the_slowest_tests():
    """Issue 24 item 9: scripts/test.sh (the README's and CI's test command) shows the 15 slowest tests."""
    (pytest_line,) = [line for line in (REPO / "scripts" / "test.sh").read_text().splitlines()
                      if " -m pytest " in line]
    assert "--durations=15" in shlex.split(pytest_line)


@pytest.mark.parametrize("command", [c for c in COMMANDS if _kind(c) == "slow-script"])
def test_slow_scripts_exist_and_parse(command):
    for path in re.findall(r"(?:scripts|data)/[\w/.-]+\.sh", command):
        assert (REPO / path).is_file(), path
        assert subprocess.run(["bash", "-n", str(REPO / path)]).returncode == 0, path


# ------------------------------------------------------------------------------------------ flag checks
class _Parsed(Exception):
    pass


def _parser_of(target, monkeypatch):
    """The ArgumentParser of `run_x.py` or of `python -m module` (caught when its main parses)."""
    if target.endswith(".py"):
        return importlib.import_module(target[:-3]).build_parser()
    module = importlib.import_module(target)
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Parsed):
        module.main([])
    monkeypatch.undo()
    return seen[0]


def _target_and_args(command):
    """(run_x.py or module name, the words after it) of a python command line, or None for others."""
    # `[--flag]` marks an optional part: checked (and parsed) as if given.
    words = [w.strip("[]") for w in shlex.split(_without_comment(command).replace("$M", "M").replace("…", "x"))]
    words = [w for w in words if w]
    for i, word in enumerate(words):
        if re.fullmatch(r"run_\w+\.py", os.path.basename(word)) and (REPO / os.path.basename(word)).is_file():
            return os.path.basename(word), words[i + 1:]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1] != "paddle.distributed.launch":
            return words[i + 1], words[i + 2:]
    return None


PYTHON_COMMANDS = [c for c in COMMANDS if _kind(c) in ("python-script", "python-module") and _target_and_args(c)]


@pytest.mark.parametrize("command", PYTHON_COMMANDS)
def test_every_flag_in_a_readme_command_exists(command, monkeypatch):
    target, args = _target_and_args(command)
    parser = _parser_of(target, monkeypatch)
    known = {s for a in parser._actions for s in a.option_strings}
    for word in args:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert flag in known or flag.replace("_", "-") in known, f"{target}: README uses unknown {flag}"
    if "..." not in args and target.endswith(".py"):
        parser.parse_args(args)  # written in full: it must parse (SystemExit 2 otherwise)


BENCH_COMMANDS = [c for c in PYTHON_COMMANDS if _target_and_args(c)[0] in
                  ("benchmarks.bench_loader", "benchmarks.bench_preprocess", "benchmarks.bench_squad")]


def test_the_readme_has_the_three_input_benchmarks():
    assert {_target_and_args(c)[0] for c in BENCH_COMMANDS} == {
        "benchmarks.bench_loader", "benchmarks.bench_preprocess", "benchmarks.bench_squad"}


@pytest.mark.parametrize("command", BENCH_COMMANDS)
def test_benchmark_commands_parse_as_written(command, monkeypatch):
    """`python -m benchmarks.bench_loader` with no flag used to stop: "the following arguments are required:
    --vocab-file". The flags they leave out must have defaults (resolved in main, after parsing)."""
    target, args = _target_and_args(command)
    _parser_of(target, monkeypatch).parse_args(args)


def test_bench_squad_as_written_runs_offline_on_a_fresh_clone(tmp_path, monkeypatch, capsys):
    """No vocab/*.txt, no data/download: a vocab is built from the embedded corpus (once) and the embedded
    SQuAD sample is used. A copy of the repo's samples stands in for the clone, so nothing is written here."""
    import shutil
    from benchmarks import bench_squad, default_inputs

    shutil.copytree(REPO / "data" / "samples", tmp_path / "data" / "samples")
    monkeypatch.setattr(default_inputs, "REPO", str(tmp_path))
    result = bench_squad.main([])
    assert result["questions"] == 13 and result["windows"] >= 13
    assert (tmp_path / default_inputs.SAMPLE_VOCAB).is_file()
    assert "outputs identical" in capsys.readouterr().out


def test_python_commands_cover_the_entry_points():
    targets = {_target_and_args(c)[0] for c in PYTHON_COMMANDS}
    assert {"run_pretraining.py", "run_squad.py", "data.prep.preprocess_bert_pretrain",
            "data.prep.balance_dask_output", "benchmarks.bench_train"} <= targets, targets


# ------------------------------------------------------------------------------- the table, for real
def _table_command(module):
    for command in table_commands():
        if command.startswith(f"python -m {module} "):
            return re.sub(r"\s*\[[^\]]*\]", "", command)  # optional parts are left out
    raise AssertionError(f"no `python -m {module}` in the README's table")


def _run(command, fill):
    """Run a README command with its placeholders (`fill`: word -> value) replaced."""
    for placeholder, value in fill.items():
        command = re.sub(rf"(?<![\w./-]){re.escape(placeholder)}(?![\w./-])", shlex.quote(str(value)), command)
    command = command.replace("python -m", f"{shlex.quote(sys.executable)} -m", 1)
    proc = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (command, proc.stderr[-3000:])
    return proc


def test_the_data_table_runs_in_order_on_the_sample_then_the_phase1_command_trains(tmp_path):
    d, v, s = tmp_path / "corpus", tmp_path / "vocab.txt", tmp_path / "shards"
    # Smaller than the defaults (the test's budget), otherwise exactly the table's words.
    _run(_table_command("data.prep.sample_corpus") + " --num-files 2 --max-bytes 200000", {"D": d})
    _run(_table_command("data.prep.build_vocab") + " --vocab-size 2000", {"D": d, "vocab.txt": v})
    assert v.is_file() and not (REPO / "vocab.txt").exists()
    _run(_table_command("data.prep.preprocess_bert_pretrain") + " --num-workers 1", {"D": d, "S": s, "V": v})
    _run(_table_command("data.prep.balance_dask_output"), {"S": s, "K": 2})
    report = _run(_table_command("data.prep.inspect_shards"), {"S": s, "V": v})
    assert "rows" in (report.stdout + report.stderr)

    # The README's phase-1 command, on those shards, with bert-tiny for 4 steps.
    phase1 = next(c for c in COMMANDS if c.startswith("python run_pretraining.py --phase1"))
    words = shlex.split(phase1)[2:]
    values = {"--input-dir": s, "--vocab-file": v, "--output-dir": tmp_path / "results", "--bert-model": "bert-tiny",
              "--max-steps": 4, "--batch-size": 8, "--from-checkpoint": tmp_path / "results/bert-tiny/phase1"}
    for flag, value in values.items():
        words[words.index(flag) + 1] = str(value)
    proc = subprocess.run([sys.executable, "run_pretraining.py", *words, "--device", "cpu", "--num-workers", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "results" / "bert-tiny" / "phase1" / "4" / "progress.json").is_file()
