"""`python -m inference.export --format hf`: every checkpoint kind (pretraining step/phase directory, SQuAD,
GLUE, encoder only) exported and imported back through our own HF import with every parameter bit-identical;
the written safetensors header and config.json read with the `safetensors` package alone and checked against
hand-written bert-base expectations; the tokenizer files' casing; the model card's numbers from the run's
records; and no output over an input. Tiny configs, in-process (transformers itself is checked by
benchmarks/check_hf_export.py, on a machine that has it)."""
import dataclasses
import json

import numpy as np
import paddle
import pytest

import program as P
from modeling import BertConfig
from utils import hf_import

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "is", "red", "blue", ".", "tom", "has",
         "car", "owns"]  # 23 tokens: padded to 24 rows, so one row is trimmed
TINY = {"attention_probs_dropout_prob": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": 16,
        "initializer_range": 0.02, "intermediate_size": 32, "max_position_embeddings": 64, "num_attention_heads": 2,
        "num_hidden_layers": 2, "type_vocab_size": 2, "layer_norm_eps": 1e-6}


@pytest.fixture(autouse=True)
def dynamic_mode_afterwards():
    yield
    paddle.disable_static()


def _build(kind, cfg, seed):
    train = P.TrainConfig(seed=seed)
    if kind == "pretraining":
        return P.build_pretraining(cfg, train)
    if kind == "glue":
        return P.build_glue(cfg, train, 3, is_training=False)
    return P.build_squad(cfg, train, is_training=False)


def _initialised(kind, cfg, seed, body):
    """Build `kind`'s program, run its startup in a fresh scope, call body(exe, bundle) and return its value
    with {name: array} of every parameter after it."""
    paddle.enable_static()
    bundle = _build(kind, cfg, seed)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        value = body(exe, bundle)
        scope = paddle.static.global_scope()
        params = {p.name: np.array(scope.find_var(p.name).get_tensor()) for p in bundle.main_program.all_parameters()}
    paddle.disable_static()
    return value, params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A vocab, the tiny config, and one checkpoint of each kind with the records its run writes:
    a pretraining phase directory (CheckpointManager, progress.json), a SQuAD model (save_params +
    results.json), an MNLI classifier in run_glue's layout (eval_results.json)."""
    from utils.checkpoint import CheckpointManager, Progress, vocab_sha256
    from utils.weights import save_params

    root = tmp_path_factory.mktemp("hf_export")
    (root / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    cfg = BertConfig.from_dict(dict(TINY, vocab_size=len(SPECIAL) + len(WORDS)))
    (root / "tiny.json").write_text(json.dumps(cfg.to_dict()))
    phase = root / "pretrain" / "phase1"
    progress = Progress(phase=1, global_step=40, epoch=0, loader_state={}, lr_state={}, seeds={"base": 1},
                        config_fingerprint="f" * 64, world_size=1, global_batch_size=4,
                        settings={"--max-seq-length": 64}, vocab_sha256=vocab_sha256(str(root / "vocab.txt")),
                        extra={"config": cfg.to_dict(), "loss": 6.125})
    _, originals = _initialised("pretraining", cfg, 3, lambda exe, b: CheckpointManager(str(phase)).save(
        exe, b.main_program, progress))
    squad, glue = root / "out" / "custom" / "squad", root / "out" / "custom" / "glue" / "MNLI"
    _, squad_params = _initialised("squad", cfg, 4, lambda exe, b: save_params(b.main_program, str(squad),
                                                                               "bert_paddle", cfg))
    (squad / "results.json").write_text(json.dumps({"exact_match": 81.25, "F1": 88.5, "final_loss": 0.75}))
    _, glue_params = _initialised("glue", cfg, 5, lambda exe, b: save_params(b.main_program, str(glue),
                                                                             "bert_paddle", cfg))
    (glue / "eval_results.json").write_text(json.dumps({"task": "MNLI", "acc": 0.5, "mm_acc": 0.25}))
    return {"root": root, "cfg": cfg, "pretraining": (phase, originals), "squad": (squad, squad_params),
            "glue": (glue, glue_params)}


def _export(runs, checkpoint, out, *extra):
    from inference import export

    root = runs["root"]
    return export.main(["--format", "hf", "--checkpoint", str(checkpoint), "--output-dir", str(out), "--vocab-file",
                        str(root / "vocab.txt"), "--do-lower-case", "--config-file", str(root / "tiny.json"), *extra])


def _imported(kind, cfg, directory, allow=()):
    """Every parameter of a fresh `kind` program after our HF import of `directory` (seed differs from the
    exported one, so a parameter that was not imported would show)."""
    from utils.weights import load_hf_pretrained

    return _initialised(kind, cfg, 99, lambda exe, b: load_hf_pretrained(
        exe, b.main_program, str(directory), allow_missing_prefixes=allow, vocab_size=cfg.vocab_size))


def _assert_bit_identical(loaded, originals, cfg, names):
    """Each of `names` equal bit for bit; the padded vocab rows (cut on export) come back as zeros."""
    for name in names:
        got, want = loaded[name], originals[name]
        if name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            assert not got[cfg.vocab_size:].any(), name
            got, want = got[:cfg.vocab_size], want[:cfg.vocab_size]
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name


@pytest.mark.parametrize("kind,architecture", [("pretraining", "BertForPreTraining"),
                                               ("squad", "BertForQuestionAnswering"),
                                               ("glue", "BertForSequenceClassification")])
def test_each_kind_exports_and_round_trips_bit_identically(runs, tmp_path, kind, architecture):
    cfg, (checkpoint, originals) = runs["cfg"], runs[kind]
    summary = _export(runs, checkpoint, tmp_path / "hf")
    assert summary["architecture"] == architecture and summary["trimmed_vocab_rows"] == 1
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [architecture] and config["vocab_size"] == 23
    sources, loaded = _imported(kind, cfg, tmp_path / "hf")
    assert not [n for n, s in sources.items() if "NEWLY" in s]  # every head came from the export
    _assert_bit_identical(loaded, originals, cfg, originals)


def test_encoder_only_is_a_bert_model_without_the_prefix_and_round_trips(runs, tmp_path):
    cfg, (checkpoint, originals) = runs["cfg"], runs["pretraining"]
    summary = _export(runs, checkpoint, tmp_path / "hf", "--encoder-only")
    assert summary["architecture"] == "BertModel"
    assert "embeddings.word_embeddings.weight" in summary["tensors"] and "pooler.dense.weight" in summary["tensors"]
    assert not [n for n in summary["tensors"] if n.startswith(("bert.", "cls.", "qa_outputs."))]
    sources, loaded = _imported("squad", cfg, tmp_path / "hf", allow=("qa_outputs",))
    encoder = [n for n in originals if n.startswith("bert.")]
    assert all("NEWLY" not in sources[n] for n in encoder)
    _assert_bit_identical(loaded, originals, cfg, encoder)


def test_glue_config_carries_labels_and_problem_type_and_the_card_its_metrics(runs, tmp_path):
    _export(runs, runs["glue"][0], tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}
    assert config["label2id"] == {"contradiction": 0, "entailment": 1, "neutral": 2}
    assert config["problem_type"] == "single_label_classification"
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "GLUE MNLI" in card and "- dev acc: 0.5" in card and "- dev mm_acc: 0.25" in card


def test_a_regression_head_is_one_output_with_problem_type_regression():
    cfg = BertConfig.from_dict(dict(TINY, vocab_size=23))
    config = hf_import.hf_config(cfg, hf_import.HF_CLASSIFIER, pad_token_id=0, labels=None, regression=True)
    assert (config["id2label"], config["label2id"], config["problem_type"]) == ({"0": "LABEL_0"}, {"LABEL_0": 0},
                                                                               "regression")
    assert "id2label" not in hf_import.hf_config(cfg, hf_import.HF_QA, pad_token_id=0)


def test_model_cards_take_their_numbers_from_the_records(runs, tmp_path):
    _export(runs, runs["pretraining"][0], tmp_path / "pre")
    card = (tmp_path / "pre" / "README.md").read_text()
    for line in ("- phase: 1", "- steps: 40", "- final_loss: 6.125", "- max_seq_length: 64",
                 "1 padded vocabulary rows of the word embeddings and the MLM bias", "optimizer state"):
        assert line in card
    _export(runs, runs["squad"][0], tmp_path / "squad")
    card = (tmp_path / "squad" / "README.md").read_text()
    for line in ("- exact_match: 81.25", "- F1: 88.5", "- final_loss: 0.75", "AutoModelForQuestionAnswering"):
        assert line in card


def test_tokenizer_files_say_the_casing(runs, tmp_path):
    _export(runs, runs["squad"][0], tmp_path / "uncased")
    out = tmp_path / "uncased"
    assert json.loads((out / "tokenizer_config.json").read_text())["do_lower_case"] is True
    assert (out / "vocab.txt").read_bytes() == (runs["root"] / "vocab.txt").read_bytes()
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special == {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                       "mask_token": "[MASK]"}
    cased = tmp_path / "cased-vocab.txt"  # same size, with capitals: a cased vocab
    cased.write_text("\n".join(SPECIAL + [w.capitalize() for w in WORDS]) + "\n")
    from inference import export
    export.main(["--format", "hf", "--checkpoint", str(runs["squad"][0]), "--output-dir", str(tmp_path / "cased"),
                 "--vocab-file", str(cased), "--config-file", str(runs["root"] / "tiny.json")])
    assert json.loads((tmp_path / "cased" / "tokenizer_config.json").read_text())["do_lower_case"] is False


def test_output_over_an_input_or_paddle_only_flags_are_refused_in_one_line(runs, tmp_path, capsys):
    from inference import export

    squad = runs["squad"][0]
    base = ["--format", "hf", "--checkpoint", str(squad), "--vocab-file", str(runs["root"] / "vocab.txt"),
            "--do-lower-case", "--config-file", str(runs["root"] / "tiny.json")]
    before = sorted(p.name for p in squad.iterdir())
    for out, extra, message in ((squad / "hf", (), "lies inside --checkpoint"), (squad, ("--overwrite",), "is --checkpoint"),
                                (tmp_path / "x", ("--doc-stride", "8"), "--doc-stride applies to Paddle Inference")):
        assert export.cli([*base, "--output-dir", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert sorted(p.name for p in squad.iterdir()) == before and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------
# The written files against HF's BERT schema, read with the `safetensors` package alone

BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12}
LAYERS = 2  # bert-base widths; 2 of its 12 identical layers keep the file at 110 MB instead of 440 MB


def _hf_bert_base_pretraining():
    """HF `BertForPreTraining` (bert-base-uncased) tensor names -> shapes, as transformers saves them:
    Linear weights [out, in], LayerNorm weight/bias, no tied `cls.predictions.decoder.*`."""
    h, i, v = 768, 3072, 30522
    shapes = {"bert.embeddings.word_embeddings.weight": (v, h), "bert.embeddings.position_embeddings.weight": (512, h),
              "bert.embeddings.token_type_embeddings.weight": (2, h), "bert.embeddings.LayerNorm.weight": (h,),
              "bert.embeddings.LayerNorm.bias": (h,), "bert.pooler.dense.weight": (h, h), "bert.pooler.dense.bias": (h,),
              "cls.predictions.bias": (v,), "cls.predictions.transform.dense.weight": (h, h),
              "cls.predictions.transform.dense.bias": (h,), "cls.predictions.transform.LayerNorm.weight": (h,),
              "cls.predictions.transform.LayerNorm.bias": (h,), "cls.seq_relationship.weight": (2, h),
              "cls.seq_relationship.bias": (2,)}
    for n in range(LAYERS):
        p = f"bert.encoder.layer.{n}."
        for proj in ("query", "key", "value"):
            shapes.update({p + f"attention.self.{proj}.weight": (h, h), p + f"attention.self.{proj}.bias": (h,)})
        shapes.update({p + "attention.output.dense.weight": (h, h), p + "attention.output.dense.bias": (h,),
                       p + "attention.output.LayerNorm.weight": (h,), p + "attention.output.LayerNorm.bias": (h,),
                       p + "intermediate.dense.weight": (i, h), p + "intermediate.dense.bias": (i,),
                       p + "output.dense.weight": (h, i), p + "output.dense.bias": (h,),
                       p + "output.LayerNorm.weight": (h,), p + "output.LayerNorm.bias": (h,)})
    return shapes


def _ours_bert_base():
    """Our parameters of the same model, zeros in our layout: Linear weights [in, out], the vocab padded to
    30528 rows (a multiple of 8)."""
    ours = {}
    for name, shape in _hf_bert_base_pretraining().items():
        if name in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
            shape = (30528,) + shape[1:]
        elif len(shape) == 2 and "embeddings" not in name:
            shape = shape[::-1]
        ours[name] = np.zeros(shape, np.float32)
    return ours


def test_safetensors_header_and_config_follow_hf_bert_base_schema(tmp_path):
    from safetensors import safe_open

    from inference import hf_model

    cfg = dataclasses.replace(BertConfig.from_dict(BASE), num_hidden_layers=LAYERS)
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL + [f"w{n}" for n in range(30522 - 5)]) + "\n")
    out = tmp_path / "hf"
    out.mkdir()
    hf_model.write_hf_model(str(out), _ours_bert_base(), cfg, hf_import.HF_PRETRAINING,
                            vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True, pad_token_id=0, card="x\n")
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses a safetensors file without it
        header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    assert header == {k: (s, "F32") for k, s in _hf_bert_base_pretraining().items()}
    config = json.loads((out / "config.json").read_text())
    assert config == dict(BASE, num_hidden_layers=LAYERS, architectures=["BertForPreTraining"], model_type="bert",
                          pad_token_id=0, position_embedding_type="absolute", classifier_dropout=None,
                          torch_dtype="float32")
    assert hf_import.bert_config_from_hf(str(out / "config.json")) == cfg  # and our import reads it back
