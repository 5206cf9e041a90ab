"""Issue 13 as a user runs it (subprocesses): `--steps-this-run` split into two invocations equals one run bit
for bit (CPU fp32, bert-tiny) with validation on held-out shards logged at the same steps; the standalone
evaluation of a phase directory gives the training-time numbers; preprocessing's hold-out never overlaps
the training documents; and the new flags' errors.
"""
import json
import os

import numpy as np
import pytest

from test_run_pretraining import PY, TINY, _assert_same_state, _run  # noqa: F401


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train shards, held-out shards, vocab, source dir): one preprocessing run with --holdout-fraction."""
    root = tmp_path_factory.mktemp("extras")
    _run(["-m", "data.prep.sample_corpus", "--output-dir", str(root / "source"), "--num-files", "2",
          "--max-bytes", "150000"])
    _run(["-m", "data.prep.build_vocab", "--input", str(root / "source"), "--output", str(root / "vocab.txt"),
          "--vocab-size", "2000", "--do-lower-case"])
    _run(["-m", "data.prep.preprocess_bert_pretrain", "--source", str(root / "source"), "--sink",
          str(root / "train"), "--vocab-file", str(root / "vocab.txt"), "--target-seq-length", "128", "--no-bin",
          "--masking", "--max-predictions-per-seq", "20", "--num-workers", "0", "--seed", "3",
          "--holdout-fraction", "0.2", "--duplicate-factor", "2"])
    return str(root / "train"), str(root / "train_holdout"), str(root / "vocab.txt"), str(root / "source")


EVAL = ["--num-eval-batches", "2", "--eval-freq", "2", "--eval-batch-size", "4"]


def _args(data, out, *extra, steps=4):
    train, holdout, vocab, _ = data
    root = os.path.join(out, "bert-tiny", "phase1")
    return ["run_pretraining.py", "--input-dir", train, "--vocab-file", vocab, "--output-dir", str(out), "--phase1",
            "--max-steps", str(steps), "--batch-size", "4", "--num-steps-per-checkpoint", "2",
            "--report-file", os.path.join(out, "report.json"), "--from-checkpoint", root,
            "--last-step-of-checkpoint", "auto", "--eval-dir", holdout, *EVAL, *TINY, *extra]


def _eval_records(report):
    from utils.report import read_dllogger_report
    return {r["step"]: r["data"] for r in read_dllogger_report(report)
            if r.get("type") == "LOG" and "eval_loss" in r.get("data", {})}


@pytest.fixture(scope="module")
def one_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_run")
    _run(_args(data, out))
    return out


def test_steps_this_run_two_invocations_equal_one_run(data, one_run, tmp_path):
    out = tmp_path / "split"
    first = _run(_args(data, out, "--steps-this-run", "3"))
    assert first.returncode == 0 and "stopped at step 3 of 4" in first.stderr
    root = out / "bert-tiny" / "phase1"
    assert (root / "3" / "progress.json").exists() and not (root / "4").exists()  # saved where it stopped
    second = _run(_args(data, out, "--steps-this-run", "3"))
    assert "restored step 3" in second.stderr and "done at step 4" in second.stderr
    ref = one_run / "bert-tiny" / "phase1" / "4"
    _assert_same_state(root / "4", ref)
    state = json.loads((root / "4" / "progress.json").read_text())["loader_state"]
    assert state == json.loads((ref / "progress.json").read_text())["loader_state"]
    assert state["batches_consumed"] == 4
    # Validation at steps 2 and 4 (every 2 and at the end) plus 3 (the end of the first invocation): the
    # values at the shared steps are identical, i.e. evaluating did not disturb training and the set is fixed.
    split, whole = _eval_records(out / "report.json"), _eval_records(one_run / "report.json")
    assert sorted(whole) == [2, 4] and sorted(split) == [2, 3, 4]
    assert split[2] == whole[2] and split[4] == whole[4]
    assert whole[2]["eval_sequences"] == 8 and whole[4]["eval_loss"] != whole[2]["eval_loss"]


def test_standalone_evaluation_of_a_phase_dir_equals_training_time_validation(data, one_run, caplog):
    """In this process (the CLI's exits are tested below): the numbers of another process's training run."""
    import logging

    import paddle

    import run_pretraining_inference
    train, holdout, vocab, _ = data
    caplog.set_level(logging.INFO)
    try:
        result = run_pretraining_inference.main(
            ["--init-checkpoint", str(one_run / "bert-tiny" / "phase1"), "--input-dir", holdout, "--vocab-file", vocab,
             "--bert-model", "bert-tiny", "--batch-size", "4", "--num-eval-batches", "2", "--max-seq-length", "128",
             "--max-predictions-per-seq", "20", "--sequence-length-alignment", "8", "--device", "cpu",
             "--report-file", str(one_run / "inference.json")])
    finally:
        paddle.disable_static()
    assert "using its latest complete step 4" in caplog.text
    from utils.report import final_summary, read_dllogger_report
    assert final_summary(read_dllogger_report(one_run / "inference.json")) == pytest.approx(result)
    expected = _eval_records(one_run / "report.json")[4]
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-6), key
    assert result["inference_sequences_per_second"] > 0


def test_from_pretrained_params_accepts_a_phase_dir(data, one_run):
    import run_pretraining
    train, _, vocab, _ = data
    args = run_pretraining.build_parser().parse_args(
        ["--input-dir", train, "--vocab-file", vocab, "--output-dir", str(one_run / "other"), "--phase1",
         "--max-steps", "2", "--from-pretrained-params", str(one_run / "bert-tiny" / "phase1"), *TINY])
    cfg = run_pretraining.validate_args(args)
    assert cfg.checkpointing.from_pretrained_params == str(one_run / "bert-tiny" / "phase1" / "4")


def test_holdout_documents_never_overlap_the_training_documents(data):
    """Document level (what --holdout-fraction promises), deterministic by seed, about the asked fraction."""
    from data.prep import corpus
    from data.prep.preprocess_bert_pretrain import plan_blocks, read_block_documents
    blocks = plan_blocks(corpus.list_corpus_files([data[3]]), 1 << 20, "auto")

    def docs(part, seed=3):
        return [tuple(d) for b in blocks for d in read_block_documents(b, seed, 0.9, 0.2, part)]

    train, held = docs("train"), docs("holdout")
    everything = [tuple(d) for b in blocks for d in read_block_documents(b, 3, 0.9)]
    assert sorted(train + held) == sorted(everything) and not set(train) & set(held)
    assert 0.1 < len(held) / len(everything) < 0.3
    assert docs("holdout") == held and docs("holdout", seed=4) != held
    # The CLI wrote both sets, each with rows.
    for directory in data[:2]:
        counts = json.loads(open(os.path.join(directory, ".num_samples.json")).read())
        assert sum(counts.values()) > 0


@pytest.mark.parametrize("extra, message", [
    (["--num-eval-batches", "2"], "--num-eval-batches needs --eval-dir"),
    (["--steps-this-run", "0"], "--steps-this-run must be > 0"),
    (["--steps-this-run", "2", "--benchmark"], "--benchmark writes none"),
    (["--eval-dir", "/nonexistent/eval"], "--eval-dir '/nonexistent/eval' does not exist"),
])
def test_new_flag_errors_exit_2_with_one_line(data, tmp_path, capsys, extra, message):
    import run_pretraining
    train, _, vocab, _ = data
    code = run_pretraining.cli(["--input-dir", train, "--vocab-file", vocab, "--output-dir", str(tmp_path / "o"),
                                "--phase1", "--max-steps", "2", "--device", "cpu", *extra])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_holdout_sink_without_fraction_is_refused(data, tmp_path):
    from data.prep import preprocess_bert_pretrain
    with pytest.raises(ValueError, match="--holdout-sink needs --holdout-fraction"):
        preprocess_bert_pretrain.main(["--source", data[3], "--sink", str(tmp_path / "s"), "--vocab-file",
                                       data[2], "--holdout-sink", str(tmp_path / "h"), "--num-workers", "0"])
    assert not (tmp_path / "s").exists()


def test_standalone_evaluation_errors_exit_2_with_one_line(data, tmp_path, capsys):
    import run_pretraining_inference
    train, holdout, vocab, _ = data
    base = ["--input-dir", holdout, "--vocab-file", vocab, "--bert-model", "bert-tiny", "--device", "cpu",
            "--max-seq-length", "128"]
    assert run_pretraining_inference.cli(["--init-checkpoint", str(tmp_path / "none"), *base]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: --init-checkpoint '{tmp_path / 'none'}' does not exist"
    assert run_pretraining_inference.cli(["--init-checkpoint", train, *base, "--max-seq-length", "1024"]) == 2
    assert "exceeds max_position_embeddings" in capsys.readouterr().err
