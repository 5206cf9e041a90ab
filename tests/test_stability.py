"""benchmarks.stability as a user runs it: two tiny seeds whose commands write DLLogger reports with known
values give the hand-computed table (Markdown + JSON + PNG); finished seeds are not re-run; a failed seed is
one error line and keeps the finished ones; the presets drive the real launchers."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

# A seed's "training": writes a report whose summary depends on the seed, and counts its own runs.
FAKE = """
import json, os, sys
seed, out = int(sys.argv[1]), sys.argv[2]
if seed == int(os.environ.get("FAIL_SEED", -1)):
    sys.exit(7)
with open(os.path.join(out, "report.json"), "w") as f:
    record = {"timestamp": "0", "datetime": "-", "elapsedtime": "0", "type": "LOG", "step": [],
              "data": {"final_loss": 2.0 + seed, "F1": 10.0 * seed}}
    f.write("DLLL " + json.dumps(record) + "\\n")
with open(os.path.join(out, "..", "runs.txt"), "a") as f:
    f.write(f"{seed}\\n")
"""


def _stability(out, *extra, **env):
    import os
    command = f"{sys.executable} {out.parent / 'fake.py'} {{seed}} {{out}}"
    (out.parent / "fake.py").write_text(FAKE)
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.stability", "--output-dir", str(out), "--command", command,
         "--metric", "Final loss={out}/report.json:final_loss", "--metric", "F1={out}/report.json:F1", *extra],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True, timeout=120)


def test_two_tiny_seeds_give_the_hand_computed_table_and_are_not_rerun(tmp_path):
    out = tmp_path / "stab"
    proc = _stability(out, "--seeds", "2", "--base-seed", "3")
    assert proc.returncode == 0, proc.stderr
    # Seeds 3 and 4: final loss 5 and 6 (mean 5.5, sample std sqrt(0.5)), F1 30 and 40 (35, sqrt(50)).
    table = json.loads((out / "stability.json").read_text())
    assert table["seeds"] == [3, 4]
    assert table["metrics"]["Final loss"] == {"values": [5.0, 6.0], "mean": 5.5, "std": pytest.approx(0.5 ** 0.5)}
    assert table["metrics"]["F1"]["mean"] == 35.0 and table["metrics"]["F1"]["std"] == pytest.approx(50 ** 0.5)
    markdown = (out / "stability.md").read_text().splitlines()
    assert markdown[0] == "| Metric | Seed 0 | Seed 1 | Mean | Standard Deviation |"
    assert markdown[2] == "| Final loss | 5.0000 | 6.0000 | 5.5000 | 0.7071 |"
    assert (out / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Again with one more seed: only the new one runs.
    proc = _stability(out, "--seeds", "3", "--base-seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert (out / "runs.txt").read_text().split() == ["3", "4", "5"]
    assert json.loads((out / "stability.json").read_text())["metrics"]["Final loss"]["values"] == [5.0, 6.0, 7.0]


def test_a_failed_seed_is_one_error_line_and_finished_seeds_are_kept(tmp_path):
    out = tmp_path / "stab"
    proc = _stability(out, "--seeds", "2", FAIL_SEED="2")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1
    assert "seed 1 (--seed 2): command 0 exited with status 7" in errors[0] and "command-0.log" in errors[0]
    assert (out / "seed-0" / "result.json").exists() and not (out / "stability.md").exists()
    proc = _stability(out, "--seeds", "2")
    assert proc.returncode == 0, proc.stderr
    assert (out / "runs.txt").read_text().split() == ["1", "2"]  # seed 1 ran once, before the failure


def test_another_configuration_in_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "stab"
    assert _stability(out, "--seeds", "1").returncode == 0
    proc = _stability(out, "--seeds", "1", "--metric", "EM={out}/report.json:F1")
    assert proc.returncode == 2 and "holds seeds of another configuration" in proc.stderr


def test_cpu_demo_preset_drives_the_launchers_with_each_seed():
    from benchmarks.stability import preset
    commands, metrics = preset("cpu_demo")
    pretrain, squad = commands
    assert pretrain[:3] == ["env", "RESULTS_DIR={out}", "DEVICE=cpu"] and pretrain[4].endswith("run_pretraining.sh")
    assert pretrain[5 + 9] == "{seed}" and len(pretrain) == 5 + 32
    assert squad[3].endswith("run_squad.sh") and squad[4] == "{out}/bert-tiny/phase2/30" and squad[4 + 7] == "{seed}"
    assert [m[0] for m in metrics] == ["Phase 1 final loss", "Phase 2 final loss", "SQuAD F1", "SQuAD exact match"]
    with pytest.raises(ValueError, match="needs --init-checkpoint"):
        preset("squad_cpu_demo")
