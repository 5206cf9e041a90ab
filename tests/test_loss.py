"""Tests for loss.py against numpy cross-entropy on random values, plus hand-computed cases."""
import math

import numpy as np
import paddle
import pytest

from loss import BertPretrainingCriterion, squad_span_loss


pytestmark = pytest.mark.usefixtures("static_graph")


def np_cross_entropy(logits, labels):
    """Mean of -log softmax(logits)[label], float64."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


def run(build, feed):
    """Build with `build(data vars)` in a fresh program and run it once on `feed`."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        inputs = {name: paddle.static.data(name, [-1] * value.ndim, str(value.dtype))
                  for name, value in feed.items()}
        outputs = build(inputs)
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        values = exe.run(main, feed=feed, fetch_list=list(outputs))
    return [float(v) for v in values]


def pretraining(inputs):
    out = BertPretrainingCriterion()(inputs["mlm_logits"], inputs["nsp_logits"],
                                     inputs["masked_lm_labels"], inputs["next_sentence_labels"])
    return list(out)


def pretraining_feed(rng, batch=3, length=10, vocab=13):
    labels = np.where(rng.random((batch, length)) < 0.3, rng.integers(0, vocab, (batch, length)), -1)
    labels[0, 0] = 4
    n = int((labels != -1).sum())
    return {"mlm_logits": rng.normal(0, 3, (n, vocab)).astype(np.float32),
            "nsp_logits": rng.normal(0, 3, (batch, 2)).astype(np.float32),
            "masked_lm_labels": labels.astype(np.int64),
            "next_sentence_labels": rng.integers(0, 2, (batch, 1)).astype(np.int64)}


def test_pretraining_losses_match_numpy():
    feed = pretraining_feed(np.random.default_rng(0))
    loss, mlm, nsp, mlm_acc, nsp_acc = run(pretraining, feed)
    labels = feed["masked_lm_labels"].reshape(-1)
    labels = labels[labels != -1]  # row-major, the order the model gathers positions in
    nsp_labels = feed["next_sentence_labels"].reshape(-1)
    assert mlm == pytest.approx(np_cross_entropy(feed["mlm_logits"], labels), rel=1e-5)
    assert nsp == pytest.approx(np_cross_entropy(feed["nsp_logits"], nsp_labels), rel=1e-5)
    assert loss == pytest.approx(mlm + nsp, rel=1e-6)
    assert mlm_acc == pytest.approx((feed["mlm_logits"].argmax(-1) == labels).mean())
    assert nsp_acc == pytest.approx((feed["nsp_logits"].argmax(-1) == nsp_labels).mean())


def test_pretraining_hand_computed():
    # Uniform logits over 4 classes: CE = ln 4 whatever the label. NSP logits [0, ln 3] give
    # p(class 1) = 3/4: CE is ln(4/3) for label 1 and ln 4 for label 0; both predict class 1.
    labels = np.array([[-1, 2, -1], [0, -1, -1]], np.int64)
    feed = {"mlm_logits": np.zeros((2, 4), np.float32),
            "nsp_logits": np.array([[0, math.log(3)]] * 2, np.float32),
            "masked_lm_labels": labels, "next_sentence_labels": np.array([[1], [0]], np.int64)}
    loss, mlm, nsp, _, nsp_acc = run(pretraining, feed)
    assert mlm == pytest.approx(math.log(4), rel=1e-6)
    assert nsp == pytest.approx((math.log(4 / 3) + math.log(4)) / 2, rel=1e-6)
    assert loss == pytest.approx(mlm + nsp, rel=1e-6)
    assert nsp_acc == 0.5


def test_mlm_loss_is_mean_over_predicted_tokens_not_batch():
    # Same logits/labels, one row more with no predictions: the MLM loss must not change.
    feed = pretraining_feed(np.random.default_rng(1), batch=2)
    padded = dict(feed, masked_lm_labels=np.concatenate(
        [feed["masked_lm_labels"], np.full((1, 10), -1, np.int64)]),
        next_sentence_labels=np.concatenate([feed["next_sentence_labels"], [[0]]]),
        nsp_logits=np.concatenate([feed["nsp_logits"], [[0.0, 0.0]]]).astype(np.float32))
    assert run(pretraining, padded)[1] == pytest.approx(run(pretraining, feed)[1], rel=1e-6)


def test_squad_span_loss_matches_numpy():
    rng = np.random.default_rng(2)
    feed = {"start": rng.normal(0, 2, (4, 9)).astype(np.float32),
            "end": rng.normal(0, 2, (4, 9)).astype(np.float32),
            "start_positions": rng.integers(0, 9, (4, 1)), "end_positions": rng.integers(0, 9, (4, 1))}
    (loss,) = run(lambda x: [squad_span_loss(x["start"], x["end"], x["start_positions"],
                                             x["end_positions"])], feed)
    expected = (np_cross_entropy(feed["start"], feed["start_positions"][:, 0])
                + np_cross_entropy(feed["end"], feed["end_positions"][:, 0])) / 2
    assert loss == pytest.approx(expected, rel=1e-5)
