"""GLUE task definitions, readers for their real TSV files, and sentence / pair features.

Owns: `TASKS` (the nine GLUE tasks: their file layouts, label sets, dev and test splits and submission file
names, as released by the GLUE benchmark), `read_examples` (one split of one task into `GlueExample`s),
`examples_to_features` (WordPiece ids through the project's tokenizer, in fixed-length numpy arrays) and
`batch_of_rows` (numpy feed dicts). Does not own: the model, losses, metrics (`tasks.glue_metrics`) or the
training loop (`tasks.glue`). No Paddle here.

Reading rules (what Google's `run_classifier.py` does, made strict):
  * files are UTF-8 (a leading byte-order mark, as MRPC's train/dev files have, is dropped) and rows end
    at "\\n" only, so a stray "\\r" or U+2028 inside a sentence stays part of it;
  * fields are split on tabs with no quoting at all (csv.QUOTE_NONE): GLUE sentences contain unbalanced
    double quotes (MRPC dev row 1 starts with one), which a quoting CSV reader would merge with the
    following rows;
  * where the layout has a header, the first line must be exactly that header (the column names as GLUE
    released them; CoLA's train/dev files alone have none) and is then skipped; every row must have the
    layout's exact number of columns and a label from the task's label set (STS-B: a number in [0, 5]); the
    first line that does not raises one ValueError naming `file:line`. Empty lines are skipped.

Features are Google BERT's: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, segment 1 from b's first token to
its [SEP], and a pair longer than `max_seq_length - 3` loses tokens from the end of the longer side first
(b when equal) until it fits.
"""
import dataclasses
import logging
import math
import os
from typing import Optional, Tuple

import numpy as np

from utils.checks import is_int
from utils.logger import progress

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where things are in one split's TSV: its header line (the column names, or None when the file has no
    header), the exact column count, and the column index of the first sentence, the second sentence (None:
    single sentence), the label (None: unlabeled test file) and the row index (test files: what the
    submission file's `index` column repeats)."""
    header: Optional[Tuple[str, ...]]
    columns: int
    text_a: int
    text_b: Optional[int] = None
    label: Optional[int] = None
    index: Optional[int] = None


def _headed(names, text_a, text_b=None, label=None, index=None):
    """The Layout of a file whose first line is `names` (tab-separated), with the columns given by name so the
    indices cannot drift from the header they are read under."""
    header = tuple(names.split("\t"))
    position = {name: i for i, name in enumerate(header)}
    pick = lambda name: None if name is None else position[name]  # noqa: E731
    return Layout(header, len(header), pick(text_a), pick(text_b), pick(label), pick(index))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One GLUE task.

    Fields:
      name: the canonical spelling (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI).
      labels: the label strings in class-id order; None for the regression task STS-B.
      train, dev, test: the Layout of each split's files.
      dev_splits: file stems evaluated (MNLI: dev_matched, dev_mismatched; else dev).
      test_splits: (file stem, submission file name) pairs (MNLI: matched and mismatched).
    """
    name: str
    labels: Optional[Tuple[str, ...]]
    train: Layout
    dev: Layout
    test: Layout
    dev_splits: Tuple[str, ...] = ("dev",)
    test_splits: Tuple[Tuple[str, str], ...] = ()

    @property
    def is_regression(self):
        return self.labels is None

    @property
    def num_labels(self):
        """Width of the classifier: 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    def layout(self, split):
        """The Layout of a split stem ('train', 'dev', 'dev_matched', 'test', 'test_mismatched', ...)."""
        return getattr(self, split.split("_")[0])


def _task(name, labels, train, dev, test, **kwargs):
    return TaskSpec(name, labels, train, dev, test, test_splits=kwargs.pop("test_splits", (("test", name + ".tsv"),)),
                    **kwargs)


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")
# Headers as released by GLUE (https://gluebenchmark.com/tasks; MRPC as GLUE's download script builds it from
# Microsoft's files, see data.prep.download.build_mrpc). CoLA's train and dev files alone have no header.
_MRPC = "#1 ID\t#2 ID\t#1 String\t#2 String"
_STSB = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
_MNLI = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
         "sentence2_parse\tsentence1\tsentence2")
_RTE = "index\tsentence1\tsentence2"  # also WNLI's
_PAIR = ("sentence1", "sentence2")
TASKS = {spec.name: spec for spec in (
    _task("CoLA", _BINARY, Layout(None, 4, 3, label=1), Layout(None, 4, 3, label=1),
          _headed("index\tsentence", "sentence", index="index")),
    _task("SST-2", _BINARY, _headed("sentence\tlabel", "sentence", label="label"),
          _headed("sentence\tlabel", "sentence", label="label"),
          _headed("index\tsentence", "sentence", index="index")),
    _task("MRPC", _BINARY, _headed("Quality\t" + _MRPC, "#1 String", "#2 String", label="Quality"),
          _headed("Quality\t" + _MRPC, "#1 String", "#2 String", label="Quality"),
          _headed("index\t" + _MRPC, "#1 String", "#2 String", index="index")),
    _task("STS-B", None, _headed(_STSB + "\tscore", *_PAIR, label="score"),
          _headed(_STSB + "\tscore", *_PAIR, label="score"), _headed(_STSB, *_PAIR, index="index")),
    _task("QQP", _BINARY, _headed("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "question1", "question2",
                                  label="is_duplicate"),
          _headed("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "question1", "question2",
                  label="is_duplicate"),
          _headed("id\tquestion1\tquestion2", "question1", "question2", index="id")),
    _task("MNLI", ("contradiction", "entailment", "neutral"),
          _headed(_MNLI + "\tlabel1\tgold_label", *_PAIR, label="gold_label"),
          _headed(_MNLI + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label", *_PAIR, label="gold_label"),
          _headed(_MNLI, *_PAIR, index="index"),
          dev_splits=("dev_matched", "dev_mismatched"),
          test_splits=(("test_matched", "MNLI-m.tsv"), ("test_mismatched", "MNLI-mm.tsv"))),
    _task("QNLI", _ENTAILMENT, _headed("index\tquestion\tsentence\tlabel", "question", "sentence", label="label"),
          _headed("index\tquestion\tsentence\tlabel", "question", "sentence", label="label"),
          _headed("index\tquestion\tsentence", "question", "sentence", index="index")),
    _task("RTE", _ENTAILMENT, _headed(_RTE + "\tlabel", *_PAIR, label="label"),
          _headed(_RTE + "\tlabel", *_PAIR, label="label"), _headed(_RTE, *_PAIR, index="index")),
    _task("WNLI", _BINARY, _headed(_RTE + "\tlabel", *_PAIR, label="label"),
          _headed(_RTE + "\tlabel", *_PAIR, label="label"), _headed(_RTE, *_PAIR, index="index")),
)}
STSB_RANGE = (0.0, 5.0)


def task_spec(name):
    """The TaskSpec of a task name in any case, with or without the dash ('sst-2', 'SST2', 'sts-b').

    Raises:
      ValueError: an unknown task, listing the nine.
    """
    key = str(name).replace("-", "").lower()
    for spec in TASKS.values():
        if spec.name.replace("-", "").lower() == key:
            return spec
    raise ValueError(f"--task-name '{name}' is not a GLUE task; expected one of {', '.join(TASKS)} "
                     "(any case)")


@dataclasses.dataclass(frozen=True)
class GlueExample:
    """One row: guid (`<split>-<line>`), text_a, text_b (None for single-sentence tasks), label (a label
    string, a float for STS-B, None in test files) and index (the test file's index column, else None)."""
    guid: str
    text_a: str
    text_b: Optional[str] = None
    label: object = None
    index: Optional[str] = None


def split_path(data_dir, split):
    """`<data_dir>/<split>.tsv`."""
    return os.path.join(data_dir, split + ".tsv")


def _label(spec, raw, where):
    if spec.is_regression:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not STSB_RANGE[0] <= value <= STSB_RANGE[1]:  # also false for NaN
            raise ValueError(f"{where}: STS-B score {raw!r} is not a number in [0, 5]")
        return value
    if raw not in spec.labels:
        raise ValueError(f"{where}: label {raw!r} is not one of {spec.name}'s labels {list(spec.labels)}")
    return raw


def read_examples(path, spec, split):
    """Read one split of a GLUE task.

    Args:
      path: the TSV file.
      spec: TaskSpec.
      split: the file stem, which picks the layout ('train', 'dev', 'dev_matched', 'test', ...).

    Returns:
      list of GlueExample in file order.

    Raises:
      ValueError: the file is missing, not UTF-8, empty, or a row is malformed (wrong number of columns,
        unknown label, empty sentence); the message names `path:line` and what was expected.
    """
    layout = spec.layout(split)
    if not os.path.isfile(path):
        raise ValueError(f"{path} does not exist: the {spec.name} {split} file (GLUE data directory layout: "
                         f"python -m data.prep.download glue)")
    examples = []
    try:
        # newline="\n": rows end at LF only, so a CR or another Unicode line break stays inside its field.
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if lineno == 1 and layout.header is not None:
                    _check_header(line, layout, spec, split, path)
                    continue
                if not line:
                    continue
                examples.append(_example(line.split("\t"), layout, spec, f"{split}-{lineno}", f"{path}:{lineno}"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not examples:
        raise ValueError(f"{path} has no {spec.name} rows")
    return examples


def _check_header(line, layout, spec, split, path):
    """Refuse a first line that is not this split's header: a file that lost its header would otherwise
    lose its first row to it, and another split's file (dev.tsv copied over test.tsv) would be read by the
    wrong columns (its labels taken for the submission's index)."""
    found = tuple(name.strip() for name in line.split("\t"))
    if found == layout.header:
        return
    known = _known_header(found, spec)
    hint = (f"that is the header of {known}" if known else
            "a file without its header line, or not a GLUE file" if len(found) == layout.columns else
            "another task's or split's file?")
    raise ValueError(f"{path}:1: expected the {spec.name} {split} header {chr(9).join(layout.header)!r}, found "
                     f"{_shorten(line)!r} ({hint})")


def _known_header(found, spec):
    """'a MRPC train/dev file' style description of the splits whose header is `found` (this task's own
    splits if it is one of theirs, else every task's), or None."""
    def splits_of(other):
        return "/".join(s for s in ("train", "dev", "test") if getattr(other, s).header == found)
    owners = [f"{other.name} {splits_of(other)}" for other in ([spec] if splits_of(spec) else TASKS.values())
              if splits_of(other)]
    return f"a {' or '.join(owners)} file" if owners else None


def _shorten(text, limit=120):
    return text if len(text) <= limit else text[:limit] + "..."


def _example(fields, layout, spec, guid, where):
    if len(fields) != layout.columns:
        raise ValueError(f"{where}: {len(fields)} tab-separated columns, a {spec.name} row here has "
                         f"{layout.columns} (a tab inside a sentence, or a truncated row)")
    text_a = fields[layout.text_a]
    text_b = fields[layout.text_b] if layout.text_b is not None else None
    if not text_a.strip() or (text_b is not None and not text_b.strip()):
        raise ValueError(f"{where}: an empty sentence")
    label = _label(spec, fields[layout.label], where) if layout.label is not None else None
    index = fields[layout.index] if layout.index is not None else None
    return GlueExample(guid, text_a, text_b, label, index)


def truncate_pair(tokens_a, tokens_b, max_tokens):
    """Google BERT's `_truncate_seq_pair`: pop from the end of the longer list (b on ties) until the two
    together have at most `max_tokens`. Modifies both lists in place."""
    while len(tokens_a) + len(tokens_b) > max_tokens:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


@dataclasses.dataclass(frozen=True, eq=False)
class GlueFeatures:
    """N examples as model inputs (L = max_seq_length).

    Fields:
      input_ids: int32 [N, L], `[CLS] a [SEP] (b [SEP])` then 0 padding.
      token_type_ids: int8 [N, L], 1 over `b [SEP]`, else 0.
      seq_lengths: int32 [N], real tokens per row.
      labels: int64 [N] class ids, float32 [N] scores (STS-B), or None (test files).
      truncated: int, rows that lost tokens to max_seq_length.
    """
    input_ids: np.ndarray
    token_type_ids: np.ndarray
    seq_lengths: np.ndarray
    labels: Optional[np.ndarray]
    truncated: int = 0

    def __len__(self):
        return int(self.input_ids.shape[0])

    @property
    def max_seq_length(self):
        return int(self.input_ids.shape[1])


def examples_to_features(examples, tokenizer, spec, max_seq_length):
    """Tokenise and pack examples.

    Args:
      examples: list of GlueExample (all labelled, or all unlabelled).
      tokenizer: `tokenizer.BertTokenizer` (or anything with tokenize / convert_tokens_to_ids).
      spec: TaskSpec (label ids, regression or not).
      max_seq_length: int; >= 3 for a single sentence, >= 5 for pairs ([CLS] + [SEP]s + one token each).

    Returns:
      GlueFeatures.

    Raises:
      ValueError: max_seq_length too small, or a mix of labelled and unlabelled examples.
    """
    pairs = any(e.text_b is not None for e in examples)
    minimum = 5 if pairs else 3
    if not is_int(max_seq_length) or max_seq_length < minimum:
        raise ValueError(f"max_seq_length must be an integer >= {minimum} for {spec.name}, got {max_seq_length!r}")
    labelled = {e.label is not None for e in examples}
    if len(labelled) > 1:
        raise ValueError("examples_to_features: some examples have labels and some do not")
    batch = getattr(tokenizer, "tokenize_batch", None)
    texts = [e.text_a for e in examples] + [e.text_b for e in examples if e.text_b is not None]
    pieces = batch(texts) if batch else [tokenizer.tokenize(t) for t in texts]
    pieces_a, pieces_b = pieces[:len(examples)], iter(pieces[len(examples):])
    cls_id, sep_id = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    n = len(examples)
    input_ids = np.zeros((n, max_seq_length), np.int32)
    token_type_ids = np.zeros((n, max_seq_length), np.int8)
    seq_lengths = np.zeros(n, np.int32)
    truncated = 0
    for row, example in enumerate(progress(examples, desc=f"{spec.name} features", unit="ex")):
        tokens_a = list(pieces_a[row])
        tokens_b = list(next(pieces_b)) if example.text_b is not None else None
        before = len(tokens_a) + len(tokens_b or ())
        if tokens_b is None:
            del tokens_a[max_seq_length - 2:]
        else:
            truncate_pair(tokens_a, tokens_b, max_seq_length - 3)
        truncated += len(tokens_a) + len(tokens_b or ()) < before
        ids = [cls_id] + tokenizer.convert_tokens_to_ids(tokens_a) + [sep_id]
        first = len(ids)
        if tokens_b is not None:
            ids += tokenizer.convert_tokens_to_ids(tokens_b) + [sep_id]
        input_ids[row, :len(ids)] = ids
        token_type_ids[row, first:len(ids)] = 1
        seq_lengths[row] = len(ids)
    labels = None
    if examples and examples[0].label is not None:
        if spec.is_regression:
            labels = np.asarray([e.label for e in examples], np.float32)
        else:
            ids_of = {label: i for i, label in enumerate(spec.labels)}
            labels = np.asarray([ids_of[e.label] for e in examples], np.int64)
    if truncated:
        logger.info("%s: %d of %d examples truncated to %d tokens", spec.name, truncated, n, max_seq_length)
    return GlueFeatures(input_ids, token_type_ids, seq_lengths, labels, truncated)


def batch_of_rows(features, rows, *, with_labels=True):
    """The feed dict of `rows` (int array of row indices).

    Returns:
      dict of arrays: input_ids, token_type_ids int64 [B, L], attention_mask int64 [B, 1, 1, L] (1 = token),
      and with_labels: labels [B, 1] (int64 class ids, or float32 STS-B scores).

    Raises:
      ValueError: with_labels on unlabelled features.
    """
    rows = np.asarray(rows)
    positions = np.arange(features.max_seq_length)
    mask = (positions[None, :] < features.seq_lengths[rows][:, None]).astype(np.int64)
    batch = {"input_ids": features.input_ids[rows].astype(np.int64),
             "token_type_ids": features.token_type_ids[rows].astype(np.int64),
             "attention_mask": mask[:, None, None, :]}
    if with_labels:
        if features.labels is None:
            raise ValueError("these features have no labels (a test file)")
        batch["labels"] = features.labels[rows][:, None]
    return batch
