"""Legacy NVIDIA / Google BERT HDF5 pretraining shards, read with the LDDL loader's plan and resume.

Owns: listing a directory of `*.hdf5` / `*.h5` shards, reading and checking one shard, and turning its rows
into the same feed dict the LDDL loader yields. Does not own: sampling, rank split, epochs, workers or the
loader position; those come from `data.loader.lddl_loader` (`SamplingPlan`, `BertPretrainLoader`), so an HDF5
directory behaves exactly like an unbinned LDDL directory with one file per shard: file k goes to rank
k % world_size, batches per epoch are equal on all ranks, and `state_dict()` resumes exactly.
`data.loader.lddl_loader.get_bert_pretrain_data_loader` dispatches here when the directory holds HDF5 files.

Shard layout (what NVIDIA's and Google's `create_pretraining_data.py` write), N samples of length L0:
  input_ids, input_mask, segment_ids   int [N, L0]   input_mask is 1 on real tokens then 0s
  masked_lm_positions, masked_lm_ids   int [N, P]    0-padded (position 0 is [CLS], so 0 means padding)
  next_sentence_labels                 int [N]       1 when B is a random sentence
Each batch is trimmed to its longest sample rounded up to the alignment, like LDDL batches.
"""
import os

import numpy as np

from data.lddl_format import natural_key
from data.loader.lddl_reader import padded_length
from data.loader.loader_plan import DataFile

KEYS_2D = ("input_ids", "input_mask", "segment_ids")
KEYS_MASKED = ("masked_lm_positions", "masked_lm_ids")
KEY_NSP = "next_sentence_labels"
ALL_KEYS = KEYS_2D + KEYS_MASKED + (KEY_NSP,)


def list_hdf5_files(path):
    """The shards of a directory, in natural name order, with their sample counts (read from the headers).

    Args:
      path: directory holding *.hdf5 / *.h5 files.

    Returns:
      list of DataFile (shard = position in that order, bin_id 0).

    Raises:
      ValueError naming the file: none found, unreadable, missing datasets, inconsistent shapes, no rows.
    """
    import h5py

    names = sorted((n for n in os.listdir(path) if n.endswith((".hdf5", ".h5"))), key=natural_key)
    if not names:
        raise ValueError(f"{path}: no *.hdf5 / *.h5 files")
    files = []
    for k, name in enumerate(names):
        full = os.path.join(path, name)
        try:
            with h5py.File(full, "r") as h5:
                rows = _check_layout(full, {key: h5[key].shape for key in h5.keys()})
        except OSError as e:
            raise ValueError(f"{full}: not a readable HDF5 file ({e})") from None
        if rows == 0:
            raise ValueError(f"{full}: the shard holds no samples; remove it or regenerate the shards")
        files.append(DataFile(path=full, shard=k, bin_id=0, rows=rows))
    return files


def _check_layout(path, shapes):
    """Check dataset names and shapes of one shard; return its number of samples."""
    missing = [k for k in ALL_KEYS if k not in shapes]
    if missing:
        raise ValueError(f"{path}: missing dataset(s) {missing}; BERT HDF5 shards hold {list(ALL_KEYS)}")
    seq = tuple(shapes["input_ids"])
    if len(seq) != 2:
        raise ValueError(f"{path}: input_ids must be 2-D [samples, seq_len], got shape {seq}")
    n = seq[0]
    for key in KEYS_2D:
        if tuple(shapes[key]) != tuple(seq):
            raise ValueError(f"{path}: {key} has shape {shapes[key]}, input_ids {seq}")
    pred = shapes["masked_lm_positions"]
    if len(pred) != 2 or pred[0] != n or tuple(shapes["masked_lm_ids"]) != tuple(pred):
        raise ValueError(f"{path}: masked_lm_positions {pred} and masked_lm_ids {shapes['masked_lm_ids']} must "
                         f"both be [{n}, max_predictions]")
    if tuple(shapes[KEY_NSP]) not in ((n,), (n, 1)):
        raise ValueError(f"{path}: next_sentence_labels has shape {shapes[KEY_NSP]}, expected ({n},)")
    return int(n)


class Hdf5Reader:
    """Reads HDF5 shards (whole file at a time, like NVIDIA's loader) and collates rows into feeds.

    Args:
      vocab_size: int, every token id must be below it.
      sequence_length_alignment: int >= 1, L is rounded up to a multiple of it.
      max_seq_length: int or None; a longer sample is an error; also caps the rounded L.
      ignore_index: int written to masked_lm_labels where nothing is predicted.
    """

    def __init__(self, vocab_size, *, sequence_length_alignment, max_seq_length, ignore_index):
        self.vocab_size, self.align = vocab_size, sequence_length_alignment
        self.max_seq_length, self.ignore_index = max_seq_length, ignore_index

    def read(self, data_file):
        """Load one shard into numpy arrays and check every row.

        Returns:
          dict: the six datasets (next_sentence_labels flattened to [N]) plus 'length' int64 [N].

        Raises:
          ValueError naming the file: unreadable, changed row count, ids outside the vocab, input_mask not
          1s followed by 0s, a sample longer than max_seq_length, masked positions outside the sample.
        """
        import h5py

        try:
            with h5py.File(data_file.path, "r") as h5:
                _check_layout(data_file.path, {key: h5[key].shape for key in h5.keys()})
                arrays = {key: np.asarray(h5[key][...]) for key in ALL_KEYS}
        except OSError as e:
            raise ValueError(f"{data_file.path}: not a readable HDF5 file ({e})") from None
        arrays[KEY_NSP] = arrays[KEY_NSP].reshape(-1)
        if len(arrays[KEY_NSP]) != data_file.rows:
            raise ValueError(f"{data_file.path}: has {len(arrays[KEY_NSP])} samples, listed with {data_file.rows}")
        arrays["length"] = self._check_rows(data_file.path, arrays)
        return arrays

    def _check_rows(self, path, arrays):
        mask = arrays["input_mask"]
        length = mask.sum(axis=1).astype(np.int64)
        if not np.array_equal(mask != 0, np.arange(mask.shape[1])[None, :] < length[:, None]):
            raise ValueError(f"{path}: input_mask must be 1 on the first tokens and 0 after them")
        for key in ("input_ids", "masked_lm_ids"):
            if arrays[key].size and (arrays[key].min() < 0 or arrays[key].max() >= self.vocab_size):
                raise ValueError(f"{path}: {key} holds ids outside [0, {self.vocab_size}): the vocab does not "
                                 f"match the shards")
        if self.max_seq_length is not None and length.max(initial=0) > self.max_seq_length:
            raise ValueError(f"{path}: a sample has {length.max()} tokens, more than max_seq_length="
                             f"{self.max_seq_length}")
        pos = arrays["masked_lm_positions"].astype(np.int64)
        if ((pos < 0) | (pos >= length[:, None])).any():
            raise ValueError(f"{path}: masked_lm_positions point outside their sample")
        return length

    def make_batch(self, parts, order, mask_seed):
        """Rows of loaded shards -> feed dict (`mask_seed` is unused: HDF5 shards are statically masked).

        Args:
          parts: list of (DataFile, arrays from `read`, int64 rows [m]).
          order: int64 [n], batch row j is row order[j] of the parts' rows concatenated.
        """
        del mask_seed
        rows = {key: np.concatenate([arrays[key][r] for _, arrays, r in parts])[order]
                for key in ALL_KEYS + ("length",)}
        return self.collate(rows)

    def collate(self, rows):
        """Arrays of n samples (as from `read`) -> pretraining feed dict.

        Returns:
          dict of int64 arrays: input_ids [n, L], token_type_ids [n, L], attention_mask [n, 1, 1, L],
          next_sentence_labels [n, 1], masked_lm_labels [n, L] (masked_lm_ids at masked_lm_positions,
          ignore_index elsewhere); L = longest sample rounded up to the alignment, capped at max_seq_length.
        """
        n, stored = rows["input_ids"].shape
        seq_len = padded_length(int(rows["length"].max()), self.align, self.max_seq_length)
        keep = min(seq_len, stored)

        def trimmed(key):
            out = np.zeros((n, seq_len), np.int64)
            out[:, :keep] = rows[key][:, :keep]
            return out

        labels = np.full((n, seq_len), self.ignore_index, np.int64)
        pos = rows["masked_lm_positions"].astype(np.int64)
        real = pos != 0
        labels[np.nonzero(real)[0], pos[real]] = rows["masked_lm_ids"][real]
        return {"input_ids": trimmed("input_ids"), "token_type_ids": trimmed("segment_ids"),
                "attention_mask": trimmed("input_mask")[:, None, None, :],
                "next_sentence_labels": rows[KEY_NSP].astype(np.int64)[:, None],
                "masked_lm_labels": labels}


def build_reader(path, *, vocab_file, ignore_index, sequence_length_alignment, max_seq_length):
    """List the shards of `path` and build their reader (called by `get_bert_pretrain_data_loader`).

    Returns:
      (list of DataFile, Hdf5Reader).

    Raises:
      ValueError: see `list_hdf5_files`, or an unreadable vocab file.
    """
    import tokenizer

    vocab = tokenizer.load_vocab(vocab_file)
    files = list_hdf5_files(path)
    return files, Hdf5Reader(len(vocab), sequence_length_alignment=sequence_length_alignment,
                             max_seq_length=max_seq_length, ignore_index=ignore_index)
