"""data.loader.hdf5_loader: legacy NVIDIA/Google HDF5 shards through get_bert_pretrain_data_loader.

Shards are written here with h5py from hand-made samples, so every expected feed value is known.
"""
import collections
import json

import h5py
import numpy as np
import pytest

from data.loader.lddl_loader import get_bert_pretrain_data_loader

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
V = {t: i for i, t in enumerate(SPECIALS + WORDS)}


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    return path


def write_shard(path, samples, seq_len=16, max_pred=4):
    """samples: list of (tokens, segment ids, {position: original token}, nsp label), unpadded."""
    n = len(samples)
    arrays = {k: np.zeros((n, seq_len), np.int32) for k in ("input_ids", "input_mask", "segment_ids")}
    arrays.update({k: np.zeros((n, max_pred), np.int32) for k in ("masked_lm_positions", "masked_lm_ids")})
    arrays["next_sentence_labels"] = np.zeros(n, np.int32)
    for r, (tokens, segments, masked, nsp) in enumerate(samples):
        arrays["input_ids"][r, :len(tokens)] = [V[t] for t in tokens]
        arrays["input_mask"][r, :len(tokens)] = 1
        arrays["segment_ids"][r, :len(tokens)] = segments
        for j, (pos, tok) in enumerate(sorted(masked.items())):
            arrays["masked_lm_positions"][r, j], arrays["masked_lm_ids"][r, j] = pos, V[tok]
        arrays["next_sentence_labels"][r] = nsp
    with h5py.File(path, "w") as h5:
        for key, value in arrays.items():
            h5.create_dataset(key, data=value, compression="gzip")
    return path


def _random_samples(rng, n):
    samples = []
    for _ in range(n):
        a = list(rng.choice(WORDS, size=rng.integers(1, 5)))
        b = list(rng.choice(WORDS, size=rng.integers(1, 5)))
        tokens = ["[CLS]"] + a + ["[SEP]"] + b + ["[SEP]"]
        pos = int(rng.integers(1, len(a) + 1))
        masked = {pos: tokens[pos]}
        tokens[pos] = "[MASK]"
        samples.append((tokens, [0] * (len(a) + 2) + [1] * (len(b) + 1), masked, int(rng.integers(0, 2))))
    return samples


def _key(feed, r):
    n = int(feed["attention_mask"][r, 0, 0].sum())
    return tuple(feed["input_ids"][r, :n].tolist()), tuple(feed["masked_lm_labels"][r].tolist()), \
        int(feed["next_sentence_labels"][r, 0])


def test_hand_written_instances_give_the_expected_feed(tmp_path, vocab_file):
    samples = [(["[CLS]", "the", "[MASK]", "[SEP]", "mat", "[SEP]"], [0, 0, 0, 0, 1, 1], {2: "cat"}, 1),
               (["[CLS]", "dog", "[SEP]", "ran", "[SEP]"], [0, 0, 0, 1, 1], {}, 0)]
    (tmp_path / "d").mkdir()
    write_shard(tmp_path / "d" / "part-0.hdf5", samples)
    loader = get_bert_pretrain_data_loader(tmp_path / "d", vocab_file=vocab_file, batch_size=2,
                                           sequence_length_alignment=4, shuffle_buffer_size=1)
    (feed,) = list(loader)
    order = np.argsort(-feed["attention_mask"][:, 0, 0].sum(1))  # the 6-token sample first
    feed = {k: v[order] for k, v in feed.items()}
    assert all(v.dtype == np.int64 for v in feed.values())
    np.testing.assert_array_equal(feed["input_ids"], [[2, V["the"], 4, 3, V["mat"], 3, 0, 0],
                                                      [2, V["dog"], 3, V["ran"], 3, 0, 0, 0]])
    np.testing.assert_array_equal(feed["token_type_ids"], [[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(feed["attention_mask"][:, 0, 0], [[1] * 6 + [0] * 2, [1] * 5 + [0] * 3])
    np.testing.assert_array_equal(feed["masked_lm_labels"], [[-1, -1, V["cat"], -1, -1, -1, -1, -1], [-1] * 8])
    np.testing.assert_array_equal(feed["next_sentence_labels"], [[1], [0]])
    assert feed["attention_mask"].shape == (2, 1, 1, 8)


def test_length_padded_past_stored_length(tmp_path, vocab_file):
    (tmp_path / "d").mkdir()
    write_shard(tmp_path / "d" / "a.h5", _random_samples(np.random.default_rng(0), 4), seq_len=12)
    loader = get_bert_pretrain_data_loader(tmp_path / "d", vocab_file=vocab_file, batch_size=4,
                                           sequence_length_alignment=16, ignore_index=-100)
    (feed,) = list(loader)
    assert feed["input_ids"].shape == (4, 16) and (feed["input_ids"][:, 12:] == 0).all()
    assert ((feed["masked_lm_labels"] != -100).sum(1) == 1).all()


def test_epochs_ranks_and_exact_resume(tmp_path, vocab_file):
    rng = np.random.default_rng(1)
    (tmp_path / "d").mkdir()
    files = []
    for k, n in enumerate([7, 9, 8, 6]):
        files.append(write_shard(tmp_path / "d" / f"shard_{k}.hdf5", _random_samples(rng, n)))
    everything = collections.Counter()
    for f in files:
        with h5py.File(f, "r") as h5:
            for r in range(len(h5["next_sentence_labels"])):
                n = int(h5["input_mask"][r].sum())
                labels = np.full(16, -1)
                pos, ids = h5["masked_lm_positions"][r], h5["masked_lm_ids"][r]
                labels[pos[pos != 0]] = ids[pos != 0]
                everything[tuple(h5["input_ids"][r, :n].tolist()), tuple(labels.tolist()),
                           int(h5["next_sentence_labels"][r])] += 1
    whole = get_bert_pretrain_data_loader(tmp_path / "d", vocab_file=vocab_file, batch_size=4, drop_last=False,
                                          sequence_length_alignment=16)
    for _ in range(2):
        got = collections.Counter(_key(f, r) for f in whole for r in range(len(f["input_ids"])))
        assert got == everything
    # Two ranks: files 0, 2 (15 rows) and 1, 3 (15 rows) -> 3 batches of 4 each, disjoint rows.
    kw = dict(vocab_file=vocab_file, batch_size=4, world_size=2, sequence_length_alignment=16, seed=3)
    ranks = [get_bert_pretrain_data_loader(tmp_path / "d", rank=r, **kw) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    epochs = [[f for _ in range(2) for f in ld] for ld in ranks]
    keys = [{_key(f, r) for f in feeds for r in range(4)} for feeds in epochs]
    assert not keys[0] & keys[1]
    # Resume rank 1 from rank 0's state after 4 batches (epoch 1, batch 1).
    resumed = get_bert_pretrain_data_loader(tmp_path / "d", rank=1, **kw)
    state = dict(ranks[1].state_dict(), epoch=1, batches_consumed=1)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    rest = list(resumed)
    assert len(rest) == 2
    for want, got in zip(epochs[1][4:], rest):
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])


def test_bad_shards_are_named(tmp_path, vocab_file):
    def load(d, **kw):
        return list(get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=1, **kw))

    good = _random_samples(np.random.default_rng(2), 3)
    (tmp_path / "missing").mkdir()
    with h5py.File(tmp_path / "missing" / "x.hdf5", "w") as h5:
        h5.create_dataset("input_ids", data=np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match=r"x.hdf5: missing dataset\(s\) \['input_mask'"):
        load(tmp_path / "missing")
    for name, key, index, value, message in [
            ("oov", "input_ids", (0, 1), 999, r"x.hdf5: input_ids holds ids outside \[0, 13\)"),
            ("mask", "input_mask", (0, 0), 0, "x.hdf5: input_mask must be 1 on the first tokens")]:
        (tmp_path / name).mkdir()
        with h5py.File(write_shard(tmp_path / name / "x.hdf5", good), "r+") as h5:
            h5[key][index] = value  # one bad cell in an otherwise good shard
        with pytest.raises(ValueError, match=message):
            load(tmp_path / name)
    (tmp_path / "three").mkdir()
    for k in range(3):
        write_shard(tmp_path / "three" / f"{k}.hdf5", good)
    with pytest.raises(ValueError, match="3 shards cannot be split evenly over 2 ranks"):
        load(tmp_path / "three", rank=0, world_size=2)
    with pytest.raises(ValueError, match="more than max_seq_length=5"):
        load(tmp_path / "three", max_seq_length=5)
    (tmp_path / "three" / "shard-0.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="both HDF5"):
        load(tmp_path / "three")
