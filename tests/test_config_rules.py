"""Issue 21: the rules every entry point shares live once in `tasks.config` (the warm-up range, a sequence
length the model can hold, the vocab read once), and run_pretraining_inference.py validates its flags into one
frozen config, the only thing below validation sees."""
import dataclasses
import json

import pytest

import lr_scheduler
from tasks import flags as common
from tasks.config import OptimConfig, PretrainInferenceConfig, VocabInfo, check_fits_model
from utils.checkpoint import vocab_sha256

TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s"]


@pytest.fixture
def vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TOKENS) + "\n")
    return str(path)


def _optim(**changes):
    values = dict(optimizer="Lamb", learning_rate=1e-3, warmup_start_lr=0.0, warmup_proportion=0.1, beta1=0.9,
                  beta2=0.999, epsilon=1e-6, weight_decay=0.01, gradient_merge_steps=1)
    return OptimConfig(**{**values, **changes})


@pytest.mark.parametrize("value", [2.0, -0.1, float("nan")])
def test_warmup_range_is_refused_by_the_optim_section_in_flag_terms(value):
    with pytest.raises(ValueError) as err:
        _optim(warmup_proportion=value)
    assert str(err.value) == f"--warmup-proportion must be in [0, 1], got {value!r}"
    with pytest.raises(ValueError, match=r"^warmup proportion must be in \[0, 1\]"):  # the one rule, unworded
        lr_scheduler.check_warmup_proportion(value)
    assert _optim(warmup_proportion=1.0).warmup_proportion == 1.0


def test_sequence_length_beyond_the_position_embeddings_is_refused(vocab):
    model_cfg, path, _ = common.resolve_bert_config("bert-tiny", None, vocab)
    check_fits_model(512, model_cfg, path)
    with pytest.raises(ValueError) as err:
        check_fits_model(513, model_cfg, path)
    assert str(err.value) == f"--max-seq-length 513 exceeds max_position_embeddings 512 of {path}"


def test_vocab_info_reads_once_and_answers_size_hash_specials_and_casing(vocab, tmp_path):
    info = VocabInfo.read(vocab)
    assert (info.path, info.size, info.sha256) == (vocab, len(TOKENS), vocab_sha256(vocab))
    assert info.special_ids() == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    info.check_case(True)
    with pytest.raises(ValueError, match="is uncased"):
        info.check_case(False)
    assert "tokens" not in repr(info) and dataclasses.is_dataclass(info)
    assert common.resolve_bert_config("bert-tiny", None, vocab, vocab_size=info.size)[2] == len(TOKENS)
    with pytest.raises(ValueError, match=r"^--vocab-file '.*missing.txt' does not exist or is not a file$"):
        VocabInfo.read(str(tmp_path / "missing.txt"))


def test_vocab_info_refuses_a_checkpoint_trained_with_another_vocab(vocab, tmp_path):
    info = VocabInfo.read(vocab)
    step = tmp_path / "phase1" / "7"
    step.mkdir(parents=True)
    info.check_checkpoint(str(step), "--from-pretrained-params")  # no record: accepted
    (step / "progress.json").write_text(json.dumps({"vocab_sha256": info.sha256}))
    info.check_checkpoint(str(step), "--from-pretrained-params")
    (step / "progress.json").write_text(json.dumps({"vocab_sha256": "ab" * 32}))
    with pytest.raises(ValueError) as err:
        info.check_checkpoint(str(step), "--from-pretrained-params")
    assert str(err.value) == (f"--vocab-file '{vocab}' has SHA-256 {info.sha256}, but --from-pretrained-params "
                              f"'{step}' was trained with a vocab of SHA-256 {'ab' * 32}: give the vocab the "
                              f"checkpoint was trained with")


def test_max_seq_length_adder_keeps_each_callers_default_and_help():
    parser = common.Parser()
    action = common.add_max_seq_length(parser.add_argument_group("g"), 384, "window length in WordPieces")
    assert (action.default, action.help, action.type) == (384, "window length in WordPieces", int)
    assert parser.parse_args(["--max_seq_length", "128"]).max_seq_length == 128


def _inference_args(vocab, tmp_path, *extra):
    import run_pretraining_inference
    (tmp_path / "shards").mkdir(exist_ok=True)
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    argv = ["--init-checkpoint", str(tmp_path / "ckpt"), "--input-dir", str(tmp_path / "shards"), "--vocab-file",
            vocab, "--bert-model", "bert-tiny", "--max-seq-length", "128", "--device", "cpu", *extra]
    return run_pretraining_inference, run_pretraining_inference.build_parser().parse_args(argv)


def test_pretraining_inference_validates_into_one_frozen_config(vocab, tmp_path):
    module, args = _inference_args(vocab, tmp_path)
    cfg = module.validate_args(args)
    assert isinstance(cfg, PretrainInferenceConfig) and cfg.init_path == str(tmp_path / "ckpt")
    assert (cfg.data.max_seq_length, cfg.data.num_workers, cfg.run.log_freq, cfg.num_batches) == (128, 0, None, None)
    assert cfg.model.vocab_size == cfg.vocab.size == len(TOKENS)
    assert cfg.flags["init_checkpoint_resolved"] == str(tmp_path / "ckpt") and cfg.flags["batch_size"] == 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_batches = 3
    _, bench = _inference_args(vocab, tmp_path, "--benchmark", "--benchmark-warmup-steps", "2",
                               "--benchmark-steps", "3")
    assert module.validate_args(bench).num_batches == 5
    _, long = _inference_args(vocab, tmp_path, "--max-seq-length", "1024")
    with pytest.raises(ValueError, match="^--max-seq-length 1024 exceeds max_position_embeddings 512 of "):
        module.validate_args(long)
