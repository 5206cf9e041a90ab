"""tasks.pretrain_eval: metrics of the for_test program on hand-built batches equal hand-computed values, the
weighting over batches, and determinism (same batches, no dropout).

The hand computation: with every parameter zero except the two output biases, every hidden state is zero
(LayerNorm with gamma = beta = 0 outputs 0, tanh(0) = gelu(0) = 0), so the MLM logits of every predicted
position are exactly `cls.predictions.bias` and the NSP logits exactly `cls.seq_relationship.bias`; the
losses are then closed-form cross-entropies of those vectors.
"""
import numpy as np
import pytest

from modeling import BertConfig
from tasks.pretrain_eval import PretrainEvaluator, batch_counts, combine, load_eval_batches

pytestmark = pytest.mark.usefixtures("static_graph")

VOCAB = 24


def _cfg():
    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=32, type_vocab_size=2,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


@pytest.fixture(scope="module")
def bundle():
    import paddle

    import program
    paddle.enable_static()
    return program.build_pretraining(_cfg(), program.TrainConfig(device="cpu"))


@pytest.fixture
def built(bundle):
    """(executor, bundle, scope): freshly initialised parameters in a scope of this test's own."""
    import paddle
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        yield exe, bundle, scope


def _batch(labels, nsp):
    """A feed of B rows of length 8: labels [B, 8] (-1 = not predicted), nsp [B]."""
    labels = np.asarray(labels, np.int64)
    b, length = labels.shape
    return {"input_ids": np.full((b, length), 5, np.int64), "token_type_ids": np.zeros((b, length), np.int64),
            "attention_mask": np.ones((b, 1, 1, length), np.int64),
            "next_sentence_labels": np.asarray(nsp, np.int64).reshape(b, 1), "masked_lm_labels": labels}


def _set_biases(bundle, scope, mlm_bias, nsp_bias):
    import paddle
    for param in bundle.main_program.all_parameters():
        tensor = scope.find_var(param.name).get_tensor()
        value = np.zeros(np.array(tensor).shape, np.float32)
        if param.name == "cls.predictions.bias":
            value[:len(mlm_bias)] = mlm_bias
        elif param.name == "cls.seq_relationship.bias":
            value[:] = nsp_bias
        tensor.set(value, paddle.CPUPlace())


def _ce(bias, label):
    """-log softmax(bias)[label], by hand."""
    return float(np.log(np.exp(bias - bias.max()).sum()) + bias.max() - bias[label])


def test_metrics_of_hand_built_batches_equal_hand_computed_values(built):
    exe, bundle, scope = built
    mlm_bias = np.linspace(-1.0, 1.3, VOCAB).astype(np.float32)   # argmax = VOCAB - 1
    nsp_bias = np.array([0.4, -0.2], np.float32)                  # argmax = 0
    _set_biases(bundle, scope, mlm_bias, nsp_bias)
    first = _batch([[-1, 3, -1, VOCAB - 1, -1, -1, 7, -1], [-1, -1, VOCAB - 1, -1, -1, -1, -1, -1]], [0, 1])
    second = _batch([[-1, 2, -1, -1, -1, -1, -1, -1]], [1])
    evaluator = PretrainEvaluator(exe, bundle.eval_program, bundle.eval_fetches, [first, second])
    result = evaluator.evaluate()

    predicted = [3, VOCAB - 1, 7, VOCAB - 1, 2]                   # row-major over both batches
    nsp = [0, 1, 1]
    assert result["eval_masked_tokens"] == 5 and result["eval_sequences"] == 3
    np.testing.assert_allclose(result["eval_mlm_loss"], np.mean([_ce(mlm_bias, t) for t in predicted]), rtol=1e-5)
    np.testing.assert_allclose(result["eval_mlm_acc"], 2 / 5, rtol=1e-6)    # the two VOCAB-1 labels
    np.testing.assert_allclose(result["eval_nsp_loss"], np.mean([_ce(nsp_bias, t) for t in nsp]), rtol=1e-5)
    np.testing.assert_allclose(result["eval_nsp_acc"], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(result["eval_loss"], result["eval_mlm_loss"] + result["eval_nsp_loss"], rtol=1e-6)


def test_combine_weights_batch_means_by_tokens_and_sequences():
    per_batch = [({"mlm_loss": 2.0, "mlm_acc": 0.5, "nsp_loss": 1.0, "nsp_acc": 1.0}, 3, 1),
                 ({"mlm_loss": 4.0, "mlm_acc": 0.0, "nsp_loss": 0.5, "nsp_acc": 0.0}, 1, 3)]
    out = combine(per_batch)
    assert out["eval_mlm_loss"] == pytest.approx((2.0 * 3 + 4.0 * 1) / 4)
    assert out["eval_mlm_acc"] == pytest.approx(1.5 / 4)
    assert out["eval_nsp_loss"] == pytest.approx((1.0 * 1 + 0.5 * 3) / 4)
    assert out["eval_nsp_acc"] == pytest.approx(0.25)
    assert out["eval_loss"] == pytest.approx(2.5 + 0.625)
    with pytest.raises(ValueError, match="no predicted"):
        combine([({"mlm_loss": 1, "mlm_acc": 1, "nsp_loss": 1, "nsp_acc": 1}, 0, 2)])
    assert batch_counts(_batch([[-1, 4, 4, -1, -1, -1, -1, -1]], [0])) == (2, 1)


def test_evaluation_is_deterministic_across_calls(built):
    """Random weights and dropout 0.1 in the model: a program that kept dropout on would differ per call."""
    exe, bundle, _ = built
    assert _cfg().hidden_dropout_prob > 0
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((4, 8)) < 0.3, rng.integers(0, VOCAB, (4, 8)), -1)
    labels[:, 1] = 4
    feed = _batch(labels, [0, 1, 1, 0])
    feed["input_ids"] = rng.integers(0, VOCAB, (4, 8))
    evaluator = PretrainEvaluator(exe, bundle.eval_program, bundle.eval_fetches, [feed])
    first, second = evaluator.evaluate(), evaluator.evaluate()
    keys = [k for k in first if k.startswith("eval_")]
    assert {k: first[k] for k in keys} == {k: second[k] for k in keys}


def test_eval_batches_are_the_same_every_load(tmp_path):
    """Dynamic masking from the fixed evaluation seed: two loads give identical arrays."""
    from test_lddl_loader import SPECIALS, WORDS, make_dataset
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    data = make_dataset(tmp_path / "shards", [[20], [20]])

    def load():
        return load_eval_batches(str(data), vocab_file=str(vocab), batch_size=4, num_batches=3,
                                 max_predictions_per_seq=5, sequence_length_alignment=8)

    a, b = load(), load()
    assert len(a) == 3
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
