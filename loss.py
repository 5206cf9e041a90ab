"""Losses and accuracies for BERT pre-training, SQuAD span extraction and GLUE (static-graph ops).

Owns: `BertPretrainingCriterion` (masked-LM + next-sentence cross-entropy, with accuracies),
`squad_span_loss` and `sequence_classification_loss` (GLUE). Does not own: the heads that produce the
logits (`modeling.py`) or the optimizer.

Reductions follow Google's BERT: the MLM loss is the mean over predicted tokens only (labels != -1),
the NSP loss the mean over the batch, and the pre-training loss is their sum. Cross-entropy uses
`softmax_with_cross_entropy`, which Paddle's AMP lists keep in fp32.
"""
import collections

import paddle
import paddle.nn.functional as F

PretrainingLosses = collections.namedtuple(
    "PretrainingLosses", ["loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"])


def _mean_cross_entropy(logits, labels):
    """logits float [N, C], labels int64 [N, 1] -> float32 scalar, the mean of -log softmax."""
    per_example = F.softmax_with_cross_entropy(logits.astype("float32"), labels)
    return paddle.mean(per_example)


def _accuracy(logits, labels):
    """logits float [N, C], labels int64 [N] -> float32 scalar, fraction with argmax == label."""
    return paddle.mean(paddle.equal(paddle.argmax(logits, axis=-1), labels).astype("float32"))


class BertPretrainingCriterion:
    """MLM + NSP loss for the outputs of `modeling.BertForPretraining`."""

    def __call__(self, mlm_logits, nsp_logits, masked_lm_labels, next_sentence_labels):
        """Build the loss ops.

        Args:
          mlm_logits: float [N, padded_vocab], scores of the N predicted positions, in row-major order
            of `masked_lm_labels` (as the model gathers them).
          nsp_logits: float [B, 2]; class 1 = "B is a random sentence" (LDDL `is_random_next`).
          masked_lm_labels: int64 [B, L], original token id at predicted positions, -1 elsewhere.
          next_sentence_labels: int64 [B, 1].

        Returns:
          PretrainingLosses of float32 scalars: loss = mlm_loss + nsp_loss, mlm_loss (mean over the N
          predicted tokens), nsp_loss (mean over B), mlm_acc, nsp_acc.
        """
        flat = paddle.reshape(masked_lm_labels, [-1])
        # masked_select walks row-major, the same order the model's nonzero/gather_nd used.
        mlm_labels = paddle.masked_select(flat, flat != -1)                       # [N]
        mlm_loss = _mean_cross_entropy(mlm_logits, paddle.unsqueeze(mlm_labels, -1))
        nsp_loss = _mean_cross_entropy(nsp_logits, next_sentence_labels)
        return PretrainingLosses(
            loss=mlm_loss + nsp_loss, mlm_loss=mlm_loss, nsp_loss=nsp_loss,
            mlm_acc=_accuracy(mlm_logits, mlm_labels),
            nsp_acc=_accuracy(nsp_logits, paddle.reshape(next_sentence_labels, [-1])))


def squad_span_loss(start_logits, end_logits, start_positions, end_positions):
    """SQuAD span loss: the average of the start and end cross-entropies.

    Args:
      start_logits, end_logits: float [B, L].
      start_positions, end_positions: int64 [B, 1], token index of the answer start/end
        (0 = [CLS] for unanswerable or out-of-span features).

    Returns:
      float32 scalar, (mean CE(start) + mean CE(end)) / 2.
    """
    return (_mean_cross_entropy(start_logits, start_positions)
            + _mean_cross_entropy(end_logits, end_positions)) / 2.0


def sequence_classification_loss(logits, labels):
    """GLUE loss, as HF's `BertForSequenceClassification`: mean cross-entropy over the batch for class
    logits, mean squared error for a single regression output (STS-B).

    Args:
      logits: float [B, C]; C == 1 means regression.
      labels: int64 [B, 1] class ids (C > 1) or float32 [B, 1] targets (C == 1).

    Returns:
      float32 scalar.
    """
    if logits.shape[-1] == 1:
        diff = paddle.subtract(logits.astype("float32"), labels.astype("float32"))
        return paddle.mean(paddle.multiply(diff, diff))
    return _mean_cross_entropy(logits, labels)
