"""Reading LDDL-format Parquet files into token ids, and collating their rows into pretraining feeds.

Owns: `VocabIndex` (vectorised token -> id lookup), `LddlRows` / `Ragged` (tokenised rows), `LddlReader`
(read + validate one file, `make_batch`, `collate` with static or dynamic masking), `padded_length` and the
vectorised decoding of `masked_lm_positions` blobs. Does not own the file format (`data.lddl_format`), the
masking algorithm (`data.masking`), which rows form a batch (`data.loader.loader_plan`) or the loader
(`data.loader.lddl_loader`).

Reading: a file is read and tokenised (vectorised, see `VocabIndex`) when a batch first needs it and kept
while its bin's shuffle window needs it; batches are then gathered and padded with numpy offset arithmetic.
Measured with `benchmarks/bench_loader.py` (2 shared cores, batch 128, whole epochs of 200k real rows,
num_workers=0): seq 128 75k samples/s static / 48k dynamic masking, seq 512 36k / 25k, 4-7x a per-sample
Python collate of the same batches; figures moved by up to 2x with other load on the machine. Dynamic
masking (`data.masking.mask_batch`) is about 40% of the time; at seq 512 tokenising dominates.
"""
import functools
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data import lddl_format
from data.masking import mask_batch


class VocabIndex:
    """A vocabulary for vectorised lookup of space-separated token strings.

    Splitting with pyarrow (`split_pattern`) copies every token and costs more than the lookup itself, so
    tokens are instead views into the column's own bytes: token k runs from its first byte to the first
    byte of the next token, i.e. it keeps its trailing space when it has one. The lookup table therefore
    holds every vocab token twice, bare ("cat", a row's last token) and with one trailing space ("cat ").

    Args:
      vocab_file: path of a BERT vocab (one token per line).

    Raises:
      ValueError: unreadable vocab or missing [PAD]/[UNK]/[CLS]/[SEP]/[MASK] (from `tokenizer`).
    """

    def __init__(self, vocab_file):
        import tokenizer  # the repo's tokenizer module; imported late so loader import stays light

        vocab = tokenizer.load_vocab(vocab_file)
        self.special = tokenizer.special_token_ids(vocab, vocab_file)
        self.path = os.fspath(vocab_file)
        tokens = list(vocab)
        self.value_set = pa.array(tokens + [t + " " for t in tokens], pa.string())
        ids = np.fromiter(vocab.values(), np.int64, len(vocab))
        self.size = int(ids.max()) + 1
        self.ids = np.concatenate([ids, ids]).astype(np.uint16 if self.size <= 65536 else np.int32)

    def split_lookup(self, strings):
        """Space-separated token strings -> ids.

        Args:
          strings: pyarrow string array [n] without nulls.

        Returns:
          (ids [total tokens]: uint16 (int32 for big vocabs), or int32 with -1 where a token is unknown;
          lengths int64 [n]; tokens: pyarrow string array of the tokens as looked up, for error messages).
        """
        strings = strings.cast(pa.string())
        if strings.buffers()[2] is None:  # every string empty: no data buffer at all
            return np.zeros(0, self.ids.dtype), np.zeros(len(strings), np.int64), pa.array([], pa.string())
        offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset:strings.offset + len(strings) + 1]
        lo, hi = int(offsets[0]), int(offsets[-1])
        data = np.frombuffer(strings.buffers()[2], np.uint8)[lo:hi] if hi > lo else np.zeros(0, np.uint8)
        is_start = np.empty(hi - lo + 1, bool)
        is_start[0] = True
        np.equal(data, 32, out=is_start[1:])  # the byte after a space starts a token ...
        is_start[offsets[:-1] - lo] = True     # ... and so does every row
        starts = np.flatnonzero(is_start[:-1]).astype(np.int32)  # a start at the very end has no bytes
        lengths = np.diff(np.searchsorted(starts, offsets - lo)).astype(np.int64)
        token_offsets = np.append(starts, hi - lo).astype(np.int32) + lo
        tokens = pa.StringArray.from_buffers(len(starts), pa.py_buffer(token_offsets), strings.buffers()[2])
        index = pc.index_in(tokens, value_set=self.value_set)
        if index.null_count:
            return np.where(index.is_null().to_numpy(zero_copy_only=False), -1,
                            self.ids[index.fill_null(0).to_numpy()].astype(np.int32)), lengths, tokens
        return self.ids[index.to_numpy()], lengths, tokens


@dataclass(frozen=True)
class Ragged:
    """Variable-length rows stored flat: row r is flat[offsets[r]:offsets[r+1]]."""
    flat: np.ndarray
    offsets: np.ndarray  # int64 [n + 1], offsets[0] == 0

    @property
    def lengths(self):
        return np.diff(self.offsets)

    def take(self, rows):
        """The rows `rows` (int array [m]) as a new Ragged."""
        starts, lengths = self.offsets[rows], self.offsets[np.asarray(rows) + 1] - self.offsets[rows]
        return Ragged(self.flat[_flat_positions(starts, lengths)], _offsets(lengths))

    @staticmethod
    def concat(parts):
        return Ragged(np.concatenate([p.flat for p in parts]),
                      _offsets(np.concatenate([p.lengths for p in parts])))


def _offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _flat_positions(starts, lengths):
    """Flat indices start[r] + 0..len[r]-1 for every row r, concatenated."""
    lengths = np.asarray(lengths, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - offsets, lengths) + np.arange(int(lengths.sum()),
                                                                                 dtype=np.int64)


@dataclass(frozen=True)
class LddlRows:
    """Tokenised LDDL rows (one file, or one batch): token ids of A and B, NSP labels, static masks.

    a, b: Ragged token ids (uint16, or int32 for big vocabs); nsp: int64 [n] (1 = B is random);
    positions (Ragged int64), labels (Ragged token ids): static masking only, else None.
    """
    a: Ragged
    b: Ragged
    nsp: np.ndarray
    positions: object = None
    labels: object = None

    def __len__(self):
        return len(self.nsp)

    def take(self, rows):
        masked = self.positions is not None
        return LddlRows(self.a.take(rows), self.b.take(rows), self.nsp[rows],
                        self.positions.take(rows) if masked else None, self.labels.take(rows) if masked else None)

    @staticmethod
    def concat(parts):
        masked = parts[0].positions is not None
        return LddlRows(Ragged.concat([p.a for p in parts]), Ragged.concat([p.b for p in parts]),
                        np.concatenate([p.nsp for p in parts]),
                        Ragged.concat([p.positions for p in parts]) if masked else None,
                        Ragged.concat([p.labels for p in parts]) if masked else None)


class LddlReader:
    """Reads LDDL-format Parquet files into token ids and collates rows into pretraining feeds.

    Token strings become ids once per file, when the file is read: pyarrow's lookup costs ~30 ns a token
    but ~2 ms per call to build its hash table of the vocab, too much to pay per batch. Every row is
    validated then, so a bad row is reported with its file. Resuming reads at most the files of the current
    shuffle windows, never the skipped batches. Memory: the files overlapping each bin's current window,
    as 2-byte ids (4 for vocabs over 65,536 tokens), about 0.4 of the Parquet text size uncompressed.

    Args:
      vocab_file: BERT vocab that the shards' WordPiece tokens come from.
      static_masking: bool, the shards carry masked_lm_positions/masked_lm_labels.
      sequence_length_alignment: int >= 1, L is rounded up to a multiple of it.
      max_seq_length: int or None; a longer sample is an error; also caps the rounded L.
      ignore_index: int written to masked_lm_labels where nothing is predicted.
      masked_lm_ratio, max_predictions_per_seq: dynamic masking knobs (None = no per-row cap).
    """

    def __init__(self, vocab_file, *, static_masking, sequence_length_alignment, max_seq_length, ignore_index,
                 masked_lm_ratio, max_predictions_per_seq):
        self.vocab = VocabIndex(vocab_file)
        self.static_masking = static_masking
        self.align, self.max_seq_length, self.ignore_index = sequence_length_alignment, max_seq_length, ignore_index
        self.masked_lm_ratio, self.max_predictions_per_seq = masked_lm_ratio, max_predictions_per_seq
        self.columns = lddl_format.make_schema(static_masking, binned=False).names

    def read(self, data_file):
        """Load and tokenise one file.

        Args:
          data_file: DataFile.

        Returns:
          LddlRows with data_file.rows rows.

        Raises:
          ValueError naming the file: unreadable, contents differing from the SHA-256 its directory recorded,
          missing columns, row count differing from the listing, or a bad row (see `tokenise`).
        """
        table = _read_parquet(_verified_source(data_file), self.columns, data_file.path)
        if table.num_rows != data_file.rows:
            raise ValueError(f"{data_file.path}: has {table.num_rows} rows but the shard listing "
                             f"(.num_samples.json) says {data_file.rows}; rebuild .num_samples.json")
        return self.tokenise(table, data_file.path)

    def tokenise(self, table, path):
        """LDDL columns -> LddlRows, checking every row.

        Args:
          table: pyarrow Table with A, B, is_random_next, num_tokens (+ masked_lm_positions,
            masked_lm_labels for static masking).
          path: str, the file, for error messages.

        Raises:
          ValueError naming `path`: nulls, tokens not in the vocab, num_tokens != len(A)+len(B)+3, a sample
          longer than max_seq_length, masked positions/labels that do not pair up or point outside A and B.
        """
        a, b = self._token_ids(table, "A", path), self._token_ids(table, "B", path)
        num_tokens = a.lengths + b.lengths + 3
        self._check_lengths(table, num_tokens, path)
        nsp = _column_numpy(table, "is_random_next", path).astype(np.int64)
        if not self.static_masking:
            return LddlRows(a, b, nsp)
        _column_numpy(table, "masked_lm_positions", path, check_only=True)
        flat, counts = decode_npy_positions(table.column("masked_lm_positions").combine_chunks(), path)
        positions = Ragged(flat, _offsets(counts))
        labels = self._token_ids(table, "masked_lm_labels", path)
        rows = np.repeat(np.arange(len(counts)), counts)
        bad = labels.lengths != counts
        bad |= np.bincount(rows, (flat <= 0) | (flat >= num_tokens[rows] - 1), minlength=len(counts)) > 0
        bad |= np.bincount(rows, flat == (a.lengths + 1)[rows], minlength=len(counts)) > 0
        if bad.any():
            r = int(np.argmax(bad))
            raise ValueError(f"{path}: row {r} has {counts[r]} masked_lm_positions and {labels.lengths[r]} "
                             f"masked_lm_labels, or a position on [CLS]/[SEP] or past the end")
        return LddlRows(a, b, nsp, positions, labels)

    def _token_ids(self, table, column, path):
        """A space-separated token column -> Ragged token ids (every row non-empty, every token known)."""
        _column_numpy(table, column, path, check_only=True)
        ids, lengths, tokens = self.vocab.split_lookup(table.column(column).combine_chunks())
        if len(lengths) and lengths.min() == 0 and column != "masked_lm_labels":
            raise ValueError(f"{path}: row {int(np.argmin(lengths))} has an empty {column}")
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            row = int(np.searchsorted(np.cumsum(lengths), unknown[0], side="right"))
            # Tokens are views that keep their trailing space (see VocabIndex); show them as written.
            examples = list(dict.fromkeys(t[:-1] if t.endswith(" ") else t
                                          for t in tokens.take(pa.array(unknown[:200])).to_pylist()))[:5]
            raise ValueError(
                f"{path}: column {column} (row {row}) holds tokens that are not in the vocab "
                f"{self.vocab.path}, e.g. {examples} ({len(unknown)} unknown); the shards were made with a "
                f"different vocab (or hold empty tokens from double spaces)")
        return Ragged(ids, _offsets(lengths))

    def _check_lengths(self, table, num_tokens, path):
        stored = _column_numpy(table, "num_tokens", path).astype(np.int64)
        wrong = np.flatnonzero(stored != num_tokens)
        if len(wrong):
            r = wrong[0]
            raise ValueError(f"{path}: row {r} has num_tokens={stored[r]} but len(A)+len(B)+3="
                             f"{num_tokens[r]}; the file is not valid LDDL output")
        if self.max_seq_length is not None and len(num_tokens) and num_tokens.max() > self.max_seq_length:
            r = int(np.argmax(num_tokens))
            raise ValueError(f"{path}: row {r} has {num_tokens[r]} tokens, more than max_seq_length="
                             f"{self.max_seq_length}; preprocess with a smaller --target-seq-length or raise "
                             f"max_seq_length")

    def make_batch(self, parts, order, mask_seed):
        """Rows of loaded files -> feed dict (see `collate`).

        Args:
          parts: list of (DataFile, LddlRows of the file, int64 rows [m]).
          order: int64 [n], batch row j is row order[j] of the parts' rows concatenated.
          mask_seed: list of ints seeding the dynamic-masking RNG of this batch.
        """
        rows = LddlRows.concat([data.take(r) for _, data, r in parts]).take(order)
        return self.collate(rows, np.random.default_rng(mask_seed))

    def collate(self, rows, rng):
        """LddlRows -> pretraining feed dict.

        Args:
          rows: LddlRows [n].
          rng: numpy Generator for dynamic masking (unused with static masking).

        Returns:
          dict of int64 arrays: input_ids [n, L], token_type_ids [n, L], attention_mask [n, 1, 1, L],
          next_sentence_labels [n, 1], masked_lm_labels [n, L] (ignore_index where not predicted);
          L = longest num_tokens rounded up to the alignment (capped at max_seq_length).
        """
        a_len, b_len = rows.a.lengths, rows.b.lengths
        num_tokens = a_len + b_len + 3
        seq_len = padded_length(int(num_tokens.max()), self.align, self.max_seq_length)
        feed = _layout(rows.a.flat, a_len, rows.b.flat, b_len, seq_len, self.vocab.special)
        if self.static_masking:
            labels = np.full((len(rows), seq_len), self.ignore_index, np.int64)
            labels[np.repeat(np.arange(len(rows)), rows.positions.lengths), rows.positions.flat] = rows.labels.flat
        else:
            feed["input_ids"], labels = self._dynamic_mask(feed["input_ids"], a_len, num_tokens, rng)
        feed["masked_lm_labels"] = labels
        feed["next_sentence_labels"] = rows.nsp[:, None].copy()
        return feed

    def _dynamic_mask(self, input_ids, a_len, num_tokens, rng):
        pos = np.arange(input_ids.shape[1])[None, :]
        candidates = (pos > 0) & (pos < num_tokens[:, None] - 1) & (pos != a_len[:, None] + 1)
        cap = self.max_predictions_per_seq if self.max_predictions_per_seq is not None else input_ids.shape[1]
        ids, labels = mask_batch(input_ids, candidates, num_tokens, rng, vocab_size=self.vocab.size,
                                 mask_id=self.vocab.special["mask"], masked_lm_prob=self.masked_lm_ratio,
                                 max_predictions_per_seq=cap)
        if self.ignore_index != -1:
            labels[labels == -1] = self.ignore_index
        return ids, labels


def _column_numpy(table, name, path, check_only=False):
    """A column as numpy, after checking it has no nulls (ValueError naming the file and row)."""
    column = table.column(name)
    if column.null_count:
        r = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: row {r} has a null {name}")
    return None if check_only else column.to_numpy()


def padded_length(longest, align, max_seq_length):
    """Batch length: the longest sample rounded up to the alignment, but never above max_seq_length."""
    length = -(-longest // align) * align
    return min(length, max_seq_length) if max_seq_length is not None else length


def _layout(a_ids, a_len, b_ids, b_len, seq_len, special):
    """Place [CLS] A [SEP] B [SEP] rows into padded arrays with numpy offset arithmetic.

    Returns:
      dict with input_ids, token_type_ids [n, seq_len] and attention_mask [n, 1, 1, seq_len], int64.
    """
    n = len(a_len)
    input_ids = np.full((n, seq_len), special["pad"], np.int64)
    row_base = np.arange(n, dtype=np.int64) * seq_len
    flat = input_ids.reshape(-1)
    flat[row_base] = special["cls"]
    flat[_flat_positions(row_base + 1, a_len)] = a_ids
    flat[row_base + 1 + a_len] = special["sep"]
    flat[_flat_positions(row_base + 2 + a_len, b_len)] = b_ids
    total = a_len + b_len + 3
    flat[row_base + total - 1] = special["sep"]
    pos = np.arange(seq_len)[None, :]
    real = pos < total[:, None]
    token_type = (real & (pos >= (a_len + 2)[:, None])).astype(np.int64)
    return {"input_ids": input_ids, "token_type_ids": token_type,
            "attention_mask": real.astype(np.int64)[:, None, None, :]}


@functools.lru_cache(maxsize=1)
def _npy_fixed_head():
    """The bytes every LDDL positions blob starts with: magic, version 1.0, header length (2 bytes that vary,
    returned as wildcards) and the header dict up to the shape, taken from `lddl_format.encode_positions`
    so the encoding is defined in one place."""
    blob = lddl_format.encode_positions(np.zeros(1, np.uint16))
    head = blob[:blob.index(b"'shape': (") + len(b"'shape': (")]
    wildcard = np.zeros(len(head), bool)
    wildcard[8:10] = True
    return np.frombuffer(head, np.uint8), wildcard


def decode_npy_positions(blobs, path):
    """Decode a column of masked_lm_positions blobs without a Python loop per row.

    Args:
      blobs: pyarrow binary array [n], each `lddl_format.encode_positions` output (np.save of 1-D uint16).
      path: str, the file, for error messages.

    Returns:
      (positions int64 [sum counts], counts int64 [n]).

    Raises:
      ValueError naming the file of a blob that is not a 1-D uint16 .npy array.
    """
    if not len(blobs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, offset_buf, data_buf = blobs.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(blobs.type) else np.int32
    offsets = np.frombuffer(offset_buf, offset_type)[blobs.offset:blobs.offset + len(blobs) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, ends = offsets[:-1], offsets[1:]
    expected, wildcard = _npy_fixed_head()
    if len(starts) and (ends - starts).min() >= len(expected):
        probe = data[starts[:, None] + np.arange(len(expected))]
        if ((probe == expected) | wildcard).all():
            header_len = probe[:, 8].astype(np.int64) + 256 * probe[:, 9]
            first = starts + 10 + header_len
            counts = (ends - first) // 2
            byte_at = np.repeat(first, counts) + 2 * (np.arange(int(counts.sum())) - np.repeat(
                np.cumsum(counts) - counts, counts))
            return data[byte_at].astype(np.int64) + 256 * data[byte_at + 1].astype(np.int64), counts
    return _decode_npy_slow(blobs, path)


def _decode_npy_slow(blobs, path):
    """Fallback (another .npy version or padding): `lddl_format.decode_positions` per row."""
    arrays = []
    for r, blob in enumerate(blobs.to_pylist()):
        try:
            arrays.append(lddl_format.decode_positions(blob).astype(np.int64))
        except Exception as e:  # noqa: BLE001 -- any decoding failure means a corrupt row
            raise ValueError(f"{path}: row {r} has bad masked_lm_positions ({e})") from None
    counts = np.asarray([len(a) for a in arrays], np.int64)
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.int64)), counts


def _verified_source(data_file):
    """What to parse `data_file` from: its path, or, when its directory recorded its SHA-256, its bytes once
    they are proven to be the ones written. The file is read whole either way, so hashing it here costs one
    pass over bytes in memory (well under the tokenising that follows), and no row of an altered file
    ever reaches a batch."""
    if data_file.sha256 is None:
        return data_file.path
    try:
        with open(data_file.path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{data_file.path}: cannot be read ({e})") from None
    if hashlib.sha256(data).hexdigest() != data_file.sha256:
        raise ValueError(f"{data_file.path}: its contents differ from the SHA-256 that "
                         f"{lddl_format.SHARD_DIGESTS_FILE} recorded when the shards were written (rows edited, "
                         f"permuted or corrupted); restore the file from the original, or rebuild the dataset")
    return pa.BufferReader(data)


def _read_parquet(source, columns, path):
    """The `columns` of the Parquet file at `source` (a path or a buffer); `path` names it in errors."""
    try:
        schema = pq.read_schema(source)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; LDDL shards have {list(columns)}")
    try:
        return pq.read_table(source, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
