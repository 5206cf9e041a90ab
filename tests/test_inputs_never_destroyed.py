"""Nothing a user points at is deleted (issue 20, items 1-3).

An output that is, contains or lies inside an input is refused before any work, `--overwrite` or not, by
every command that writes a directory or file from inputs: `inference.export`, `preprocess_bert_pretrain`,
`balance_dask_output`, `build_vocab`, `data.prep.wikipedia`, `data.prep.corpus`, `data.prep.sample_corpus`.
A fine-tuning run into a directory that holds a fine-tuned model is refused, and `--replace-model` moves
the old directory aside whole. Each case compares every byte under the test's directory before and after.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_inference import model  # noqa: F401  -- the tiny fine-tuned SQuAD checkpoint fixture
from utils import fs

REPO = Path(__file__).resolve().parents[1]


def tree(path):
    """{relative path: bytes} of every file under `path` (symlinks by their target), and the directories."""
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None) for p in sorted(path.rglob("*"))}


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("output, relation", [
    ("in", "is"), ("in/../in", "is"), (".", "contains"), ("in/sub/out", "lies inside"), ("link", "is"),
])
def test_overlap_is_named(tmp_path, output, relation):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "in")
    out = str(tmp_path / output)
    with pytest.raises(ValueError) as err:
        fs.refuse_output_over_inputs("--sink", out, [("--vocab-file", None), ("--source", str(tmp_path / "in"))])
    assert str(err.value) == (f"--sink '{out}' {relation} --source '{tmp_path / 'in'}': writing there would "
                              "replace an input; give --sink a path outside every input")


def test_apart_and_prefix_named_siblings_pass(tmp_path):
    # 'in2' starts with the characters of 'in' but is not inside it: a string prefix is not a path prefix.
    fs.refuse_output_over_inputs("--sink", str(tmp_path / "in2"), [("--source", str(tmp_path / "in"))])
    fs.refuse_output_over_inputs("--sink", str(tmp_path / "out"), [("--source", str(tmp_path / "in" / "a.txt"))])


# ---------------------------------------------------------------------------------------------- item 1


@pytest.fixture
def run_dir(model, tmp_path):  # noqa: F811
    """R/custom/squad as run_squad leaves it (model, config, predictions), and the vocab in V/."""
    root, _ = model
    squad = tmp_path / "R" / "custom" / "squad"
    shutil.copytree(root / "ckpt", squad)
    (squad / "predictions.json").write_text('{"q1": "tom"}')
    (tmp_path / "V").mkdir()
    shutil.copy(root / "vocab.txt", tmp_path / "V" / "vocab.txt")
    (tmp_path / "link").symlink_to(squad)
    return tmp_path


def _export_argv(tmp, out):
    return ["--checkpoint", str(tmp / "R" / "custom" / "squad"), "--output-dir", str(out),
            "--vocab-file", str(tmp / "V" / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
            "--max-seq-length", "32", "--doc-stride", "16", "--max-query-length", "12", "--overwrite"]


@pytest.mark.parametrize("out, flag, relation", [
    ("R/custom/squad", "--checkpoint", "is"),
    ("R", "--checkpoint", "contains"),
    ("R/custom/squad/export", "--checkpoint", "lies inside"),
    ("link", "--checkpoint", "is"),
    ("V", "--vocab-file", "contains"),
])
def test_export_refuses_an_output_over_its_inputs_even_with_overwrite(run_dir, capsys, out, flag, relation):
    from inference import export

    before = tree(run_dir)
    assert export.cli(_export_argv(run_dir, run_dir / out)) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"--output-dir '{run_dir / out}' {relation} {flag} '" in errors[0], errors
    assert tree(run_dir) == before


def test_export_as_a_user_runs_it_keeps_the_fine_tuned_model(run_dir):
    proc = subprocess.run([sys.executable, "-m", "inference.export", *_export_argv(run_dir, run_dir / "R")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1, proc.stderr[-2000:]
    assert (run_dir / "R" / "custom" / "squad" / "bert_paddle.pdparams").is_file()
    assert (run_dir / "R" / "custom" / "squad" / "predictions.json").read_text() == '{"q1": "tom"}'


# ---------------------------------------------------------------------------------------------- item 2


@pytest.fixture
def corpus(tmp_path):
    """S/ with two text files, a vocab V/vocab.txt; every byte recorded."""
    (tmp_path / "S").mkdir()
    for k in range(2):
        (tmp_path / "S" / f"part-{k}.txt").write_text(f"doc{k} the quick brown fox .\n\ndoc{k}b jumps over .\n")
    (tmp_path / "V").mkdir()
    (tmp_path / "V" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the",
                                                         "quick", "brown", "fox", "jumps", "over", "."]) + "\n")
    return tmp_path


def _preprocess(tmp, sink):
    return ["--source", str(tmp / "S"), "--sink", str(tmp / sink), "--vocab-file", str(tmp / "V" / "vocab.txt"),
            "--num-workers", "0", "--overwrite"]


@pytest.mark.parametrize("module, argv, flag, relation", [
    ("preprocess_bert_pretrain", lambda t: _preprocess(t, "S"), "--source", "is"),
    ("preprocess_bert_pretrain", lambda t: _preprocess(t, "."), "--source", "contains"),
    ("preprocess_bert_pretrain", lambda t: _preprocess(t, "S/shards"), "--source", "lies inside"),
    ("preprocess_bert_pretrain", lambda t: _preprocess(t, "V"), "--vocab-file", "contains"),
    ("preprocess_bert_pretrain", lambda t: _preprocess(t, "out") + ["--holdout-fraction", "0.5", "--holdout-sink",
                                                                    str(t / "S")], "--source", "is"),
    ("balance_dask_output", lambda t: ["--indir", str(t / "S"), "--outdir", str(t), "--num-shards", "2",
                                       "--overwrite"], "--indir", "contains"),
    ("balance_dask_output", lambda t: ["--indir", str(t / "S"), "--outdir", str(t / "S"), "--num-shards", "2",
                                       "--overwrite"], "--indir", "is"),
    ("build_vocab", lambda t: ["--input", str(t / "S"), "--output", str(t / "S" / "part-0.txt"), "--overwrite"],
     "--input", "lies inside"),
    ("build_vocab", lambda t: ["--input", str(t / "S" / "part-1.txt"), "--output", str(t / "S" / "part-1.txt"),
                               "--overwrite"], "--input", "is"),
    ("corpus", lambda t: ["--input", str(t / "S"), "--output-dir", str(t / "S"), "--overwrite"], "--input", "is"),
    ("corpus", lambda t: ["--input", str(t / "S" / "part-0.txt"), "--output-dir", str(t / "S"), "--overwrite"],
     "--input", "contains"),
    ("wikipedia", lambda t: ["--dump", str(t / "S" / "part-0.txt"), "--output-dir", str(t / "S"), "--overwrite"],
     "--dump", "contains"),
])
def test_data_commands_refuse_an_output_over_their_inputs(corpus, capsys, module, argv, flag, relation):
    import importlib

    cli = importlib.import_module(f"data.prep.{module}").cli
    before = tree(corpus)
    assert cli(argv(corpus)) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f" {relation} {flag} '" in errors[0], errors
    assert tree(corpus) == before


def test_balance_in_place_needs_no_outdir(corpus, capsys):
    from data.prep import balance_dask_output

    assert balance_dask_output.cli(["--indir", str(corpus / "S"), "--outdir", str(corpus / "S"),
                                    "--num-shards", "2"]) == 2
    assert "to rebalance --indir in place, leave out --outdir" in capsys.readouterr().err


def test_sample_corpus_never_writes_over_the_standard_library(tmp_path):
    from data.prep.sample_corpus import build_sample_corpus

    (tmp_path / "lib" / "pkg").mkdir(parents=True)
    (tmp_path / "lib" / "pkg" / "mod.py").write_text('"""A module docstring long enough to count."""\n')
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="contains the standard library directory"):
        build_sample_corpus(str(tmp_path), overwrite=True, root=str(tmp_path / "lib"))
    assert tree(tmp_path) == before


def test_preprocess_as_a_user_runs_it_keeps_the_corpus(corpus):
    proc = subprocess.run([sys.executable, "-m", "data.prep.preprocess_bert_pretrain", *_preprocess(corpus, "S")],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"error: --sink '{corpus / 'S'}' is --source '{corpus / 'S'}': writing there would replace an input; "
        "give --sink a path outside every input"]
    assert sorted(os.listdir(corpus / "S")) == ["part-0.txt", "part-1.txt"]


def test_the_plot_never_replaces_a_report(tmp_path):
    from utils.plot_report import plot_reports

    report = tmp_path / "phase1.png"  # an odd name, but the user's file
    report.write_text('DLLL {"step": [0, 1], "data": {"loss": 1.0}}\n')
    with pytest.raises(ValueError, match=r"--output '.*phase1.png' is the report '.*phase1.png'"):
        plot_reports([str(report)], str(report))
    assert report.read_text().startswith("DLLL")


def test_an_incomplete_glue_task_directory_is_moved_aside_not_deleted(tmp_path):
    import zipfile

    from data.prep.download import _extract_task

    glue = tmp_path / "glue"
    (glue / "RTE").mkdir(parents=True)
    (glue / "RTE" / "train.tsv").write_text("mine\n")  # no dev.tsv: incomplete, so it is extracted again
    archive = tmp_path / "RTE.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n")
        zf.writestr("RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    _extract_task(str(archive), "RTE", str(glue))
    assert sorted(os.listdir(glue / "RTE")) == ["dev.tsv", "train.tsv"]
    kept, = glue.glob("RTE.superseded-*/train.tsv")
    assert kept.read_text() == "mine\n"


# ---------------------------------------------------------------------------------------------- item 3


def tiny_squad_run(tmp_path):
    """Writes a tiny SQuAD run's inputs into `tmp_path` (vocab.txt, tiny.json, train.json, pre/ with encoder
    weights) and returns run_squad's flags for one training run on them into tmp_path/R."""
    from test_run_squad import squad_json, PARAGRAPHS, SPECIAL, TINY, _write_encoder_params

    words = sorted({w for c, qas in PARAGRAPHS for t in [c] + [q for _, q, _ in qas] for w in t.split()})
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL + words) + "\n")
    (tmp_path / "tiny.json").write_text(json.dumps(dict(TINY, vocab_size=len(SPECIAL) + len(words))))
    (tmp_path / "train.json").write_text(json.dumps(squad_json(PARAGRAPHS)))
    (tmp_path / "pre").mkdir()
    _write_encoder_params(tmp_path / "tiny.json", tmp_path / "pre" / "bert_paddle.pdparams")
    return ["--vocab-file", str(tmp_path / "vocab.txt"), "--do-lower-case", "--bert-model", "custom",
            "--config-file", str(tmp_path / "tiny.json"), "--output-dir", str(tmp_path / "R"), "--device", "cpu",
            "--max-seq-length", "32", "--doc-stride", "16", "--max-query-length", "12", "--mode", "train",
            "--from-pretrained-params", str(tmp_path / "pre"), "--train-file", str(tmp_path / "train.json")]


def test_squad_training_into_a_fine_tuned_model_is_refused_then_moved_aside(tmp_path):
    import run_squad

    argv = tiny_squad_run(tmp_path) + ["--show-config", "false", "--train-batch-size", "3", "--max-steps", "1"]
    squad = tmp_path / "R" / "custom" / "squad"
    squad.mkdir(parents=True)
    (squad / "bert_paddle.pdparams").write_bytes(b"the old fine-tuned model")
    (squad / "predictions.json").write_text('{"q1": "old"}')
    before = tree(tmp_path)
    with pytest.raises(ValueError) as err:
        run_squad.main(argv)
    assert str(err.value) == (
        f"--output-dir: {squad} already holds a fine-tuned model (bert_paddle.pdparams); use another "
        "--output-dir, or pass --replace-model to move that directory aside (kept as squad.superseded-<time>) "
        "and train anew")
    assert tree(tmp_path) == before
    with pytest.raises(ValueError, match="--replace-model would move aside .* which holds the weights this run"):
        run_squad.main([a if a != str(tmp_path / "pre") else str(squad) for a in argv] + ["--replace-model"])
    assert tree(tmp_path) == before

    results = run_squad.main(argv + ["--replace-model"])
    assert results["params_file"] == str(squad / "bert_paddle.pdparams")
    assert "predictions.json" not in os.listdir(squad)  # nothing of the old run beside the new model
    assert (squad / "bert_paddle.pdparams").read_bytes() != b"the old fine-tuned model"
    old, = (tmp_path / "R" / "custom").glob("squad.superseded-*")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == {
        "bert_paddle.pdparams": b"the old fine-tuned model", "predictions.json": b'{"q1": "old"}'}


def test_glue_training_into_a_fine_tuned_model_is_refused(tmp_path, capsys):
    import run_glue
    from test_run_glue import HEADER, PAIRS, SPECIAL, TINY, WORDS

    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    (tmp_path / "MRPC").mkdir()
    rows = [f"{int(a == b)}\t{i}\t{i + 100}\t{a}\t{b}" for i, (a, b) in enumerate(PAIRS)]
    (tmp_path / "MRPC" / "train.tsv").write_text(HEADER + "\n".join(rows) + "\n")
    (tmp_path / "MRPC" / "dev.tsv").write_text(HEADER + "\n".join(rows) + "\n")
    glue = tmp_path / "R" / "custom" / "glue" / "MRPC"
    glue.mkdir(parents=True)
    (glue / "bert_paddle.pdparams").write_bytes(b"old")
    (glue / "eval_results.json").write_text('{"acc": 0.9}')
    (tmp_path / "pre.pdparams").write_bytes(b"never read: refused before")
    before = tree(tmp_path)
    argv = ["--task-name", "MRPC", "--data-dir", str(tmp_path / "MRPC"), "--vocab-file", str(tmp_path / "vocab.txt"),
            "--do-lower-case", "--bert-model", "custom", "--config-file", str(tmp_path / "tiny.json"),
            "--output-dir", str(tmp_path / "R"), "--device", "cpu", "--mode", "train_eval",
            "--from-pretrained-params", str(tmp_path / "pre.pdparams")]
    assert run_glue.cli(argv) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"{glue} already holds a fine-tuned model (bert_paddle.pdparams)" in errors[0]
    assert "--replace-model" in errors[0]
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------- the reports
# Found in the final review: a DLLogger report is opened for writing (truncated) at start, so a --report-file
# naming one of the run's inputs destroyed it. A report may sit in an input directory, never be an input.


def test_a_report_file_that_is_an_input_is_refused_in_every_runner(tmp_path):
    import run_glue
    import run_pretraining
    import run_pretraining_inference
    import run_squad
    from test_run_glue import HEADER, PAIRS, SPECIAL as GLUE_SPECIAL, TINY as GLUE_TINY, WORDS

    squad = tiny_squad_run(tmp_path)
    (tmp_path / "MRPC").mkdir()
    rows = [f"{int(a == b)}\t{i}\t{i + 100}\t{a}\t{b}" for i, (a, b) in enumerate(PAIRS)]
    (tmp_path / "MRPC" / "train.tsv").write_text(HEADER + "\n".join(rows) + "\n")
    (tmp_path / "gvocab.txt").write_text("\n".join(GLUE_SPECIAL + WORDS) + "\n")
    (tmp_path / "gtiny.json").write_text(json.dumps(GLUE_TINY))
    glue = ["--task-name", "MRPC", "--data-dir", str(tmp_path / "MRPC"), "--vocab-file", str(tmp_path / "gvocab.txt"),
            "--do-lower-case", "--bert-model", "custom", "--config-file", str(tmp_path / "gtiny.json"),
            "--output-dir", str(tmp_path / "G"), "--device", "cpu", "--mode", "train", "--max-seq-length", "24",
            "--from-pretrained-params", str(tmp_path / "pre")]
    pretrain = ["--phase1", "--input-dir", str(tmp_path / "MRPC"), "--vocab-file", str(tmp_path / "vocab.txt"),
                "--output-dir", str(tmp_path / "P"), "--max-steps", "2", "--bert-model", "custom", "--config-file",
                str(tmp_path / "tiny.json"), "--device", "cpu", "--max-seq-length", "32"]
    inference = ["--init-checkpoint", str(tmp_path / "pre"), "--input-dir", str(tmp_path / "MRPC"), "--vocab-file",
                 str(tmp_path / "vocab.txt"), "--bert-model", "custom", "--config-file", str(tmp_path / "tiny.json"),
                 "--device", "cpu", "--max-seq-length", "32"]
    before = tree(tmp_path)
    for main, argv, victim, flag in [
            (run_squad.main, squad, tmp_path / "train.json", "--train-file"),
            (run_squad.main, squad, tmp_path / "vocab.txt", "--vocab-file"),
            (run_glue.main, glue, tmp_path / "MRPC" / "train.tsv", "--data-dir"),
            (run_pretraining.main, pretrain, tmp_path / "vocab.txt", "--vocab-file"),
            (run_pretraining_inference.main, inference, tmp_path / "pre" / "bert_paddle.pdparams",
             "--init-checkpoint")]:
        with pytest.raises(ValueError) as err:
            main(argv + ["--report-file", str(victim)])
        assert str(err.value).startswith(f"--report-file '{victim}' is {flag} '"), str(err.value)
    assert tree(tmp_path) == before
