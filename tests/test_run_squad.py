"""run_squad.py end to end on a tiny BERT and hand-made SQuAD files: training, evaluation, single questions,
every validation error, and the script run as a user runs it (a subprocess)."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

import run_squad
from lr_scheduler import lr_at
from utils.report import final_summary, read_dllogger_report

REPO = Path(__file__).resolve().parents[1]
# (context, [(question id, question, answer)]): answers are whole words, so EM is all or nothing. One
# question per context keeps memorising them within a few dozen updates of a random tiny encoder.
PARAGRAPHS = [
    ("the sky is blue today .", [("q1", "what color is the sky ?", "blue")]),
    ("paris is the capital of france .", [("q2", "what is the capital of france ?", "paris")]),
    ("tom has a red car .", [("q3", "who has a red car ?", "tom")]),
    ("the grass in the garden is green .", [("q4", "what color is the grass ?", "green")]),
    ("anna rides a bike to school .", [("q5", "what does anna ride ?", "a bike")]),
    ("the meeting starts at noon on monday .", [("q6", "when does the meeting start ?", "at noon")]),
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = {"attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
        "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 64,
        "num_attention_heads": 2, "num_hidden_layers": 2, "type_vocab_size": 2}


@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    """run_squad.main switches Paddle to static mode (as the script does); later test files expect dygraph."""
    yield
    paddle.disable_static()


def squad_json(paragraphs, impossible=()):
    """SQuAD v1.1 (or, with `impossible` ids, v2.0) JSON with correct answer offsets."""
    paras = []
    for context, qas in paragraphs:
        entries = []
        for qid, question, answer in qas:
            entry = {"id": qid, "question": question,
                     "answers": [] if qid in impossible else [{"text": answer, "answer_start": context.find(answer)}]}
            if impossible:
                entry["is_impossible"] = qid in impossible
            entries.append(entry)
        paras.append({"context": context, "qas": entries})
    return {"version": "2.0" if impossible else "1.1", "data": [{"title": "t", "paragraphs": paras}]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Vocab, tiny config, SQuAD files and an encoder-only pretrained .pdparams (our checkpoint format)."""
    root = tmp_path_factory.mktemp("squad")
    words = sorted({w for context, qas in PARAGRAPHS for text in [context] + [q for _, q, _ in qas]
                    for w in text.split()} | {"what", "who"})
    (root / "vocab.txt").write_text("\n".join(SPECIAL + words) + "\n")
    (root / "tiny.json").write_text(json.dumps(dict(TINY, vocab_size=len(SPECIAL) + len(words))))
    (root / "train.json").write_text(json.dumps(squad_json(PARAGRAPHS)))
    (root / "v2.json").write_text(json.dumps(squad_json(PARAGRAPHS, impossible={"q2", "q6"})))
    (root / "pretrained").mkdir()
    _write_encoder_params(root / "tiny.json", root / "pretrained" / "bert_paddle.pdparams")
    return root


def _write_encoder_params(config_file, path):
    """A 'pretrained' checkpoint: freshly initialised encoder parameters without the QA head."""
    import program as P
    from modeling import BertConfig

    paddle.enable_static()
    bundle = P.build_squad(BertConfig.from_json_file(config_file), P.TrainConfig(seed=7), is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        scope = paddle.static.global_scope()
        state = {p.name: np.array(scope.find_var(p.name).get_tensor())
                 for p in bundle.main_program.all_parameters() if not p.name.startswith("qa_outputs")}
    path.write_bytes(pickle.dumps(state))


def base_args(data, out, *extra):
    return ["--vocab-file", str(data / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
            "--output-dir", str(out), "--report-file", str(out / "report.json"), "--device", "cpu",
            "--max-seq-length", "32", "--doc-stride", "16", "--max-query-length", "12", "--show-config", "false",
            *extra]


def train_args(data, out, *extra):
    return base_args(data, out, "--config-file", str(data / "tiny.json"),
                     "--from-pretrained-params", str(data / "pretrained"), "--train-file", str(data / "train.json"),
                     "--learning-rate", "3e-3", "--warmup-proportion", "0.2", "--train-batch-size", "3",
                     "--log-freq", "1", *extra)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One train_eval run that memorises the six questions; several tests inspect it."""
    out = tmp_path_factory.mktemp("run")
    results = run_squad.main(train_args(data, out, "--mode", "train_eval", "--epochs", "30",
                                        "--predict-file", str(data / "train.json")))
    return out, results


def test_train_eval_learns_saves_and_reports(trained):
    out, results = trained
    losses = results["losses"]
    assert results["updates"] == len(losses) == 60  # 6 windows / batch 3 = 2 updates per epoch, 30 epochs
    assert np.mean(losses[-5:]) < 0.25 * np.mean(losses[:5])
    squad_dir = out / "custom" / "squad"
    assert results["params_file"] == str(squad_dir / "bert_paddle.pdparams")
    for name in ("bert_paddle.pdparams", "bert_config.json", "predictions.json", "nbest_predictions.json"):
        assert (squad_dir / name).is_file()
    assert not (squad_dir / "null_odds.json").exists()
    assert not [p for p in os.listdir(squad_dir) if ".tmp" in p]
    predictions = json.loads((squad_dir / "predictions.json").read_text())
    assert predictions == results["predictions"]
    gold = {qid: answer for _, qas in PARAGRAPHS for qid, _, answer in qas}
    assert sum(predictions[q] == a for q, a in gold.items()) >= 5
    assert results["exact_match"] >= 80 and results["F1"] >= results["exact_match"]
    summary = final_summary(read_dllogger_report(out / "report.json"))
    for key in ("e2e_train_time", "training_sequences_per_second", "final_loss", "e2e_inference_time",
                "inference_sequences_per_second", "exact_match", "F1"):
        assert key in summary
    assert summary["F1"] == pytest.approx(results["F1"])
    plain = json.loads((out / "results.json").read_text())  # issue 14: a results.json beside the report
    assert plain["F1"] == results["F1"] and plain["exact_match"] == results["exact_match"]
    assert "losses" not in plain and "predictions" not in plain


def test_learning_rate_warms_up_then_decays_linearly(trained):
    out, _ = trained
    logged = {tuple(r["step"]): r["data"]["learning_rate"] for r in read_dllogger_report(out / "report.json")
              if r.get("type") == "LOG" and isinstance(r["step"], list) and r["step"]}
    assert len(logged) == 60 and logged[(0, 1)] == 0.0
    for (epoch, step), lr in logged.items():
        assert epoch == (step - 1) // 2
        # 20 % of 60 updates warm up; the value logged at update s is the one update s used.
        assert lr == pytest.approx(lr_at(step - 1, base_lr=3e-3, warmup_start_lr=0.0, warmup_steps=12,
                                         total_steps=60))
    assert max(logged.values()) == pytest.approx(3e-3) and logged[(5, 12)] < logged[(6, 13)]


def test_eval_from_the_fine_tuned_checkpoint_reproduces_predictions(trained, data, tmp_path):
    out, results = trained
    again = run_squad.main(base_args(data, tmp_path, "--mode", "eval", "--from-checkpoint",
                                     str(out / "custom" / "squad"), "--predict-file", str(data / "train.json")))
    assert again["predictions"] == results["predictions"]
    assert again["exact_match"] == results["exact_match"] and "losses" not in again
    assert (tmp_path / "custom" / "squad" / "predictions.json").is_file()
    assert not (tmp_path / "custom" / "squad" / "bert_paddle.pdparams").exists()


def test_model_name_comes_from_the_checkpoint_config_without_bert_model(trained, data, tmp_path):
    """Issue 14 item 6: a custom fine-tuned model evaluated without --bert-model was filed under (and logged
    as) bert-large-uncased although its own bert_config.json was read."""
    out, results = trained
    argv = base_args(data, tmp_path, "--mode", "eval", "--from-checkpoint", str(out / "custom" / "squad"),
                     "--predict-file", str(data / "train.json"))
    i = argv.index("--bert-model")
    del argv[i:i + 2]
    argv[argv.index("--show-config") + 1] = "true"
    again = run_squad.main(argv)
    assert again["exact_match"] == results["exact_match"]
    assert (tmp_path / "custom" / "squad" / "predictions.json").is_file()
    assert not (tmp_path / "bert-large-uncased").exists()
    params = [r["data"] for r in read_dllogger_report(tmp_path / "report.json") if r.get("step") == "PARAMETER"]
    assert params and params[0]["bert_model"] == "custom"


def test_known_model_name_matches_bert_configs_exactly():
    from tasks.flags import CONFIG_DIR, known_model_name
    tiny = json.loads((Path(CONFIG_DIR) / "bert-tiny.json").read_text())
    assert known_model_name(tiny) == "bert-tiny"
    assert known_model_name(dict(tiny, layer_norm_eps=1e-12, extra="ignored")) == "bert-tiny"
    assert known_model_name(dict(tiny, num_hidden_layers=3)) == "custom"
    base = json.loads((Path(CONFIG_DIR) / "bert-base-cased.json").read_text())
    assert known_model_name(base) == "bert-base-cased"
    assert known_model_name(dict(base, vocab_size=30522)) == "bert-base-uncased"
    assert known_model_name(dict(tiny, vocab_size=8192)) == "bert-tiny"  # its own vocab, one such architecture
    assert known_model_name(dict(base, vocab_size=8192)) == "custom"  # cased or uncased: cannot tell


def test_report_defaults_to_the_squad_output_dir(trained, data, tmp_path, monkeypatch):
    """Issue 14 item 5: without --report-file the report went to ./report.json of the current directory."""
    out, _ = trained
    monkeypatch.chdir(tmp_path)
    args = base_args(data, tmp_path / "o", "--mode", "eval", "--from-checkpoint", str(out / "custom" / "squad"),
                     "--predict-file", str(data / "train.json"))
    del args[args.index("--report-file"):args.index("--report-file") + 2]
    results = run_squad.main(args)
    from utils.report import read_dllogger_report
    records = read_dllogger_report(tmp_path / "o" / "custom" / "squad" / "report.json")
    assert any(r.get("data", {}).get("exact_match") == results["exact_match"] for r in records)
    assert not (tmp_path / "report.json").exists()


def test_bf16_inference_gives_the_same_answers(trained, data, tmp_path):
    if not paddle.base.core.supports_bfloat16():
        pytest.skip("this CPU has no bf16 support")
    out, results = trained
    low = run_squad.main(base_args(data, tmp_path, "--mode", "prediction", "--infer-dtype", "bfloat16",
                                   "--from-checkpoint", str(out / "custom" / "squad"),
                                   "--predict-file", str(data / "train.json")))
    agree = sum(low["predictions"][q] == a for q, a in results["predictions"].items())
    assert agree >= 5 and "exact_match" not in low


def test_single_question(trained, data, tmp_path, capsys):
    out, _ = trained
    result = run_squad.main(base_args(data, tmp_path, "--from-checkpoint", str(out / "custom" / "squad"),
                                      "--question", "what color is the grass ?",
                                      "--context", PARAGRAPHS[3][0], "--verbose-logging"))
    lines = capsys.readouterr().out.splitlines()
    assert result["answer"] == "green" and 0.3 < result["probability"] <= 1.0
    assert lines[0] == f"answer: green\tprobability: {result['probability']:.4f}"
    assert len(lines) == 1 + len(result["nbest"]) and lines[1].startswith('  1. "')
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "custom").exists()


def test_v2_gradient_merge_and_max_steps(data, tmp_path):
    results = run_squad.main(train_args(data, tmp_path, "--mode", "train_eval", "--version-2-with-negative",
                                        "--train-file", str(data / "v2.json"), "--predict-file",
                                        str(data / "v2.json"), "--epochs", "5", "--max-steps", "3",
                                        "--gradient-merge-steps", "2", "--train-batch-size", "2"))
    assert results["updates"] == 3 and results["micro_batches"] == 6  # capped by --max-steps
    squad_dir = tmp_path / "custom" / "squad"
    null_odds = json.loads((squad_dir / "null_odds.json").read_text())
    assert set(null_odds) == {f"q{i}" for i in range(1, 7)}
    assert {"HasAns_exact", "NoAns_exact", "best_f1"} <= set(results)


# ------------------------------------------------------------------------------------------ validation
ERROR_CASES = [
    (["--mode", "train"], "needs --train-file"),
    (["--mode", "eval"], "needs --predict-file"),
    (["--mode", "prediction", "--predict-file", "TRAIN", "--from-checkpoint", "PRE", "--from-pretrained-params",
      "PRE"], "exclusive"),
    (["--mode", "prediction", "--predict-file", "TRAIN", "--NOINIT"], "random initialisation"),
    (["--mode", "prediction", "--predict-file", "TRAIN", "--from-checkpoint", "/nonexistent/x"],
     "--from-checkpoint '/nonexistent/x' does not exist"),
    (["--mode", "prediction", "--predict-file", "/nonexistent.json"], "--predict-file '/nonexistent.json'"),
    (["--mode", "train", "--train-file", "TRAIN", "--NOLOWER"], "uncased but --do-lower-case is not set"),
    ([], "nothing to do"),
    (["--mode", "train_eval", "--question", "why ?", "--context", "x"], "do not combine"),
    (["--question", "why ?"], "exactly one of --context"),
    (["--mode", "eval", "--predict-file", "TRAIN", "--context", "x"], "need --question"),
    (["--mode", "train", "--train-file", "TRAIN", "--max-steps", "0"], "--max-steps must be -1"),
    (["--mode", "train", "--train-file", "TRAIN", "--warmup-proportion", "1.5"], "--warmup-proportion"),
    (["--mode", "train", "--train-file", "TRAIN", "--train-batch-size", "0"], "--train-batch-size must be > 0"),
    (["--mode", "train", "--train-file", "TRAIN", "--max-seq-length", "128"], "max_position_embeddings"),
    (["--mode", "train", "--train-file", "TRAIN", "--max-query-length", "40"],
     r"^--max-seq-length \(32\) must be greater than --max-query-length \+ 3 \(43\).*; raise --max-seq-length or "
     r"lower --max-query-length$"),
    (["--mode", "train", "--train-file", "TRAIN", "--amp"], "training needs --device gpu"),
    # optimizer values are named by their flags, not by the training config's field names
    (["--mode", "train", "--train-file", "TRAIN", "--beta1", "1.5"], r"^--beta1 must be in \[0, 1\), got 1.5$"),
    (["--mode", "train", "--train-file", "TRAIN", "--weight-decay", "-1"], r"^--weight-decay must be >= 0"),
    # a SQuAD 2.0 file scored as v1.1: refused before any work, not after training and prediction
    (["--mode", "eval", "--predict-file", "V2"], r"^--predict-file \S+v2.json: 2 of 6 questions have no gold answer "
                                                 r"\(q2, q6\).*--version-2-with-negative\)$"),
]


def _resolve(argv, data):
    out = []
    for a in argv:
        out.append({"TRAIN": str(data / "train.json"), "PRE": str(data / "pretrained"),
                    "V2": str(data / "v2.json")}.get(a, a))
    return out


@pytest.mark.parametrize("argv, message", ERROR_CASES)
def test_validation_errors_write_nothing(data, tmp_path, argv, message):
    args = base_args(data, tmp_path / "out", "--config-file", str(data / "tiny.json"),
                     *_resolve([a for a in argv if not a.startswith("--NO")], data))
    if not {"--NOINIT", "--from-checkpoint", "--from-pretrained-params"} & set(argv):
        args += ["--from-pretrained-params", str(data / "pretrained")]
    if "--NOLOWER" in argv:
        args.remove("--do-lower-case")
    with pytest.raises(ValueError, match=message):
        run_squad.main(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("café au lait".encode("latin-1"), r"^--context-file '\S+page.txt' is not UTF-8 text \(byte 3: "),
    (b" \n\t", r"^--context-file '\S+page.txt' is empty"),
])
def test_context_file_errors_name_the_file(data, tmp_path, content, message):
    page = tmp_path / "page.txt"
    page.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        run_squad.main(base_args(data, tmp_path / "out", "--from-pretrained-params", str(data / "pretrained"),
                                 "--config-file", str(data / "tiny.json"), "--question", "what ?",
                                 "--context-file", str(page)))


@pytest.mark.parametrize("how", ["--context", "--context-file"])
def test_a_context_over_the_cap_is_one_error_line_and_nothing_written(data, tmp_path, capsys, how):
    # Issue 20 item 16: a 50 MB context asked for 8 TiB; the cap is documented in run_squad's docstring.
    text = "word " * (run_squad.MAX_CONTEXT_CHARS // 5) + "x"
    assert len(text) == run_squad.MAX_CONTEXT_CHARS + 1 == 2_000_001
    page = tmp_path / "page.txt"
    page.write_text(text, encoding="utf-8")
    value = str(page) if how == "--context-file" else text
    args = base_args(data, tmp_path / "out", "--from-pretrained-params", str(data / "pretrained"), "--config-file",
                     str(data / "tiny.json"), "--question", "what ?", how, value)
    assert run_squad.cli(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    where = f"--context-file '{page}'" if how == "--context-file" else "--context"
    assert errors == [f"error: {where} has more than 2,000,000 characters, the most one question is answered "
                      "from: give the passage that should hold the answer"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("question, context, message", [("  ", "text", "--question is empty"),
                                                        ("why ?", "", "--context is empty")])
def test_empty_question_or_context_is_refused(data, tmp_path, question, context, message):
    with pytest.raises(ValueError, match=message):
        run_squad.main(base_args(data, tmp_path / "out", "--from-pretrained-params", str(data / "pretrained"),
                                 "--config-file", str(data / "tiny.json"), "--question", question,
                                 "--context", context))


@pytest.mark.parametrize("flag", ["--output-dir", "--report-file", "--features-cache-dir"])
def test_unwritable_outputs_are_refused_before_training(data, tmp_path, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = train_args(data, tmp_path / "out", "--mode", "train", "--max-steps", "1", flag, str(blocker / "sub"))
    with pytest.raises(ValueError, match=f"^{flag} '{blocker / 'sub'}' cannot be written: '{blocker}' is a file, "
                                         "not a directory$"):
        run_squad.main(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_dir_is_refused_before_training(data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ValueError, match=f"^--output-dir '{locked}' cannot be written: no write permission"):
            run_squad.main(train_args(data, locked, "--mode", "train", "--report-file", str(tmp_path / "r.json")))
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("content, message", [
    (None, r"^--vocab-file '\S+vocab.txt' does not exist or is not a file$"),
    ("", r"^vocab file '\S+vocab.txt' is empty$"),  # was reported as "cased but --do-lower-case is set"
    ("hello\nworld\n", r"^vocab file '\S+vocab.txt' lacks special token\(s\) \[PAD\] \[UNK\] \[CLS\]"),
])
def test_vocab_errors_name_the_file_and_the_real_problem(data, tmp_path, content, message):
    vocab = tmp_path / "vocab.txt"
    if content is not None:
        vocab.write_text(content)
    args = train_args(data, tmp_path / "out", "--mode", "train", "--vocab-file", str(vocab))
    with pytest.raises(ValueError, match=message):
        run_squad.main(args)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--from-checkpoint", "--from-pretrained-params"])
def test_predicting_with_a_pretrained_encoder_says_it_needs_fine_tuning(data, tmp_path, flag):
    with pytest.raises(ValueError, match=r"^'\S+pretrained' has no SQuAD answer head \(qa_outputs.bias, "
                                         r"qa_outputs.weight\): it is a pretrained BERT, not a fine-tuned SQuAD "
                                         r"model; fine-tune it first"):
        run_squad.main(base_args(data, tmp_path / "out", "--config-file", str(data / "tiny.json"), "--mode",
                                 "prediction", "--predict-file", str(data / "train.json"), flag,
                                 str(data / "pretrained")))
    assert not (tmp_path / "out" / "custom").exists()


def test_bad_mode_is_a_usage_error(data, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        run_squad.main(base_args(data, tmp_path, "--mode", "predict"))
    assert exit_.value.code == 2


def test_hf_checkpoint_config_must_match_the_vocab(data, tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "hf").mkdir()
    save_file({"embeddings.LayerNorm.bias": np.zeros(32, np.float32)}, str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(TINY, vocab_size=99, model_type="bert")))
    with pytest.raises(ValueError, match="vocab_size 99 but --vocab-file"):
        run_squad.main(base_args(data, tmp_path / "out", "--mode", "train", "--train-file",
                                 str(data / "train.json"), "--from-pretrained-params", str(tmp_path / "hf")))


# ------------------------------------------------------------------------------------ as a user runs it
def _run_script(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "run_squad.py", *argv], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)


def test_script_answers_a_question_and_reports_errors_in_one_line(trained, data, tmp_path):
    out, _ = trained
    proc = _run_script(*base_args(data, tmp_path, "--from-checkpoint", str(out / "custom" / "squad"),
                                  "--question", "who has a red car ?", "--context", PARAGRAPHS[2][0]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("answer: tom\tprobability: ")
    bad = _run_script(*base_args(data, tmp_path, "--mode", "train", "--from-pretrained-params",
                                 str(data / "pretrained")))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == ("error: training (--mode train/train_eval or --do-train) "
                                                   "needs --train-file")


def test_pretraining_phase_directory_uses_its_latest_complete_step(data, tmp_path, caplog):
    phase = tmp_path / "bert" / "phase1"
    for step, complete in ((3, True), (5, True), (8, False)):
        (phase / str(step)).mkdir(parents=True)
        (phase / str(step) / "bert_paddle.pdparams").write_bytes((data / "pretrained" / "bert_paddle.pdparams")
                                                                 .read_bytes())
        if complete:  # a step directory counts once its progress.json is written (CheckpointManager's rule)
            (phase / str(step) / "progress.json").write_text(json.dumps({"global_step": step}))
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        results = run_squad.main(train_args(data, out, "--mode", "train", "--max-steps", "1",
                                            "--from-pretrained-params", str(phase)))
    assert results["updates"] == 1
    assert "using its latest complete step 5" in caplog.text
    assert f"from {phase / '5' / 'bert_paddle.pdparams'}; newly initialised: qa_outputs" in caplog.text


def test_reference_checkpoint_with_auto_generated_names_is_explained(data, tmp_path):
    state = {"embedding_0.w_0": np.zeros((40, 32), np.float32), "linear_0.w_0": np.zeros((32, 32), np.float32),
             "linear_0.b_0": np.zeros(32, np.float32), "layer_norm_0.w_0": np.ones(32, np.float32)}
    (tmp_path / "ngc.pdparams").write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match="lacks parameter.*NVIDIA reference / NGC Paddle checkpoint"):
        run_squad.main(train_args(data, tmp_path / "out", "--mode", "train", "--max-steps", "1",
                                  "--from-pretrained-params", str(tmp_path / "ngc.pdparams")))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ tasks.squad pieces
def test_plan_updates_hand_computed():
    from tasks.finetune import TrainOptions, plan_updates

    opts = TrainOptions(epochs=2, batch_size=3, gradient_merge_steps=2)
    assert plan_updates(10, opts) == (4, 4)  # ceil(10 / 3) = 4 micro-batches per epoch, 8 in all, / 2
    assert plan_updates(10, opts, world_size=2) == (2, 2)  # 5 rows per rank
    assert plan_updates(10, TrainOptions(epochs=2, batch_size=3, max_steps=3)) == (4, 3)
    assert plan_updates(10, TrainOptions(batch_size=3, benchmark=True, benchmark_steps=4,
                                         benchmark_warmup_steps=1)) == (4, 5)
    with pytest.raises(ValueError, match="fewer than one update"):
        plan_updates(3, TrainOptions(epochs=1, batch_size=4, gradient_merge_steps=2))


def test_rank_batches_split_every_row_once_per_epoch():
    from data.features.squad import SquadFeatures
    from data.features.squad import batch_of_rows
    from tasks.finetune import rank_batches

    n, length = 11, 16
    seq = np.arange(3, 3 + n) % length + 1
    feats = SquadFeatures(unique_ids=np.arange(n), example_index=np.arange(n, dtype=np.int32),
                          doc_span_index=np.zeros(n, np.int32),
                          input_ids=(np.arange(length)[None, :] < seq[:, None]) * (np.arange(n)[:, None] + 1),
                          token_type_ids=np.zeros((n, length), np.int8), seq_lengths=seq.astype(np.int32),
                          token_to_orig=np.zeros((n, length), np.int32),
                          token_is_max_context=np.zeros((n, length), bool), start_positions=np.arange(n),
                          end_positions=np.arange(n), is_impossible=np.zeros(n, bool), id_to_token=())
    seen = []
    for rank in (0, 1):
        for batch in rank_batches(feats, 2, rank, 2, np.random.default_rng(5),
                                  lambda rows: batch_of_rows(feats, rows, is_training=True)):
            rows = batch["start_positions"][:, 0]
            assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= seq[rows].max()
            np.testing.assert_array_equal(batch["attention_mask"][:, 0, 0, :].sum(1), seq[rows])
            np.testing.assert_array_equal(batch["input_ids"][:, 0], rows + 1)
            seen += rows.tolist()
    assert len(seen) == 10 and len(set(seen)) == 10  # 11 rows, 5 per rank: one row sits this epoch out


def test_trimmed_batches_give_the_same_logits(data):
    import program as P
    from modeling import BertConfig
    from tasks.finetune import trim_batch

    paddle.enable_static()
    bundle = P.build_squad(BertConfig.from_json_file(data / "tiny.json"), P.TrainConfig(), is_training=False)
    rng = np.random.default_rng(0)
    lengths = np.array([5, 9, 3])
    mask = (np.arange(32)[None, :] < lengths[:, None]).astype(np.int64)
    feed = {"input_ids": rng.integers(5, 30, (3, 32)) * mask, "token_type_ids": (np.arange(32) >= 2) * mask,
            "attention_mask": mask[:, None, None, :]}
    short, cols = trim_batch(feed)
    assert cols == 16 and short["input_ids"].shape == (3, 16) and short["attention_mask"].shape == (3, 1, 1, 16)
    fetch = [bundle.eval_fetches["start_logits"], bundle.eval_fetches["end_logits"]]
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        full = exe.run(bundle.eval_program, feed=feed, fetch_list=fetch)
        cut = exe.run(bundle.eval_program, feed=short, fetch_list=fetch)
    for a, b in zip(full, cut):
        real = mask[:, :16].astype(bool)
        np.testing.assert_allclose(a[:, :16][real], b[real], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ bf16 on a CPU without it
def _bf16_args(data, out, *mode):
    return base_args(data, out, "--config-file", str(data / "tiny.json"), "--infer-dtype", "bfloat16",
                     "--from-pretrained-params", str(data / "pretrained"),
                     *(mode or ("--mode", "prediction", "--predict-file", str(data / "train.json"))))


def test_bf16_inference_is_refused_where_the_cpu_cannot_run_it(data, tmp_path, monkeypatch):
    from utils import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: runtime.Bf16Support(
        usable=False, native=False, reason="this CPU lacks avx512bw (AVX-512), which oneDNN's bf16 kernels need"))
    with pytest.raises(ValueError, match=r"^--infer-dtype bfloat16: this CPU lacks avx512bw .*; use "
                                         r"--infer-dtype float32$"):
        run_squad.main(_bf16_args(data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    # a training-only run predicts nothing, so bf16 does not matter
    args = run_squad.build_parser().parse_args(_bf16_args(data, tmp_path / "out", "--mode", "train",
                                                          "--train-file", str(data / "train.json")))
    assert run_squad.validate_args(args).do_train


@pytest.mark.parametrize("native, warns", [(True, False), (False, True)])
def test_bf16_inference_is_accepted_where_the_cpu_supports_it(data, tmp_path, monkeypatch, caplog, native, warns):
    from utils import runtime

    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: runtime.Bf16Support(usable=True, native=native))
    with caplog.at_level("WARNING"):
        plan = run_squad.validate_args(run_squad.build_parser().parse_args(_bf16_args(data, tmp_path / "out")))
    assert plan.do_predict and plan.device == "cpu"
    assert ("oneDNN emulates bf16" in caplog.text) == warns


def test_script_refuses_bf16_inference_on_this_cpu_in_one_line(data, tmp_path):
    from utils.runtime import cpu_bf16_support

    support = cpu_bf16_support()
    if support.usable:
        pytest.skip("this CPU runs bf16")
    proc = _run_script(*_bf16_args(data, tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"error: --infer-dtype bfloat16: {support.reason}; use "
                                                    "--infer-dtype float32")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
