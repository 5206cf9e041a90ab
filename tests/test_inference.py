"""inference/: export parity with the training program, length bucketing equal to unbucketed prediction,
answers' character offsets, int8 accuracy reporting, run_squad through the predictor, and the one-line
errors for bad or changed export directories (as a user runs the commands: subprocesses)."""
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from test_run_squad import PARAGRAPHS, SPECIAL, TINY, squad_json
from utils.fs import sha256_file

REPO = Path(__file__).resolve().parents[1]
EXTRA_WORDS = ["what", "who", "the", "is", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "."]


@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    yield
    paddle.disable_static()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny 'fine-tuned' SQuAD checkpoint (random weights with a QA head), its vocab and a SQuAD file."""
    import program as P
    from modeling import BertConfig
    from utils.weights import save_params

    root = tmp_path_factory.mktemp("inference")
    words = sorted({w for c, qas in PARAGRAPHS for t in [c] + [q for _, q, _ in qas] for w in t.split()}
                   | set(EXTRA_WORDS))
    (root / "vocab.txt").write_text("\n".join(SPECIAL + words) + "\n")
    cfg = BertConfig.from_dict(dict(TINY, vocab_size=len(SPECIAL) + len(words)))
    longer = [(" ".join([c] * k), [(f"{qid}-{k}", q, a) for qid, q, a in qas]) for c, qas in PARAGRAPHS
              for k in (1, 2, 3)]  # three lengths of each context, so windows differ in length
    (root / "dev.json").write_text(json.dumps(squad_json(longer)))
    paddle.enable_static()
    bundle = P.build_squad(cfg, P.TrainConfig(seed=11), is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        save_params(bundle.main_program, str(root / "ckpt"), "bert_paddle", cfg)
    paddle.disable_static()
    return root, cfg


def export_args(root, out, *extra):
    return ["--checkpoint", str(root / "ckpt"), "--output-dir", str(out), "--vocab-file", str(root / "vocab.txt"),
            "--do-lower-case", "--bert-model", "custom", "--max-seq-length", "32", "--doc-stride", "16",
            "--max-query-length", "12", *extra]


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    from inference import export

    root, _ = model
    out = tmp_path_factory.mktemp("exp") / "export"
    manifest = export.main(export_args(root, out))
    paddle.disable_static()
    return out, manifest


def test_export_logs_the_number_of_files_it_wrote(model, tmp_path, caplog):
    """Issue 24 item 9: the log said (5 files) for a directory of 6 (the manifest does not list itself)."""
    import logging
    from inference import export

    root, _ = model
    out = tmp_path / "export"
    with caplog.at_level(logging.INFO, logger="inference.export"):
        export.main(export_args(root, out))
    written = sum(1 for path in out.rglob("*") if path.is_file())
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().endswith(" files)")]
    assert line.endswith(f"({written} files)"), (line, sorted(p.name for p in out.iterdir()))


def _features(root):
    from data.features.squad import FeatureParams, load_or_build_features

    return load_or_build_features(str(root / "dev.json"), str(root / "vocab.txt"), True, FeatureParams(32, 16, 12),
                                  is_training=False)


def _executor_logits(root, cfg, features):
    """Today's path: the eval program in the static executor (tasks.squad.predict_logits)."""
    import program as P
    from tasks.squad import predict_logits
    from utils.weights import init_parameters

    paddle.enable_static()
    bundle = P.build_squad(cfg, P.TrainConfig(), is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        init_parameters(exe, bundle.main_program, str(root / "ckpt"), require_head=True,
                        vocab_size=cfg.vocab_size)
        start, end, _ = predict_logits(exe, bundle.eval_program, bundle.eval_fetches, features, 4)
    paddle.disable_static()
    return start, end


def test_export_writes_a_verified_self_contained_directory(exported, model):
    from inference import model_dir as layout

    out, manifest = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(layout.REQUIRED_FILES + (layout.MANIFEST_FILE,))
    assert 0 <= manifest["verified_max_abs_logit_diff"] < 1e-4
    assert manifest["source_checkpoint"]["weights"]["bert_paddle.pdparams"] == sha256_file(
        model[0] / "ckpt" / "bert_paddle.pdparams")
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(out / name)
    assert manifest["paddle_version"] == paddle.__version__
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["max_seq_length"], settings["doc_stride"], settings["max_query_length"]) == (32, 16, 12)
    assert (out / "vocab.txt").read_bytes() == (model[0] / "vocab.txt").read_bytes()


def test_export_records_the_vocab_hash_and_loading_refuses_a_permuted_vocab(exported, model, tmp_path):
    """The manifest names the vocab's SHA-256 (as pretraining checkpoints record it); the per-file SHA-256
    check of `read_manifest` is what refuses an exported vocab with two lines swapped (same size)."""
    from inference import model_dir as layout
    from inference.predictor import QAPredictor
    from utils.checkpoint import vocab_sha256

    out, manifest = exported
    assert manifest["vocab_sha256"] == vocab_sha256(model[0] / "vocab.txt") == manifest["files"]["vocab.txt"]["sha256"]
    changed = tmp_path / "changed"
    shutil.copytree(out, changed)
    lines = (changed / layout.VOCAB_FILE).read_text().splitlines()
    lines[10], lines[11] = lines[11], lines[10]
    (changed / layout.VOCAB_FILE).write_text("\n".join(lines) + "\n")
    assert (changed / layout.VOCAB_FILE).stat().st_size == (out / layout.VOCAB_FILE).stat().st_size
    with pytest.raises(ValueError, match="vocab.txt' does not match manifest.json"):
        QAPredictor.load(str(changed))


def test_predictor_logits_equal_the_training_program_and_bucketing_changes_nothing(exported, model):
    from inference.predictor import QAPredictor
    from tasks.squad_postprocess import postprocess_predictions

    root, cfg = model
    examples, features = _features(root)
    assert len(set(features.seq_lengths.tolist())) > 3  # several lengths, so buckets differ
    want_start, want_end = _executor_logits(root, cfg, features)
    predictor = QAPredictor.load(str(exported[0]), precision="fp32", threads=1, batch_size=4)  # executor parity
    predictor.bucket_multiple = 4  # windows here are 15-32 tokens: finer buckets than the default 16
    bucketed = predictor.predict_logits(features, bucket=True)
    plain = predictor.predict_logits(features, bucket=False)
    real = features.input_mask() > 0
    for got in (bucketed, plain):
        np.testing.assert_allclose(got[0][real], want_start[real], atol=1e-5)
        np.testing.assert_allclose(got[1][real], want_end[real], atol=1e-5)
    np.testing.assert_allclose(bucketed[0][real], plain[0][real], atol=1e-5)
    assert bucketed[2]["padded_tokens"] < plain[2]["padded_tokens"] == len(features) * 32
    assert bucketed[2]["real_tokens"] == int(features.seq_lengths.sum())
    preds = [postprocess_predictions(examples, features, s, e)[0] for s, e, _ in (bucketed, plain)]
    assert preds[0] == preds[1] == postprocess_predictions(examples, features, want_start, want_end)[0]
    # Past a window's real length every position holds PAD_LOGIT, however the batch was padded: the
    # logits (so the scores) of a window do not depend on its batch (found by the server's tests).
    from inference.predictor import PAD_LOGIT
    for got in (bucketed, plain):
        assert (got[0][~real] == PAD_LOGIT).all() and (got[1][~real] == PAD_LOGIT).all()
    one_by_one = predictor.predict_logits(features, batch_size=1, bucket=True)
    np.testing.assert_array_equal(one_by_one[0][~real], bucketed[0][~real])
    np.testing.assert_allclose(one_by_one[0], bucketed[0], atol=1e-5)


def test_answers_carry_character_offsets_into_the_context(exported):
    from inference.predictor import QAPredictor

    predictor = QAPredictor.load(str(exported[0]), precision="fp32", threads=1)
    context = "the  quick brown\tfox\n jumps over the lazy dog ."  # irregular whitespace on purpose
    answers = predictor.answer([("what jumps ?", context), ("who is lazy ?", "the dog is lazy .")], n_best=4)
    assert len(answers) == 2
    for answer, ctx in zip(answers, (context, "the dog is lazy .")):
        assert answer.text and ctx[answer.start:answer.end] == answer.text
        assert answer.nbest[0]["text"] == answer.text and len(answer.nbest) == 4
        assert all(ctx[e["start"]:e["end"]] == e["text"] for e in answer.nbest)
        probabilities = [e["probability"] for e in answer.nbest]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < answer.score <= 1
    assert predictor.info["max_seq_length"] == 32 and predictor.info["precision"] == "fp32"
    with pytest.raises(ValueError, match="item 1: the context is empty"):
        predictor.answer([("what ?", "a b"), ("what ?", "  \n")])


def test_word_offsets_map_back_through_irregular_whitespace():
    from inference.predictor import _context_span, _word_starts

    context = " ab  cd\n\nef g"
    words = ("ab", "cd", "ef", "g")
    starts = _word_starts(context, len(words))
    assert list(starts) == [1, 5, 9, 12]
    # " ".join(words) = "ab cd ef g": "cd ef" is [3, 8), "b" is [1, 2), "g" is [9, 10)
    assert _context_span(words, starts, 3, 8) == (5, 11) and context[5:11] == "cd\n\nef"
    assert _context_span(words, starts, 1, 2) == (2, 3) and _context_span(words, starts, 9, 10) == (12, 13)
    assert _context_span(words, starts, 0, 0) == (0, 0)


def _em(root, out, examples, features, precision):
    from inference.predictor import QAPredictor
    from tasks import squad_metrics
    from tasks.squad_postprocess import postprocess_predictions

    start, end, _ = QAPredictor.load(str(out), precision=precision).predict_logits(features)
    return squad_metrics.evaluate_v1(str(root / "dev.json"), postprocess_predictions(examples, features, start,
                                                                                      end)[0])["exact_match"]


def test_int8_copy_and_bf16_report_their_accuracy_change(model, tmp_path):
    from inference import export
    from inference.precision_auto import RECORDS_KEY
    from inference.predictor import QAPredictor
    from utils.runtime import cpu_bf16_support

    root, _ = model
    out = tmp_path / "export8"
    manifest = export.main(export_args(root, out, "--int8-calibration-file", str(root / "dev.json"),
                                       "--calibration-windows", "16", "--eval-file", str(root / "dev.json")))
    paddle.disable_static()
    assert manifest["int8"]["calibration_windows"] == 16
    assert {"model_int8.pdmodel", "model_int8.pdiparams"} <= set(manifest["files"])
    shipped = {"int8"} | ({"bf16"} if cpu_bf16_support().usable else set())
    assert set(manifest[RECORDS_KEY]) == shipped
    examples, features = _features(root)
    fp32_em = _em(root, out, examples, features, "fp32")  # computed independently here
    for precision in shipped:
        record = manifest[RECORDS_KEY][precision]["squad"]
        assert record["questions"] == 18 and record["fp32"]["exact_match"] == pytest.approx(fp32_em)
        assert record[precision]["exact_match"] == pytest.approx(_em(root, out, examples, features, precision))
        assert record["delta_exact_match"] == pytest.approx(record[precision]["exact_match"] - fp32_em)
        assert record["delta_F1"] == pytest.approx(record[precision]["F1"] - record["fp32"]["F1"])
        assert f"delta {record['delta_exact_match']:+.2f}/{record['delta_F1']:+.2f}" in record["summary"]
        assert manifest[RECORDS_KEY][precision]["verification"]["windows"] == 16
    int8 = QAPredictor.load(str(out), precision="int8")
    assert int8.info["precision"] == "int8" and int8.answer([("what color is the sky ?", PARAGRAPHS[0][0])])


def test_run_squad_predicts_through_the_export_with_unchanged_scores(exported, model, tmp_path):
    import run_squad
    from tasks.squad_postprocess import postprocess_predictions
    from tasks import squad_metrics

    root, cfg = model
    common = ["--vocab-file", str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
              "--device", "cpu", "--max-seq-length", "32", "--doc-stride", "16", "--max-query-length", "12",
              "--show-config", "false", "--mode", "eval", "--predict-file", str(root / "dev.json")]
    from_ckpt = run_squad.main(common + ["--from-checkpoint", str(root / "ckpt"), "--output-dir", str(tmp_path / "a")])
    from_export = run_squad.main(common + ["--from-checkpoint", str(exported[0]), "--output-dir", str(tmp_path / "b")])
    examples, features = _features(root)
    start, end = _executor_logits(root, cfg, features)
    executor_preds = postprocess_predictions(examples, features, start, end)[0]
    want = squad_metrics.evaluate_v1(str(root / "dev.json"), executor_preds)
    for results in (from_ckpt, from_export):
        assert results["predictions"] == executor_preds
        assert results["exact_match"] == want["exact_match"] and results["F1"] == want["f1"]


def _run(module_or_script, *argv):
    cmd = [sys.executable] + (["-m", module_or_script] if not module_or_script.endswith(".py") else
                              [str(REPO / module_or_script)]) + list(argv)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_changed_or_bad_export_dirs_fail_in_one_line(exported, model, tmp_path):
    from inference.predictor import QAPredictor

    root, _ = model
    damaged = tmp_path / "damaged"
    shutil.copytree(exported[0], damaged)
    with open(damaged / "model.pdiparams", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="model.pdiparams' does not match manifest.json"):
        QAPredictor.load(str(damaged))
    with pytest.raises(ValueError, match="has no manifest.json: not an exported model"):
        QAPredictor.load(str(root / "ckpt"))
    with pytest.raises(ValueError, match="has no int8 model"):
        QAPredictor.load(str(exported[0]), precision="int8")
    proc = _run("run_squad.py", "--vocab-file", str(root / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
                "--device", "cpu", "--output-dir", str(tmp_path / "o"), "--from-checkpoint", str(damaged),
                "--question", "who ?", "--context", "tom has a car .")
    assert proc.returncode == 2 and len(_error_lines(proc)) == 1, proc.stderr[-2000:]
    assert "does not match manifest.json" in _error_lines(proc)[0]
    proc = _run("inference.export", *export_args(root, exported[0]))  # exists, no --overwrite
    assert proc.returncode == 2 and _error_lines(proc) == [
        f"error: --output-dir '{exported[0]}' already exists; remove it or add --overwrite"]
    from inference import export

    args = export_args(root, tmp_path / "new")
    args[1] = str(tmp_path / "nothing")
    with pytest.raises(ValueError, match="--checkpoint '.*nothing' does not exist"):
        export.main(args)
    assert not (tmp_path / "new").exists()


def test_a_failed_parity_check_writes_nothing(model, tmp_path, monkeypatch):
    from inference import export, verified_export

    root, _ = model
    monkeypatch.setattr(verified_export, "max_logit_difference", lambda *a, **k: 0.5)
    with pytest.raises(ValueError, match="differ from the training program's by 0.5"):
        export.main(export_args(root, tmp_path / "bad"))
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())


def test_pickled_checkpoint_without_qa_head_is_refused(model, tmp_path):
    from inference import export

    root, _ = model
    state = pickle.loads((root / "ckpt" / "bert_paddle.pdparams").read_bytes())
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "bert_paddle.pdparams").write_bytes(
        pickle.dumps({k: v for k, v in state.items() if not k.startswith("qa_outputs")}))
    (tmp_path / "enc" / "bert_config.json").write_text((root / "ckpt" / "bert_config.json").read_text())
    args = export_args(root, tmp_path / "out")
    args[1] = str(tmp_path / "enc")
    with pytest.raises(ValueError, match="has no SQuAD answer head"):
        export.main(args)
    assert not (tmp_path / "out").exists()
