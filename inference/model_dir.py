"""The exported model directory: its file names, its settings and its manifest, written and checked here.

Owns: the layout `inference.export` writes and `inference.predictor` reads, the `ExportSettings` (the task
the head was fine-tuned for -- SQuAD, or a GLUE task with its labels -- and the tokenizer and window
settings of that run), and the manifest (source checkpoint, SHA-256 of every
file, paddle version, creation time) with the check that a directory is complete and unchanged.
Does not own: building, saving or running models (`inference.export`, `inference.predictor`).

Layout:

    <dir>/model.pdmodel, model.pdiparams            fp32 program + parameters (save_inference_model)
    <dir>/model_int8.pdmodel, model_int8.pdiparams  optional: post-training-quantized copy (inference.quantize)
    <dir>/bert_config.json                          the architecture
    <dir>/vocab.txt                                 the WordPiece vocabulary
    <dir>/settings.json                             ExportSettings (task, labels, lengths, lower-casing)
    <dir>/manifest.json                             written last: what is here and its checksums
"""
import dataclasses
import datetime
import hashlib
import json
import logging
import os
from typing import Optional

from utils.fs import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TASK = "squad"
MODEL_PREFIX = "model"
INT8_PREFIX = "model_int8"
CONFIG_FILE = "bert_config.json"
VOCAB_FILE = "vocab.txt"
SETTINGS_FILE = "settings.json"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (MODEL_PREFIX + ".pdmodel", MODEL_PREFIX + ".pdiparams", CONFIG_FILE, VOCAB_FILE,
                  SETTINGS_FILE)
INT8_FILES = (INT8_PREFIX + ".pdmodel", INT8_PREFIX + ".pdiparams")


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """How text becomes model windows for this model, and what its outputs mean (the fine-tuning run's
    settings).

    Fields: model_name (e.g. bert-large-uncased, or custom); do_lower_case; max_seq_length; doc_stride and
    max_query_length (SQuAD: data.features.squad.FeatureParams; None for GLUE); feed_names and fetch_names
    of the program, in order (the predictor's input and output names); task ("squad", or the canonical GLUE
    task name, e.g. "MRPC"); labels (GLUE: the label strings in class-id order, empty for a regression
    task); regression (GLUE STS-B: one score instead of class probabilities).
    Files written before the GLUE fields existed read as SQuAD exports.
    """
    model_name: str
    do_lower_case: bool
    max_seq_length: int
    doc_stride: Optional[int] = None
    max_query_length: Optional[int] = None
    feed_names: tuple = ("input_ids", "token_type_ids", "attention_mask")
    fetch_names: tuple = ("start_logits", "end_logits")
    task: str = TASK
    labels: tuple = ()
    regression: bool = False

    @property
    def is_squad(self):
        """True for a span-extraction (SQuAD) model, False for a GLUE classifier / regressor."""
        return self.task == TASK

    @property
    def route(self):
        """The HTTP route that serves this model: /v1/answer (SQuAD) or /v1/classify (GLUE)."""
        return "/v1/answer" if self.is_squad else "/v1/classify"

    def to_dict(self):
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f, v in ((f, getattr(self, f.name)) for f in dataclasses.fields(self))}

    @classmethod
    def from_dict(cls, values, source):
        """Raises ValueError naming `source` when a field is missing or of the wrong type."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object")
        task = values.get("task", TASK)
        kinds = {"model_name": str, "do_lower_case": bool, "max_seq_length": int, "feed_names": list,
                 "fetch_names": list, "task": str}
        if task == TASK:
            kinds.update(doc_stride=int, max_query_length=int)
        else:
            kinds.update(labels=list, regression=bool)
        present = dict(values, task=task)
        for name, kind in kinds.items():
            value = present.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"{source}: '{name}' is missing or not a {kind.__name__}; re-export the model")
        if task != TASK and not all(isinstance(label, str) for label in present["labels"]):
            raise ValueError(f"{source}: 'labels' must be a list of strings; re-export the model")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in present.items() if k in kinds})


def is_export_dir(path):
    """True when `path` is a directory with a manifest.json (an export, complete or not: `read_manifest`
    says which)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST_FILE))


def write_manifest(directory, *, source, extra=None, task=TASK):
    """Write manifest.json (last, atomically) over the files now in `directory`.

    Args:
      directory: str, the export directory holding REQUIRED_FILES (and maybe INT8_FILES).
      source: dict describing the source checkpoint (path and sha256 of its parameters file).
      extra: dict of more fields (e.g. the export's verified max |delta logit|, int8 accuracy).
      task: "squad" or the GLUE task name (ExportSettings.task), recorded as the manifest's "task".

    Returns:
      the manifest dict.
    """
    import paddle

    names = [n for n in REQUIRED_FILES + INT8_FILES if os.path.isfile(os.path.join(directory, n))]
    manifest = {"format": FORMAT_VERSION, "task": task, "source_checkpoint": source,
                "paddle_version": paddle.__version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "files": {n: {"sha256": sha256_file(os.path.join(directory, n)),
                              "bytes": os.path.getsize(os.path.join(directory, n))} for n in names},
                **(extra or {})}
    atomic_write_json(os.path.join(directory, MANIFEST_FILE), manifest)
    return manifest


# The manifest entries write_manifest derives from the directory itself; everything else is the exporter's.
_DERIVED_KEYS = ("format", "task", "source_checkpoint", "paddle_version", "created", "files")


def update_manifest(directory, **fields):
    """Rewrite the manifest of an export still being written (after adding a file, e.g. the int8 copy, or a
    record): the files now present are listed and checksummed again, its other entries are kept, and
    `fields` are set.

    Returns:
      the new manifest dict.

    Raises:
      ValueError: as `read_manifest` (a listed file changed since the manifest was written).
    """
    manifest, _ = read_manifest(directory)
    extra = {k: v for k, v in manifest.items() if k not in _DERIVED_KEYS}
    return write_manifest(directory, source=manifest["source_checkpoint"], task=manifest.get("task", TASK),
                          extra=dict(extra, **fields))


def read_manifest(directory):
    """The manifest of an export directory, checked: every listed file present with its size and SHA-256.

    Returns:
      (manifest dict, hex SHA-256 of manifest.json itself).

    Raises:
      ValueError: not a directory, no or unreadable manifest, another format, a missing file or one whose
        size / checksum differs from the manifest (the message names the file and says to re-export).
    """
    if not os.path.isdir(directory):
        raise ValueError(f"model directory '{directory}' does not exist or is not a directory; export one "
                         f"with: python -m inference.export --checkpoint <fine-tuned model> --output-dir DIR")
    path = os.path.join(directory, MANIFEST_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        manifest = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ValueError(f"'{directory}' has no {MANIFEST_FILE}: not an exported model (or an export "
                         f"that did not finish); export it with python -m inference.export") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-export the model") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                         f"this version reads format {FORMAT_VERSION}; re-export the model")
    files = manifest.get("files")
    if not isinstance(files, dict) or any(n not in files for n in REQUIRED_FILES):
        raise ValueError(f"{path} does not list all of {', '.join(REQUIRED_FILES)}; re-export the model")
    for name, entry in files.items():
        file = os.path.join(directory, name)
        if not os.path.isfile(file):
            raise ValueError(f"'{file}' is missing (listed in {MANIFEST_FILE}); re-export the model")
        if os.path.getsize(file) != entry.get("bytes") or sha256_file(file) != entry.get("sha256"):
            raise ValueError(f"'{file}' does not match {MANIFEST_FILE} (size or SHA-256 differs: changed or "
                             f"damaged after export); re-export the model")
    return manifest, hashlib.sha256(raw).hexdigest()


def read_settings(directory):
    """ExportSettings of an export directory (call `read_manifest` first: it checks the file).

    Raises:
      ValueError: unreadable or incomplete settings.json.
    """
    path = os.path.join(directory, SETTINGS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} cannot be read ({err}); re-export the model") from None
    return ExportSettings.from_dict(values, path)
