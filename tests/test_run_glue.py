"""run_glue.py and its pieces on a tiny BERT: the classification and regression heads' losses against numpy,
the Hugging Face round trip of a fine-tuned classifier, the script as a user runs it (train_eval + prediction
writes a valid submission file; bad flags give one error line and exit 2) and the mode words."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import program as P
from modeling import BertConfig
from tasks import glue_metrics

REPO = Path(__file__).resolve().parents[1]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "is", "red", "blue", "."]
TINY = {"attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 16,
        "initializer_range": 0.02, "intermediate_size": 32, "max_position_embeddings": 32, "num_attention_heads": 2,
        "num_hidden_layers": 1, "type_vocab_size": 2, "vocab_size": len(SPECIAL) + len(WORDS)}
HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
# label 1 when the two sentences are equal: learnable from the pair in a few dozen updates
PAIRS = [("the cat sat on the mat .", "the cat sat on the mat ."), ("a dog ran in the park .", "the mat is red .")] * 6


@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    yield
    paddle.disable_static()


def tiny_cfg():
    return BertConfig.from_dict(TINY)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Vocab, tiny config, an MRPC-layout task directory and an encoder-only pretrained .pdparams."""
    root = tmp_path_factory.mktemp("glue")
    (root / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    (root / "tiny.json").write_text(json.dumps(TINY))
    mrpc = root / "MRPC"
    mrpc.mkdir()
    rows = [f"{int(a == b)}\t{i}\t{i + 100}\t{a}\t{b}" for i, (a, b) in enumerate(PAIRS)]
    (mrpc / "train.tsv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    (mrpc / "dev.tsv").write_text(HEADER + "\n".join(rows[:4]) + "\n", encoding="utf-8")
    test = [f"{i}\t{i}\t{i + 100}\t{a}\t{b}" for i, (a, b) in enumerate(PAIRS[:3])]
    (mrpc / "test.tsv").write_text("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "\n".join(test) + "\n")
    paddle.enable_static()
    bundle = P.build_glue(tiny_cfg(), P.TrainConfig(seed=7), 2, is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        scope = paddle.static.global_scope()
        state = {p.name: np.array(scope.find_var(p.name).get_tensor())
                 for p in bundle.main_program.all_parameters() if not p.name.startswith("classifier")}
    (root / "pretrained").mkdir()
    (root / "pretrained" / "bert_paddle.pdparams").write_bytes(pickle.dumps(state))
    paddle.disable_static()
    return root


def _feed(rng, batch=4, length=6, regression=False):
    feed = {"input_ids": rng.integers(5, TINY["vocab_size"], (batch, length)).astype(np.int64),
            "token_type_ids": np.zeros((batch, length), np.int64),
            "attention_mask": np.ones((batch, 1, 1, length), np.int64)}
    feed["labels"] = (rng.uniform(0, 5, (batch, 1)).astype(np.float32) if regression
                      else rng.integers(0, 3, (batch, 1)).astype(np.int64))
    return feed


@pytest.mark.parametrize("num_labels", [3, 1])
def test_head_loss_equals_numpy_on_its_logits(static_graph, num_labels):
    bundle = P.build_glue(tiny_cfg(), P.TrainConfig(optimizer="AdamW", seed=3), num_labels)
    assert [p.name for p in bundle.main_program.all_parameters() if p.name.startswith("classifier")] == [
        "classifier.weight", "classifier.bias"]
    feed = _feed(np.random.default_rng(0), regression=num_labels == 1)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        (eval_logits,) = exe.run(bundle.eval_program, feed={k: v for k, v in feed.items() if k != "labels"},
                                 fetch_list=[bundle.eval_fetches["logits"].name])
        loss, logits = exe.run(bundle.main_program, feed=feed,
                               fetch_list=[bundle.fetches["loss"], bundle.fetches["logits"]])
    assert logits.shape == (4, num_labels)
    np.testing.assert_allclose(eval_logits, logits, rtol=1e-5, atol=1e-6)  # no dropout: the same forward
    expected = glue_metrics.mean_loss(logits, feed["labels"].reshape(-1))
    assert float(np.asarray(loss).reshape(-1)[0]) == pytest.approx(expected, rel=1e-5)
    if num_labels == 1:  # MSE by hand as well
        assert expected == pytest.approx(float(np.mean((logits[:, 0] - feed["labels"][:, 0]) ** 2)), rel=1e-6)


def test_hf_round_trip_of_a_classifier(static_graph, tmp_path):
    from safetensors.numpy import save_file
    from utils import hf_import, weights

    cfg = tiny_cfg()
    bundle = P.build_glue(cfg, P.TrainConfig(seed=11), 3, is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        scope = paddle.static.global_scope()
        ours = {p.name: np.array(scope.find_var(p.name).get_tensor()) for p in bundle.main_program.all_parameters()}
    hf = hf_import.to_hf_state(ours, cfg.vocab_size)
    assert hf["classifier.weight"].shape == (3, 16) and hf["bert.pooler.dense.weight"].shape == (16, 16)
    assert hf["bert.embeddings.word_embeddings.weight"].shape == (cfg.vocab_size, 16)
    np.testing.assert_array_equal(hf["classifier.weight"], ours["classifier.weight"].T)
    save_file(hf, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY, model_type="bert",
                                                          architectures=["BertForSequenceClassification"])))
    fresh = P.build_glue(cfg, P.TrainConfig(seed=12), 3, is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(fresh.startup_program)
        sources = weights.load_hf_pretrained(exe, fresh.main_program, str(tmp_path), vocab_size=cfg.vocab_size)
        scope = paddle.static.global_scope()
        loaded = {n: np.array(scope.find_var(n).get_tensor()) for n in ours}
    assert "NEWLY" not in sources["classifier.weight"]
    for name, value in ours.items():
        if name == "bert.embeddings.word_embeddings.weight":  # padding rows: never looked up, imported as zeros
            assert not loaded[name][cfg.vocab_size:].any()
            loaded[name], value = loaded[name][:cfg.vocab_size], value[:cfg.vocab_size]
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def _run(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "run_glue.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _base(data, out, *extra):
    return ["--task-name", "mrpc", "--data-dir", str(data / "MRPC"), "--vocab-file", str(data / "vocab.txt"),
            "--do-lower-case", "--bert-model", "custom", "--output-dir", str(out), "--device", "cpu",
            "--max-seq-length", "24", "--show-config", "false", *extra]


def test_train_eval_prediction_as_a_user_runs_it(data, tmp_path):
    out = tmp_path / "out"
    proc = _run(*_base(data, out, "--config-file", str(data / "tiny.json"), "--from-pretrained-params",
                       str(data / "pretrained"), "--mode", "train eval prediction", "--epochs", "8",
                       "--train-batch-size", "4", "--learning-rate", "1e-2", "--warmup-proportion", "0.1",
                       "--log-freq", "10"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = out / "custom" / "glue" / "MRPC"
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["task"] == "MRPC" and results["acc"] == 1.0 and results["f1"] == 1.0  # memorised the pairs
    assert {"bert_paddle.pdparams", "bert_config.json", "report.json", "MRPC.tsv"} <= set(os.listdir(run_dir))
    lines = (run_dir / "MRPC.tsv").read_text().splitlines()
    assert lines == ["index\tprediction", "0\t1", "1\t0", "2\t1"]  # GLUE's format, label strings
    report = [json.loads(line[len("DLLL "):]) for line in (run_dir / "report.json").read_text().splitlines()]
    summary = {k: v for r in report if r.get("step") == [] for k, v in r["data"].items()}
    for key in ("e2e_train_time", "training_sequences_per_second", "e2e_inference_time",
                "inference_sequences_per_second", "exact_match", "F1", "acc", "f1", "eval_loss"):
        assert key in summary, key
    assert summary["exact_match"] == pytest.approx(100.0)

    # the fine-tuned model evaluates again from --from-checkpoint, with its saved config (in-process: faster)
    import run_glue
    again = run_glue.main(_base(data, tmp_path / "again", "--from-checkpoint", str(run_dir), "--mode", "eval"))
    assert again["acc"] == 1.0 and again["eval_loss"] == pytest.approx(results["eval_loss"], rel=1e-4)
    # Issue 14 item 6: without --bert-model the outputs are named after the checkpoint's own config.
    argv = _base(data, tmp_path / "named", "--from-checkpoint", str(run_dir), "--mode", "eval")
    del argv[argv.index("--bert-model"):argv.index("--bert-model") + 2]
    run_glue.main(argv)
    assert (tmp_path / "named" / "custom" / "glue" / "MRPC" / "eval_results.json").is_file()
    assert not (tmp_path / "named" / "bert-large-uncased").exists()


@pytest.mark.parametrize("extra, message", [
    (["--task-name", "squad"], "--task-name 'squad' is not a GLUE task"),
    (["--mode", "train_predict_x"], "argument --mode: expected train, eval, prediction"),
    (["--from-pretrained-params", "/nonexistent/ckpt"], "--from-pretrained-params '/nonexistent/ckpt' does not exist"),
    (["--data-dir", "/nonexistent"], "--data-dir '/nonexistent' does not exist"),
])
def test_bad_flags_are_one_error_line_and_exit_2(data, tmp_path, capsys, extra, message):
    import run_glue

    args = _base(data, tmp_path / "out", "--config-file", str(data / "tiny.json"), "--mode", "train_eval",
                 "--from-pretrained-params", str(data / "pretrained")) + extra  # the later value wins
    assert run_glue.cli(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_bad_flag_as_a_user_runs_it(data, tmp_path):
    proc = _run(*_base(data, tmp_path / "out", "--mode", "train", "--from-pretrained-params",
                       str(data / "pretrained"), "--warmup-proportion", "2"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: --warmup-proportion must be in [0, 1], got 2.0"
    assert not (tmp_path / "out").exists()


def test_malformed_row_and_missing_split_stop_before_any_output(data, tmp_path):
    import run_glue

    bad = tmp_path / "MRPC"
    bad.mkdir()
    (bad / "train.tsv").write_text(HEADER + "1\t1\t2\tonly one sentence\n", encoding="utf-8")
    (bad / "dev.tsv").write_text((data / "MRPC" / "dev.tsv").read_text(encoding="utf-8"), encoding="utf-8")
    args = ["--task-name", "MRPC", "--data-dir", str(bad), "--vocab-file", str(data / "vocab.txt"), "--do-lower-case",
            "--bert-model", "custom", "--config-file", str(data / "tiny.json"), "--output-dir", str(tmp_path / "o"),
            "--from-pretrained-params", str(data / "pretrained"), "--device", "cpu", "--show-config", "false",
            "--max-seq-length", "24"]
    with pytest.raises(ValueError, match=r"train\.tsv:2: 4 tab-separated columns"):
        run_glue.main(args + ["--mode", "train"])
    with pytest.raises(ValueError, match="has no test.tsv, which MRPC prediction needs"):
        run_glue.main(args + ["--mode", "prediction"])
    assert not (tmp_path / "o").exists()


def test_dev_copied_over_test_is_one_error_line_and_no_submission(data, tmp_path, capsys):
    # Issue 20 item 11: the submission's index column was dev's 0/1 labels.
    import run_glue

    copy = tmp_path / "MRPC"
    copy.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (copy / name).write_bytes((data / "MRPC" / name).read_bytes())
    (copy / "test.tsv").write_bytes((data / "MRPC" / "dev.tsv").read_bytes())
    args = _base(data, tmp_path / "o", "--config-file", str(data / "tiny.json"), "--from-pretrained-params",
                 str(data / "pretrained"), "--mode", "prediction")
    args[args.index("--data-dir") + 1] = str(copy)
    assert run_glue.cli(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{copy / 'test.tsv'}:1: expected the MRPC test header" in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_mode_words():
    import run_glue

    assert run_glue._mode("train eval") == run_glue._mode("eval_train") == "train_eval"
    assert run_glue._mode("train eval prediction") == "train_eval_prediction"
    assert run_glue._mode("predict") == "prediction"
    for bad in ("", "train train", "test"):
        with pytest.raises(Exception, match="expected train, eval, prediction"):
            run_glue._mode(bad)


@pytest.mark.parametrize("task", ["MNLI", "STS-B"])
def test_mnli_and_stsb_runs_write_their_metrics_and_submission_files(data, tmp_path, task, caplog):
    import run_glue
    from test_glue_features import FIXTURES, write_task

    task_dir = write_task(tmp_path, task)
    results = run_glue.main(_base(data, tmp_path / "out", "--task-name", task, "--data-dir", str(task_dir),
                                  "--config-file", str(data / "tiny.json"), "--from-pretrained-params",
                                  str(data / "pretrained"), "--mode", "train_eval_prediction", "--max-steps", "2",
                                  "--train-batch-size", "1"))
    run_dir = tmp_path / "out" / "custom" / "glue" / task
    if task == "MNLI":
        assert {"acc", "mm_acc", "exact_match", "eval_loss", "mm_eval_loss"} <= set(results)
        names = ["MNLI-m.tsv", "MNLI-mm.tsv"]
    else:  # regression: correlations (NaN on a one-row dev set), no accuracy key
        assert {"pearson", "spearmanr", "corr", "eval_loss"} <= set(results) and "exact_match" not in results
        names = ["STS-B.tsv"]
        # Issue 20 item 17: the undefined correlations are null in strict JSON, and the log says why.
        def no_constants(word):
            raise AssertionError(f"eval_results.json holds the non-JSON literal {word}")
        written = json.loads((run_dir / "eval_results.json").read_text(), parse_constant=no_constants)
        assert written["pearson"] is written["spearmanr"] is written["corr"] is None
        assert written["eval_loss"] == pytest.approx(results["eval_loss"])
        assert ("STS-B: corr, pearson, spearmanr undefined (gold scores and predictions constant over 1 rows): "
                "written as null") in caplog.text
    assert results["submission_files"] == [str(run_dir / n) for n in names]
    for name in names:
        header, row = (run_dir / name).read_text().splitlines()
        index, prediction = row.split("\t")
        assert header == "index\tprediction" and index == "0"
        if task == "MNLI":
            assert prediction in ("contradiction", "entailment", "neutral")
        else:
            assert 0.0 <= float(prediction) <= 5.0
    assert len(FIXTURES[task]) == 3 + (task == "MNLI") * 2
