"""Issue 24, round 2, items 1, 2 and 7: the HF import log counts what really happened; every consumer of a
pretraining step directory takes the architecture from its bert_config.json (or, for an older one, from its
parameter shapes); run_pretraining_inference.py builds no optimizer and writes its report."""
import json
import logging
import os

import paddle
import pytest

import program as P
import run_pretraining
import run_pretraining_inference
import run_squad
from conftest import REPO
from modeling import BertConfig
from tasks.config import VocabInfo
from test_hf_import import TINY_HF_CONFIG, build_predict, hf_state, write_checkpoint
from test_run_pretraining import shards  # noqa: F401  -- module fixture: real shards and their vocab
from test_run_squad import data  # noqa: F401  -- module fixture: SQuAD files and their vocab
from utils.checkpoint import CheckpointManager, Progress, fingerprint_config
from utils.weights import load_hf_pretrained

BERT_TINY = os.path.join(REPO, "bert_configs", "bert-tiny.json")


@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    """The entry points switch Paddle to static mode (as the scripts do); later test files expect dygraph."""
    yield
    paddle.disable_static()


# ------------------------------------------------------------------------------ item 1: the HF import log
def test_hf_import_log_line_counts_loaded_renamed_and_new(tmp_path, static_graph, caplog):
    # bert.-prefixed TF-style names: the 10 LayerNorm gamma/beta tensors load under another name.
    path = write_checkpoint(tmp_path, hf_state(TINY_HF_CONFIG, __import__("numpy").random.default_rng(1),
                                               prefix="bert.", tf_names=True))
    with paddle.static.scope_guard(paddle.static.Scope()), caplog.at_level(logging.INFO):
        bundle, exe = build_predict(BertConfig.from_dict(
            {k: v for k, v in TINY_HF_CONFIG.items() if k in BertConfig.__dataclass_fields__}))
        load_hf_pretrained(exe, bundle.main_program, path, allow_missing_prefixes=("qa_outputs",), vocab_size=29)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("parameters: ")]
    assert lines == [f"parameters: 39 of 41 from {path}/model.safetensors (10 under another name); "
                     "newly initialised: qa_outputs.bias, qa_outputs.weight"]


# ------------------------------------------------------------------------------ item 2: the step dir's model
def make_step_dir(phase_dir, vocab_file, with_config=True, step=3):
    """A real pretraining checkpoint of bert-tiny's architecture (CheckpointManager.save on the training
    program); `with_config=False` writes it as checkpoints were written before they carried bert_config.json."""
    vocab = VocabInfo.read(vocab_file)
    cfg = BertConfig.from_json_file(BERT_TINY).with_vocab_size(vocab.size)
    paddle.enable_static()
    bundle = P.build_pretraining(cfg, P.TrainConfig(seed=3))
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        kwargs = {"model_config": cfg.to_dict()} if with_config else {}
        manager = CheckpointManager(str(phase_dir), **kwargs)
        progress = Progress(phase=1, global_step=step, epoch=0, loader_state={}, lr_state={}, seeds={"base": 3},
                            config_fingerprint=fingerprint_config(cfg.to_dict()), world_size=1,
                            global_batch_size=4, vocab_sha256=vocab.sha256)
        return manager.save(exe, bundle.main_program, progress)


def squad_args(data, out, *extra):  # noqa: F811
    """run_squad flags without --bert-model / --config-file."""
    return ["--vocab-file", str(data / "vocab.txt"), "--do-lower-case", "--output-dir", str(out),
            "--device", "cpu", "--max-seq-length", "32", "--doc-stride", "16", "--max-query-length", "12",
            "--show-config", "false", "--train-file", str(data / "train.json"), "--train-batch-size", "3",
            "--mode", "train", "--max-steps", "1", *extra]


def test_step_dir_carries_its_config_listed_with_the_checksummed_files(data, tmp_path):  # noqa: F811
    step_dir = make_step_dir(tmp_path / "phase1", data / "vocab.txt")
    saved = json.loads((tmp_path / "phase1" / "3" / "bert_config.json").read_text())
    assert saved["hidden_size"] == 128 and saved["num_hidden_layers"] == 2
    assert "bert_config.json" in json.loads((tmp_path / "phase1" / "3" / "progress.json").read_text())["files"]
    assert CheckpointManager(str(tmp_path / "phase1")).latest_complete_step() == 3 and step_dir


def test_fine_tuning_a_step_dir_builds_its_architecture_without_bert_model(data, tmp_path, caplog):  # noqa: F811
    make_step_dir(tmp_path / "phase1", data / "vocab.txt")
    with caplog.at_level(logging.INFO):
        results = run_squad.main(squad_args(data, tmp_path / "out", "--from-pretrained-params",
                                            str(tmp_path / "phase1")))
    assert results["updates"] == 1
    assert f"model config from the checkpoint: {tmp_path / 'phase1' / '3' / 'bert_config.json'}" in caplog.text
    fine_tuned = json.loads((tmp_path / "out" / "bert-tiny" / "squad" / "bert_config.json").read_text())
    assert fine_tuned["hidden_size"] == 128


def test_a_flag_that_disagrees_with_the_step_dir_is_one_line_naming_both(data, tmp_path):  # noqa: F811
    make_step_dir(tmp_path / "phase1", data / "vocab.txt")
    config = tmp_path / "phase1" / "3" / "bert_config.json"
    with pytest.raises(ValueError) as err:
        run_squad.main(squad_args(data, tmp_path / "out", "--from-pretrained-params", str(tmp_path / "phase1"),
                                  "--bert-model", "bert-base-uncased"))
    message = str(err.value)
    assert message == (f"--bert-model bert-base-uncased describes another model than the checkpoint's {config} "
                       "(bert-tiny; parameter shapes differ: hidden_size 768 vs 128, num_hidden_layers 12 vs 2, "
                       "intermediate_size 3072 vs 512, num_attention_heads 12 vs 2): drop --bert-model to use the "
                       "checkpoint's config, or give a checkpoint of that model")
    assert not (tmp_path / "out").exists()


def test_an_old_step_dir_without_config_is_matched_by_its_shapes(data, tmp_path, caplog):  # noqa: F811
    make_step_dir(tmp_path / "phase1", data / "vocab.txt", with_config=False)
    assert not (tmp_path / "phase1" / "3" / "bert_config.json").exists()
    with caplog.at_level(logging.INFO):
        results = run_squad.main(squad_args(data, tmp_path / "out", "--from-pretrained-params",
                                            str(tmp_path / "phase1" / "3")))
    assert results["updates"] == 1
    assert "its parameter shapes are those of bert_configs/bert-tiny.json, used" in caplog.text


def test_an_old_step_dir_that_fits_no_known_model_names_the_flag(data, tmp_path):  # noqa: F811
    import pickle

    make_step_dir(tmp_path / "phase1", data / "vocab.txt", with_config=False)
    params = tmp_path / "phase1" / "3" / "bert_paddle.pdparams"
    state = pickle.loads(params.read_bytes())
    state = {k: v for k, v in state.items() if not k.startswith("bert.encoder.layer.1.")}  # one layer only
    (tmp_path / "one_layer.pdparams").write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match=r"^'.*one_layer.pdparams' carries no bert_config.json and they fit no "
                                         r"bert_configs/ model: give the --config-file it was trained with$"):
        run_squad.main(squad_args(data, tmp_path / "out", "--from-pretrained-params",
                                  str(tmp_path / "one_layer.pdparams")))


def _phase2_args(shards, out, phase1_step, *extra):  # noqa: F811
    data_dir, vocab = shards
    return ["--input-dir", data_dir, "--vocab-file", vocab, "--output-dir", str(out), "--phase2",
            "--max-steps", "2", "--max-seq-length", "128", "--max-predictions-per-seq", "20",
            "--from-phase1-final-params", str(phase1_step), *extra]


def test_phase2_takes_phase1s_architecture_and_name(shards, tmp_path):  # noqa: F811
    step_dir = make_step_dir(tmp_path / "phase1", shards[1])
    cfg = run_pretraining.validate_args(run_pretraining.build_parser().parse_args(
        _phase2_args(shards, tmp_path / "out", step_dir)))
    assert cfg.model.hidden_size == 128 and cfg.checkpointing.bert_model == "bert-tiny"
    assert cfg.run.report_file == os.path.join(str(tmp_path / "out"), "bert-tiny", "phase2", "report.json")
    with pytest.raises(ValueError, match=r"^--bert-model bert-large-uncased describes another model than the "
                                         r"checkpoint's .*bert_config.json \(bert-tiny; parameter shapes differ: "):
        run_pretraining.validate_args(run_pretraining.build_parser().parse_args(
            _phase2_args(shards, tmp_path / "out", step_dir, "--bert-model", "bert-large-uncased")))


def test_export_refuses_a_bert_model_that_disagrees_with_the_fine_tuned_config(data, tmp_path):  # noqa: F811
    from inference import export

    make_step_dir(tmp_path / "phase1", data / "vocab.txt")
    run_squad.main(squad_args(data, tmp_path / "out", "--from-pretrained-params", str(tmp_path / "phase1")))
    fine_tuned = tmp_path / "out" / "bert-tiny" / "squad"
    args = export.build_parser().parse_args(["--checkpoint", str(fine_tuned), "--output-dir", str(tmp_path / "x"),
                                             "--vocab-file", str(data / "vocab.txt"), "--do-lower-case",
                                             "--bert-model", "bert-mini"])
    with pytest.raises(ValueError, match=r"^--bert-model bert-mini describes another model than the checkpoint's "
                                         rf"{fine_tuned}/bert_config.json \(bert-tiny; "):
        export.export_checkpoint(args)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------ item 7: evaluation only
def test_pretraining_inference_builds_no_optimizer_and_writes_its_report(shards, tmp_path, monkeypatch,  # noqa: F811
                                                                         caplog):
    make_step_dir(tmp_path / "phase1", shards[1], with_config=False)  # an old one: the flag names the model
    monkeypatch.chdir(tmp_path)
    caplog.clear()  # making the step dir trained (and logged its optimizer): only the evaluation counts
    with caplog.at_level(logging.INFO):
        result = run_pretraining_inference.main([
            "--init-checkpoint", str(tmp_path / "phase1"), "--input-dir", shards[0], "--vocab-file", shards[1],
            "--bert-model", "bert-tiny",
            "--max-seq-length", "128", "--max-predictions-per-seq", "20", "--device", "cpu", "--batch-size", "4",
            "--num-eval-batches", "1", "--sequence-length-alignment", "8"])
    assert result["eval_sequences"] == 4
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith(("optimizer ", "CPU LAMB update"))]
    report = tmp_path / run_pretraining_inference.DEFAULT_REPORT
    assert report.is_file() and "eval_mlm_loss" in report.read_text()


def test_pretraining_inference_help_names_its_real_report_default():
    text = run_pretraining_inference.build_parser().format_help()
    assert "pretraining_inference_report.json in the current directory" in " ".join(text.split())
    assert "<output-dir>" not in text
