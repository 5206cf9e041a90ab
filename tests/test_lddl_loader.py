"""data.loader.lddl_loader: feeds from LDDL shards, rank split, shuffling, workers, exact resume and errors.

Expected values come from hand-built rows, from reading the same Parquet files directly with pyarrow (every
row must come out exactly once per epoch, decoded back to its tokens), and from the real LDDL 0.1.0
fixtures in ../shared when present.
"""
import collections
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import lddl_format
from data.loader import lddl_loader
from data.loader.lddl_loader import LddlReader, get_bert_pretrain_data_loader
from data.masking import num_to_predict

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "data" / "lddl-fixtures"
UNCASED = SHARED / "vocab" / "bert-base-uncased-vocab.txt"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "##s", "."]
FEED_KEYS = {"input_ids", "token_type_ids", "attention_mask", "next_sentence_labels", "masked_lm_labels"}


# ------------------------------------------------------------------------------------------------
# helpers: a tiny vocab and LDDL directories written with data.lddl_format
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(SPECIALS + WORDS) + "\n", encoding="utf-8")
    return path


def _random_rows(rng, n, static, lo, hi):
    """n LDDL rows of WORDS, A and B of lo..hi tokens; static masking replaces chosen tokens by [MASK] and
    records the originals."""
    rows = []
    for _ in range(n):
        a = list(rng.choice(WORDS, size=rng.integers(lo, hi + 1)))
        b = list(rng.choice(WORDS, size=rng.integers(lo, hi + 1)))
        row = {"A": a, "B": b, "is_random_next": bool(rng.integers(0, 2)), "num_tokens": len(a) + len(b) + 3}
        if static:
            seq = ["[CLS]"] + a + ["[SEP]"] + b + ["[SEP]"]
            cand = [i for i, t in enumerate(seq) if t not in ("[CLS]", "[SEP]")]
            pos = sorted(rng.choice(cand, size=min(len(cand), rng.integers(1, 4)), replace=False).tolist())
            row["masked_lm_labels"] = [seq[p] for p in pos]
            row["masked_lm_positions"] = pos
            for p in pos:
                seq[p] = "[MASK]"
            row["A"], row["B"] = seq[1:1 + len(a)], seq[2 + len(a):-1]
        rows.append(row)
    return rows


def _table(rows, static, bin_id=None):
    cols = {"A": [" ".join(r["A"]) for r in rows], "B": [" ".join(r["B"]) for r in rows],
            "is_random_next": [r["is_random_next"] for r in rows], "num_tokens": [r["num_tokens"] for r in rows]}
    if static:
        cols["masked_lm_positions"] = [lddl_format.encode_positions(r["masked_lm_positions"]) for r in rows]
        cols["masked_lm_labels"] = [" ".join(r["masked_lm_labels"]) for r in rows]
    schema = lddl_format.make_schema(static, bin_id is not None)
    if bin_id is not None:
        cols["bin_id"] = [bin_id] * len(rows)
    return pa.Table.from_pydict(cols, schema=schema), schema


def make_dataset(directory, rows_per_file, *, static=False, binned=False, seed=0, num_samples=True):
    """rows_per_file: list over shards of list over bins of row counts.

    Bin b's rows have 5 + 8b .. 9 + 8b tokens, so a batch's bin can be read off its lengths."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    counts = {}
    for k, per_bin in enumerate(rows_per_file):
        for b, n in enumerate(per_bin):
            rows = _random_rows(rng, n, static, *((1 + 4 * b, 3 + 4 * b) if binned else (1, 9)))
            table, schema = _table(rows, static, b if binned else None)
            name = lddl_format.shard_name(k, b if binned else None)
            lddl_format.write_table(table, os.path.join(directory, name), schema)
            counts[name] = n
    if num_samples:
        lddl_format.write_num_samples(directory, counts)
    return directory


def decode_feed(feed, inv_vocab, ignore_index=-1):
    """Feed -> list of (A, B, nsp) token strings per row, with dynamic masking undone via the labels.

    An independent reading of the layout: [CLS] A [SEP] B [SEP] then padding, segment ids 0/1.
    """
    out = []
    labels = feed["masked_lm_labels"]
    for r in range(len(feed["input_ids"])):
        n = int(feed["attention_mask"][r, 0, 0].sum())
        ids = [int(x) for x in feed["input_ids"][r, :n]]
        seg = feed["token_type_ids"][r, :n].tolist()
        toks = [inv_vocab[i] for i in ids]
        assert toks[0] == "[CLS]" and toks[-1] == "[SEP]"
        split = seg.index(1)
        assert toks[split - 1] == "[SEP]" and set(seg[split:]) == {1} and set(seg[:split]) == {0}
        assert not feed["attention_mask"][r, 0, 0, n:].any() and not feed["token_type_ids"][r, n:].any()
        assert (labels[r, n:] == ignore_index).all()
        assert all(inv_vocab[i] == "[PAD]" for i in feed["input_ids"][r, n:])
        out.append((" ".join(toks[1:split - 1]), " ".join(toks[split:-1]), int(feed["next_sentence_labels"][r, 0])))
    return out


def _inv(vocab_path):
    return [line.rstrip("\n") for line in open(vocab_path, encoding="utf-8")]


def _files_rows(directory):
    """All rows of a directory read straight from Parquet: multiset of (A, B, nsp)."""
    rows = collections.Counter()
    for f in lddl_format.list_shards(str(directory)):
        t = pq.read_table(f.path)
        for a, b, nsp in zip(t["A"].to_pylist(), t["B"].to_pylist(), t["is_random_next"].to_pylist()):
            rows[(a, b, int(nsp))] += 1
    return rows


def _epoch(loader):
    return [feed for feed in loader]


def _assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _undo_dynamic(feed):
    """Original token ids: labels hold them wherever a position was predicted."""
    out = dict(feed)
    out["input_ids"] = np.where(feed["masked_lm_labels"] != -1, feed["masked_lm_labels"], feed["input_ids"])
    return out


# ------------------------------------------------------------------------------------------------
# feeds
# ------------------------------------------------------------------------------------------------

def test_collate_hand_built_static_row(vocab_file):
    # [CLS] the [MASK] sat [SEP] on mat [SEP]: position 2 predicts "cat", position 6 keeps "mat".
    reader = LddlReader(vocab_file, static_masking=True, sequence_length_alignment=4, max_seq_length=None,
                        ignore_index=-100, masked_lm_ratio=0.15, max_predictions_per_seq=None)
    table = pa.Table.from_pydict({
        "A": ["the [MASK] sat", "dog"], "B": ["on mat", "ran far away ."], "is_random_next": [True, False],
        "num_tokens": pa.array([8, 8], pa.uint16()),
        "masked_lm_positions": [lddl_format.encode_positions([2, 6]), lddl_format.encode_positions([3])],
        "masked_lm_labels": ["cat mat", "ran"]})
    feed = reader.collate(reader.tokenise(table, "mem"), np.random.default_rng(0))
    v = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    assert set(feed) == FEED_KEYS and all(x.dtype == np.int64 for x in feed.values())
    np.testing.assert_array_equal(feed["input_ids"], [
        [2, v["the"], 4, v["sat"], 3, v["on"], v["mat"], 3],
        [2, v["dog"], 3, v["ran"], v["far"], v["away"], v["."], 3]])
    np.testing.assert_array_equal(feed["token_type_ids"], [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(feed["attention_mask"], np.ones((2, 1, 1, 8)))
    np.testing.assert_array_equal(feed["next_sentence_labels"], [[1], [0]])
    want = np.full((2, 8), -100)
    want[0, 2], want[0, 6], want[1, 3] = v["cat"], v["mat"], v["ran"]
    np.testing.assert_array_equal(feed["masked_lm_labels"], want)


def test_padding_alignment_and_max_seq_length_cap(vocab_file):
    kw = dict(static_masking=False, ignore_index=-1, masked_lm_ratio=0.15, max_predictions_per_seq=None)
    table = pa.Table.from_pydict({"A": ["the cat"], "B": ["sat"], "is_random_next": [False],
                                  "num_tokens": pa.array([6], pa.uint16())})
    for align, cap, want in [(64, None, 64), (4, None, 8), (1, None, 6), (64, 10, 10)]:
        reader = LddlReader(vocab_file, sequence_length_alignment=align, max_seq_length=cap, **kw)
        feed = reader.collate(reader.tokenise(table, "mem"), np.random.default_rng(0))
        assert feed["input_ids"].shape == (1, want)
        assert feed["attention_mask"][0, 0, 0].tolist() == [1] * 6 + [0] * (want - 6)


def test_dynamic_masking_counts_and_candidates(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[40], [40]], seed=1)
    loader = get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=8, masked_lm_ratio=0.3,
                                           max_predictions_per_seq=3, drop_last=False, ignore_index=-7)
    for feed in loader:
        n = feed["attention_mask"][:, 0, 0].sum(1)
        sep = np.argmax(feed["token_type_ids"], axis=1) - 1
        chosen = feed["masked_lm_labels"] != -7
        assert (chosen.sum(1) == num_to_predict(n, n - 3, 0.3, 3)).all()
        assert not chosen[:, 0].any() and not chosen[np.arange(len(n)), sep].any()
        assert not chosen[np.arange(len(n)), n - 1].any()


# ------------------------------------------------------------------------------------------------
# epochs, bins, ranks
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("static", [False, True])
def test_every_row_exactly_once_per_epoch_and_new_order(tmp_path, vocab_file, static):
    d = make_dataset(tmp_path / "d", [[13, 7, 9], [11, 6, 10]], static=static, binned=True, seed=2)
    loader = get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=4, drop_last=False,
                                           shuffle_buffer_size=5)
    inv = _inv(vocab_file)
    epochs = []
    for _ in range(2):
        feeds = _epoch(loader)
        assert len(feeds) == len(loader) == 6 + 4 + 5  # per bin ceil(rows / 4): 24, 13 and 19 rows
        rows = [r for f in feeds for r in decode_feed(f if static else _undo_dynamic(f), inv)]
        assert collections.Counter(rows) == _files_rows(d)
        epochs.append(rows)
    assert epochs[0] != epochs[1]
    assert loader.epoch == 2


def test_one_bin_per_batch_on_real_fixture():
    if not FIXTURES.exists():
        pytest.skip("LDDL fixtures not present")
    loader = get_bert_pretrain_data_loader(FIXTURES / "bal_p9_bin_dyn", vocab_file=UNCASED, batch_size=4,
                                           drop_last=False)
    seen = collections.Counter()
    for feed in loader:
        n = feed["attention_mask"][:, 0, 0].sum(1)
        bins = set(np.minimum((n - 1) // 32, 3).tolist())  # the fixtures: target 128, bin size 32
        assert len(bins) == 1
        seen[bins.pop()] += len(n)
    counts = json.loads((FIXTURES / "bal_p9_bin_dyn" / ".num_samples.json").read_text())
    want = collections.Counter()
    for name, rows in counts.items():
        want[int(name.rsplit("_", 1)[1])] += rows
    assert seen == want


@pytest.mark.parametrize("name", ["bal_p9_bin_masked", "bal_p9_bin_dyn", "bal_p9_unbin_masked",
                                  "bal_p9_unbin_dyn", "bin_masked", "bin_dyn", "unbin_masked", "unbin_dyn"])
def test_real_lddl_fixtures_round_trip(name):
    """Every row of LDDL 0.1.0's output comes out once per epoch, every token is in the uncased vocab."""
    if not FIXTURES.exists() or not UNCASED.exists():
        pytest.skip("LDDL fixtures or vocab not present")
    directory = FIXTURES / name
    loader = get_bert_pretrain_data_loader(directory, vocab_file=UNCASED, batch_size=16, drop_last=False)
    inv = _inv(UNCASED)
    static = "masked" in name
    rows = []
    for feed in loader:
        assert (feed["input_ids"] != 100).all()  # no [UNK]
        rows += decode_feed(feed if static else _undo_dynamic(feed), inv)
    assert collections.Counter(rows) == _files_rows(directory)


def test_static_labels_match_stored_columns_on_fixture():
    if not FIXTURES.exists() or not UNCASED.exists():
        pytest.skip("LDDL fixtures or vocab not present")
    directory = FIXTURES / "bal_p9_unbin_masked"
    want = {}
    for f in sorted(directory.glob("shard-*")):
        t = pq.read_table(f)
        for a, b, pos, lab in zip(t["A"].to_pylist(), t["B"].to_pylist(), t["masked_lm_positions"].to_pylist(),
                               t["masked_lm_labels"].to_pylist()):
            want[a, b] = (lddl_format.decode_positions(pos).tolist(), lab.split())
    inv = _inv(UNCASED)
    loader = get_bert_pretrain_data_loader(directory, vocab_file=UNCASED, batch_size=32, drop_last=False)
    checked = 0
    for feed in loader:
        for r, (a, b, _) in enumerate(decode_feed(feed, inv)):
            pos = np.flatnonzero(feed["masked_lm_labels"][r] != -1).tolist()
            assert (pos, [inv[i] for i in feed["masked_lm_labels"][r, pos]]) == want[a, b]
            checked += 1
    assert checked == 343


def test_rank_split_by_shard_equal_lengths_same_bins(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[5, 9], [7, 8], [5, 9], [4, 11]], binned=True, seed=3)
    loaders = [get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2, rank=r, world_size=2)
               for r in range(2)]
    # Rank 0 has shards 0, 2 (10 and 18 rows per bin), rank 1 shards 1, 3 (11 and 19): both use 10 and 18.
    assert len(loaders[0]) == len(loaders[1]) == 5 + 9
    inv = _inv(vocab_file)
    per_rank = [[_undo_dynamic(f) for f in ld] for ld in loaders]
    for r, shards in enumerate([(0, 2), (1, 3)]):
        allowed = collections.Counter()
        for k in shards:
            for b in range(2):
                t = pq.read_table(os.path.join(d, lddl_format.shard_name(k, b)))
                allowed.update(zip(t["A"].to_pylist(), t["B"].to_pylist(), map(int, t["is_random_next"].to_pylist())))
        got = collections.Counter(row for f in per_rank[r] for row in decode_feed(f, inv))
        assert not got - allowed
    # Both ranks are in the same bin at every step (LDDL keeps ranks' sequence lengths together).
    bins = [[sorted(set((f["attention_mask"][:, 0, 0].sum(1) > 9).tolist())) for f in feeds] for feeds in per_rank]
    assert bins[0] == bins[1] and all(len(b) == 1 for b in bins[0])
    assert sorted(b[0] for b in bins[0]) == [False] * 5 + [True] * 9


def test_world_size_must_divide_shards(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[5], [5], [5]])
    with pytest.raises(ValueError, match=r"3 shards .* 2 ranks.*balance_dask_output --indir .* --num-shards"):
        get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2, rank=0, world_size=2)


def test_rank_from_paddle_env(tmp_path, vocab_file, monkeypatch):
    d = make_dataset(tmp_path / "d", [[6], [6]])
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    state = get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2).state_dict()
    assert (state["rank"], state["world_size"]) == (1, 2)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "two")
    with pytest.raises(ValueError, match="PADDLE_TRAINERS_NUM"):
        get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2)


def test_seed_determinism(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[20, 10], [20, 10]], binned=True)
    build = lambda seed: get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=4, seed=seed)  # noqa
    _assert_same_batches(_epoch(build(1)), _epoch(build(1)))
    a, b = _epoch(build(1)), _epoch(build(2))
    assert any(not np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))


def test_bin_order_is_a_permutation_of_the_multiset(tmp_path, vocab_file):
    files = [lddl_loader.DataFile(f"s{k}_{b}", k, b, rows) for k in range(2) for b, rows in enumerate([30, 5, 12])]
    plan = lddl_loader.SamplingPlan(files, rank=0, world_size=1, batch_size=4, seed=0, shuffle_buffer_size=7,
                                    drop_last=True, where="mem")
    assert plan.bin_batches.tolist() == [15, 2, 6]
    e0, e1 = plan.epoch(0), plan.epoch(1)
    assert collections.Counter(e0.batch_bin.tolist()) == {0: 15, 1: 2, 2: 6}
    assert e0.batch_bin.tolist() != e1.batch_bin.tolist()
    # Every row position of each bin is used exactly once, windows only permute within themselves.
    for j, rows in enumerate([60, 10, 24]):
        got = []
        for i in np.flatnonzero(e0.batch_bin == j):
            _, groups, order, _ = e0.batch_rows(i)
            got += [(f.shard, int(r)) for f, rs in groups for r in rs]
        assert len(got) == len(set(got)) == rows - rows % 4


# ------------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------------

def test_workers_give_identical_batches_and_stop(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[9, 14], [7, 12]], binned=True, seed=4)
    kw = dict(vocab_file=vocab_file, batch_size=3, shuffle_buffer_size=4, drop_last=False)
    serial = get_bert_pretrain_data_loader(d, **kw)
    want = _epoch(serial) + _epoch(serial)
    loader = get_bert_pretrain_data_loader(d, num_workers=2, **kw)
    got = _epoch(loader) + _epoch(loader)  # epoch 2 with workers: LDDL's persistent workers hang here
    _assert_same_batches(got, want)
    it = iter(loader)
    next(it)
    assert len(multiprocessing.active_children()) >= 2
    loader.close()
    assert multiprocessing.active_children() == []


def test_worker_errors_reach_the_parent(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[8], [8]], seed=5)
    loader = get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=4, num_workers=2)
    (Path(d) / lddl_format.shard_name(1)).write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="shard-1.parquet: not a readable Parquet file"):
        _epoch(loader)
    loader.close()
    assert multiprocessing.active_children() == []


# ------------------------------------------------------------------------------------------------
# exact resume
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_is_exact_at_any_point(tmp_path, vocab_file, num_workers):
    d = make_dataset(tmp_path / "d", [[11, 13], [12, 9]], binned=True, seed=6)
    kw = dict(vocab_file=vocab_file, batch_size=3, seed=7, shuffle_buffer_size=5, num_workers=num_workers)
    ref = get_bert_pretrain_data_loader(d, **dict(kw, num_workers=0))
    per_epoch = len(ref)
    want = _epoch(ref) + _epoch(ref) + _epoch(ref)
    # Snapshots: start, mid epoch 0, epoch boundary, mid epoch 1 (fewer with workers: each epoch starts them).
    for consumed in [0, 2, per_epoch, per_epoch + 3] if num_workers == 0 else [per_epoch, per_epoch + 3]:
        run = get_bert_pretrain_data_loader(d, **kw)
        taken = 0
        while taken < consumed:
            for _ in run:
                taken += 1
                if taken == consumed:
                    break
        state = json.loads(json.dumps(run.state_dict()))
        run.close()
        assert state["epoch"] * per_epoch + state["batches_consumed"] == consumed
        resumed = get_bert_pretrain_data_loader(d, **kw)
        resumed.load_state_dict(state)
        got = []
        while len(got) < 3 * per_epoch - consumed:
            got += _epoch(resumed)
        resumed.close()
        _assert_same_batches(got, want[consumed:])


def test_resume_does_not_rebuild_skipped_batches(tmp_path, vocab_file, monkeypatch):
    d = make_dataset(tmp_path / "d", [[40], [40]], seed=8)
    kw = dict(vocab_file=vocab_file, batch_size=2, shuffle_buffer_size=8)
    ref = get_bert_pretrain_data_loader(d, **kw)
    want = _epoch(ref)
    state = dict(ref.state_dict(), epoch=0, batches_consumed=30)
    calls = collections.Counter()

    def counting(name):
        original = getattr(LddlReader, name)

        def wrapper(self, *args):
            calls[name] += 1
            return original(self, *args)
        return wrapper

    for name in ("collate", "read"):
        monkeypatch.setattr(LddlReader, name, counting(name))
    resumed = get_bert_pretrain_data_loader(d, **kw)
    calls.clear()  # the constructor's probe of the first rows
    resumed.load_state_dict(state)
    first = next(iter(resumed))
    _assert_same_batches([first], [want[30]])
    assert calls["collate"] == 1 and calls["read"] <= 2


def test_each_file_is_read_once_per_epoch(tmp_path, vocab_file, monkeypatch):
    d = make_dataset(tmp_path / "d", [[7, 9], [8, 6], [5, 4], [9, 9]], binned=True, seed=10)
    reads = collections.Counter()
    original = LddlReader.read

    def counting(self, data_file):
        reads[os.path.basename(data_file.path)] += 1
        return original(self, data_file)

    monkeypatch.setattr(LddlReader, "read", counting)
    loader = get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2, shuffle_buffer_size=5)
    for epoch in range(2):
        _epoch(loader)
        assert reads == {name: epoch + 1 for name in os.listdir(d) if name.startswith("shard-")}


def test_load_state_dict_refuses_changes(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[12], [12]])
    other = make_dataset(tmp_path / "other", [[12], [13]])
    state = get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2).state_dict()
    cases = [(dict(directory=d, batch_size=3), "batch_size: 2 in the checkpoint, 3 now"),
             (dict(directory=d, world_size=2, rank=1), "world_size: 1 in the checkpoint, 2 now"),
             (dict(directory=d, seed=5), "seed: 42 in the checkpoint, 5 now"),
             (dict(directory=other), "dataset: 2 files / 24 rows in the checkpoint, 2 files / 25 rows now")]
    for kw, message in cases:
        kw = dict(dict(batch_size=2), **kw)
        loader = get_bert_pretrain_data_loader(kw.pop("directory"), vocab_file=vocab_file, **kw)
        with pytest.raises(ValueError, match=message):
            loader.load_state_dict(state)
    loader = get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2)
    with pytest.raises(ValueError, match="format_version"):
        loader.load_state_dict(dict(state, format_version=99))
    # Another rank's state of the same run is fine (only rank 0 writes checkpoints).
    two = [get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2, rank=r, world_size=2)
           for r in range(2)]
    next(iter(two[0]))
    two[1].load_state_dict(two[0].state_dict())
    assert two[1].state_dict()["batches_consumed"] == 1


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

def test_errors_name_the_problem(tmp_path, vocab_file):
    load = lambda d, **kw: get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2, **kw)  # noqa
    with pytest.raises(ValueError, match="does not exist"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no LDDL data files"):
        load(tmp_path / "empty")
    d = make_dataset(tmp_path / "zero", [[4], [0]])
    with pytest.raises(ValueError, match=r"shard\(s\) \['shard-1.parquet'\] have no rows"):
        load(d)
    d = make_dataset(tmp_path / "corrupt", [[4], [4]], num_samples=False)
    (Path(d) / "shard-1.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ValueError, match="shard-1.parquet"):
        load(d)
    d = make_dataset(tmp_path / "cols", [[4]])
    pq.write_table(pq.read_table(Path(d) / "shard-0.parquet").drop_columns(["B"]), Path(d) / "shard-0.parquet")
    with pytest.raises(ValueError, match="shard-0.parquet.*not .*LDDL"):
        load(d)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=0)
    with pytest.raises(ValueError, match="masked_lm_ratio"):
        load(d, masked_lm_ratio=1.5)


def test_vocab_mismatch_reports_unknown_tokens(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[6]])
    small = tmp_path / "small.txt"
    small.write_text("\n".join(SPECIALS + ["the", "cat"]) + "\n")
    with pytest.raises(ValueError, match=r"shard-0.parquet: column A .* not in the vocab .*small.txt, e\.g\. \["):
        get_bert_pretrain_data_loader(d, vocab_file=small, batch_size=2)


def test_bad_rows_are_reported_with_their_file(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[6]], seed=9)
    loader = lambda **kw: get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2, **kw)  # noqa
    longest = max(pq.read_table(Path(d) / "shard-0.parquet")["num_tokens"].to_pylist())
    with pytest.raises(ValueError, match=f"shard-0.parquet: row .* {longest} tokens, more than max_seq_length"):
        loader(max_seq_length=longest - 1)
    table = pq.read_table(Path(d) / "shard-0.parquet")
    bad = table.set_column(3, "num_tokens", pa.array([99] * 6, pa.uint16()))
    pq.write_table(bad, Path(d) / "shard-0.parquet")
    with pytest.raises(ValueError, match="shard-0.parquet: row 0 has num_tokens=99"):
        loader()


def test_row_count_must_match_num_samples(tmp_path, vocab_file):
    # Caught when the loader is built (footers are read then), not batches later in the middle of training.
    d = make_dataset(tmp_path / "d", [[6], [6]])
    lddl_format.write_num_samples(d, {"shard-0.parquet": 6, "shard-1.parquet": 8})
    with pytest.raises(ValueError, match="shard-1.parquet' has 6 rows but .num_samples.json says 8"):
        get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2)


def test_shard_listed_but_missing_is_an_error(tmp_path, vocab_file):
    # Issue 8 defect 4: a listed shard deleted from disk was skipped; training ran on 3 of 4 shards.
    d = make_dataset(tmp_path / "d", [[3, 4], [3, 4], [3, 4], [3, 4]], binned=True)
    os.remove(Path(d) / "shard-2.parquet_1")
    with pytest.raises(ValueError) as err:
        get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2)
    message = str(err.value)
    assert str(d) in message and "shard-2.parquet_1" in message and "missing" in message
    assert "shard-2.parquet_0" not in message  # only the file that is gone is named


def test_shard_on_disk_but_not_listed_is_an_error(tmp_path, vocab_file):
    d = make_dataset(tmp_path / "d", [[6], [6]])
    counts = lddl_format.read_num_samples(d)
    lddl_format.write_num_samples(d, {"shard-0.parquet": counts["shard-0.parquet"]})
    with pytest.raises(ValueError, match=r"not listed in \.num_samples\.json: shard-1\.parquet"):
        get_bert_pretrain_data_loader(d, vocab_file=vocab_file, batch_size=2)


def test_real_fixture_with_a_deleted_shard_is_refused(tmp_path):
    # The repro on the real LDDL output: copy, delete shard-2.parquet_1, build the loader.
    import shutil

    from conftest import shared_path

    source = shared_path("data", "lddl-fixtures", "bal_p9_bin_masked")
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    for path in copy.iterdir():
        path.chmod(0o644)
    os.remove(copy / "shard-2.parquet_1")
    with pytest.raises(ValueError, match=r"'.*copy' is damaged: 1 file\(s\) listed in .num_samples.json are "
                                         r"missing: shard-2\.parquet_1"):
        get_bert_pretrain_data_loader(copy, vocab_file=shared_path("vocab", "bert-base-uncased-vocab.txt"),
                                      batch_size=4)


def test_decode_positions_matches_lddl_format(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 65535, size=n).astype(np.uint16) for n in [0, 1, 5, 20, 80]]
    blobs = pa.array([lddl_format.encode_positions(a) for a in arrays], pa.binary())
    for sliced in (blobs, blobs.slice(1, 3)):
        flat, counts = lddl_loader.decode_npy_positions(sliced, "mem")
        want = [lddl_format.decode_positions(b).astype(np.int64) for b in sliced.to_pylist()]
        assert counts.tolist() == [len(w) for w in want]
        np.testing.assert_array_equal(flat, np.concatenate(want))
