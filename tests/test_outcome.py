"""tasks.outcome: results.json beside the report, and the "next:" lines of finished runs (issue 14)."""
import json
from types import SimpleNamespace

import numpy as np

from tasks.outcome import pretraining_next_steps, results_path, squad_next_steps, write_results


def test_results_file_names_follow_the_report():
    assert results_path("/r/squad/report.json") == "/r/squad/results.json"
    assert results_path("/r/dllogger_p1.json") == "/r/dllogger_p1.results.json"


def test_results_are_flat_json_scalars(tmp_path):
    path = write_results(tmp_path / "report.json", {
        "F1": np.float32(0.5), "updates": np.int64(3), "name": "x", "nan": float("nan"), "none": None,
        "losses": [1.0, 2.0], "predictions": {"q": "a"}, "ok": True})
    assert path == str(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == {
        "F1": 0.5, "updates": 3, "name": "x", "nan": None, "none": None, "ok": True}


def _cfg(phase, max_steps=10, model="bert-base-uncased"):
    return SimpleNamespace(phase=phase, max_steps=max_steps,
                           checkpointing=SimpleNamespace(bert_model=model, output_dir="out"),
                           data=SimpleNamespace(vocab_file="v.txt"))


def test_next_steps_after_each_kind_of_pretraining_run():
    one = " ".join(pretraining_next_steps(_cfg(1), "out/m/phase1/10", 10))
    assert "--phase2" in one and "--from-phase1-final-params out/m/phase1/10" in one
    assert "--from-checkpoint out/m/phase2" in one
    two = " ".join(pretraining_next_steps(_cfg(2), "out/m/phase2/10", 10))
    assert "run_squad.py" in two and "--from-pretrained-params out/m/phase2/10" in two and "--do-lower-case" in two
    cased = " ".join(pretraining_next_steps(_cfg(2, model="bert-base-cased"), "d", 10))
    assert "--do-lower-case" not in cased
    unfinished = " ".join(pretraining_next_steps(_cfg(1), "out/m/phase1/4", 4))
    assert "step 4 of 10" in unfinished and "same command" in unfinished and "--phase2" not in unfinished
    assert "benchmark" in " ".join(pretraining_next_steps(_cfg(1), None, 10))


def test_squad_next_steps_say_where_things_are():
    lines = squad_next_steps({"params_file": "o/m/squad/bert_paddle.pdparams", "predictions_file": "o/p.json",
                              "exact_match": 80.123, "F1": 88.456}, "o")
    text = " ".join(lines)
    assert "--from-checkpoint o/m/squad" in text and "o/p.json" in text and "EM 80.12, F1 88.46" in text
    assert squad_next_steps({}, "o") == ["outputs in o"]
