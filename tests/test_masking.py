"""data.masking: Google BERT masking statistics and caps, checked on large seeded batches."""
import numpy as np
import pytest

from data.masking import mask_batch, num_to_predict


def test_num_to_predict_matches_google_formula():
    # Google: min(max_pred, max(1, int(round(n * p)))); Python's round is half-to-even.
    for n in [1, 3, 10, 17, 30, 128, 512]:
        for cap in [1, 5, 20, 80]:
            want = min(cap, max(1, int(round(n * 0.15))))
            got = num_to_predict(np.array([n]), np.array([10**6]), 0.15, cap)[0]
            assert got == want, (n, cap)
    # Half-to-even: 10 * 0.25 = 2.5 -> 2, 14 * 0.25 = 3.5 -> 4.
    assert num_to_predict(np.array([10, 14]), np.array([99, 99]), 0.25, 99).tolist() == [2, 4]
    # Never more than there are candidates.
    assert num_to_predict(np.array([128]), np.array([3]), 0.15, 20).tolist() == [3]


def _batch(rng, batch=256, length=128, vocab=5000):
    ids = rng.integers(10, vocab, size=(batch, length))
    lengths = rng.integers(20, length + 1, size=batch)
    cand = np.arange(length)[None, :] < lengths[:, None]
    cand[:, 0] = False                                   # [CLS]
    cand[np.arange(batch), lengths - 1] = False          # final [SEP]
    return ids, cand, lengths


def test_mask_statistics_and_invariants():
    rng = np.random.default_rng(123)
    ids, cand, lengths = _batch(rng)
    masked, labels = mask_batch(ids, cand, lengths, np.random.default_rng(7), vocab_size=5000, mask_id=4,
                                max_predictions_per_seq=20)
    chosen = labels != -1
    # Exactly num_to_predict positions per row, only at candidates, labels are the originals.
    assert (chosen.sum(1) == num_to_predict(lengths, cand.sum(1), 0.15, 20)).all()
    assert not (chosen & ~cand).any()
    assert (labels[chosen] == ids[chosen]).all()
    # Unchosen positions untouched.
    assert (masked[~chosen] == ids[~chosen]).all()
    # 80 / 10 / 10 split (random may coincide with the original with prob 1/5000: negligible).
    n = chosen.sum()
    frac_mask = (masked[chosen] == 4).mean()
    frac_keep = (masked[chosen] == ids[chosen]).mean()
    assert abs(frac_mask - 0.8) < 0.03 and abs(frac_keep - 0.1) < 0.02, (n, frac_mask, frac_keep)
    assert not np.shares_memory(masked, ids)


def test_cap_is_honoured_for_long_sequences():
    rng = np.random.default_rng(0)
    ids, cand, lengths = _batch(rng, batch=64, length=512)
    _, labels = mask_batch(ids, cand, lengths, rng, vocab_size=5000, mask_id=4, max_predictions_per_seq=50)
    per_row = (labels != -1).sum(1)
    assert per_row.max() == 50                      # rows with round(n * 0.15) > 50 hit the cap exactly
    assert (per_row == np.minimum(50, np.maximum(1, np.rint(lengths * 0.15)))).all()


def test_deterministic_for_a_seed_and_positions_uniform():
    rng = np.random.default_rng(5)
    ids, cand, lengths = _batch(rng, batch=512, length=64)
    a = mask_batch(ids, cand, lengths, np.random.default_rng(1), vocab_size=100, mask_id=4)
    b = mask_batch(ids, cand, lengths, np.random.default_rng(1), vocab_size=100, mask_id=4)
    assert all((x == y).all() for x, y in zip(a, b))
    # Each candidate position is about equally likely: compare position 1 vs position 10 rates.
    full = lengths >= 12
    rate = (a[1][full] != -1).mean(axis=0)
    assert abs(rate[1] - rate[10]) < 0.05
