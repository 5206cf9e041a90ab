"""BERT masked-LM masking, vectorised over a batch of token ids.

Owns: choosing which positions are predicted and what replaces them. Used twice with the same code:
static masking at preprocessing time (`data.prep.preprocess_bert_pretrain`) and dynamic masking at load time
(`data.loader.lddl_loader`), so both produce the same statistics.

Semantics follow Google BERT's `create_masked_lm_predictions`:
  * candidates are all real tokens except [CLS] and [SEP] (and padding);
  * num_to_predict = min(max_predictions_per_seq, max(1, round(num_tokens * masked_lm_prob))), where
    num_tokens counts [CLS]/[SEP] (Google counts the whole instance); capped by the number of candidates;
  * each chosen position becomes [MASK] with p=0.8, keeps its token with p=0.1, or becomes a token drawn
    uniformly from the whole vocabulary with p=0.1.
Python's `round` is banker's rounding and Google uses it; `np.rint` matches it (half to even).
"""
import numpy as np


def num_to_predict(num_tokens, num_candidates, masked_lm_prob, max_predictions_per_seq):
    """How many positions each row predicts.

    Args:
      num_tokens: int array [B], tokens per row including [CLS]/[SEP], excluding padding.
      num_candidates: int array [B], maskable positions per row.
      masked_lm_prob: float in (0, 1].
      max_predictions_per_seq: int >= 1, the hard cap.

    Returns:
      int64 array [B].
    """
    want = np.maximum(1, np.rint(np.asarray(num_tokens) * masked_lm_prob).astype(np.int64))
    return np.minimum(np.minimum(want, max_predictions_per_seq), np.asarray(num_candidates)).astype(np.int64)


def mask_batch(input_ids, candidate_mask, num_tokens, rng, *, vocab_size, mask_id,
               masked_lm_prob=0.15, max_predictions_per_seq=20):
    """Mask a batch of sequences.

    Args:
      input_ids: int64 [B, L], token ids (padding anywhere `candidate_mask` is False is fine).
      candidate_mask: bool [B, L], True where a position may be predicted (not [CLS]/[SEP]/[PAD]).
      num_tokens: int [B], real tokens per row including [CLS]/[SEP] (drives num_to_predict).
      rng: numpy.random.Generator; the only source of randomness, so callers control determinism.
      vocab_size: int, random replacements are drawn from [0, vocab_size).
      mask_id: int, id of [MASK].
      masked_lm_prob: float, fraction of tokens to predict.
      max_predictions_per_seq: int, per-row cap on predictions.

    Returns:
      (masked_ids int64 [B, L], labels int64 [B, L]) where labels holds the original id at predicted
      positions and -1 elsewhere. `input_ids` is not modified.
    """
    input_ids = np.asarray(input_ids, dtype=np.int64)
    candidate_mask = np.asarray(candidate_mask, dtype=bool)
    batch, length = input_ids.shape
    k = num_to_predict(num_tokens, candidate_mask.sum(axis=1), masked_lm_prob, max_predictions_per_seq)
    # A random permutation of the candidates per row: sort uniform scores, non-candidates last.
    scores = rng.random((batch, length))
    scores[~candidate_mask] = 2.0
    order = np.argsort(scores, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(length)[None, :].repeat(batch, axis=0), axis=1)
    chosen = rank < k[:, None]

    labels = np.where(chosen, input_ids, -1)
    action = rng.random((batch, length))
    random_ids = rng.integers(0, vocab_size, size=(batch, length), dtype=np.int64)
    masked = input_ids.copy()
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.9)
    masked[to_mask] = mask_id
    masked[to_random] = random_ids[to_random]
    return masked, labels
