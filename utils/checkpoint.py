"""Checkpoints and exact resume for static Paddle programs.

Owns:
  * `Progress`: the JSON record saved with every checkpoint (step, epoch, loader position, LR-scheduler
    state, seeds, config fingerprint, world size, global batch, the settings a resume must keep, the
    vocab's SHA-256, file sizes and checksums, schema version), signed with its own SHA-256 and
    cross-checked (step vs LR and loader state) when read: an edited record is a damaged checkpoint.
  * `CheckpointManager`: atomic, checksummed saves; retention by disk scan; `restore()` of every
    persistable from the newest checkpoint that verifies, falling back (with a warning naming the file
    and why) past damaged ones; `supersede()` to move another run's checkpoints out of the way.
  * `check_compatible`: refusing to resume with a changed architecture, world size, global batch, vocab or
    recorded setting (one line: flag, checkpoint value, new value); `recorded_vocab_sha256`: the vocab a
    pretraining checkpoint was trained with (`tasks.config.VocabInfo.check_checkpoint` refuses another).
  * writing named arrays into the scope (`assign_to_scope`), each on the place its tensor already has
    (`tensor_place`), and logging where each parameter came from (`log_parameter_sources`), shared with
    `utils.weights`.

Does not own: loading or saving a model's parameters alone (pretrained or fine-tuned: `utils.weights`), the
bytes of the files (`utils.checkpoint_io`), building programs, running steps, applying
`Progress.lr_state` / `Progress.loader_state` (the run scripts do that with the returned `Progress`),
deciding the config fingerprint's inputs or which settings a resume may change (`tasks.config`), or the
lock that keeps two runs out of one directory (`utils.run_lock`).

Layout on disk (`phase_dir` builds the root):

    <output_dir>/<model_name>/phase<N>/<step>/
        <model_prefix>.pdparams   parameters (pickled dict name -> ndarray, as paddle.static.save writes)
        <model_prefix>.pdopt      every other persistable: Adam/LAMB moments and beta pows, the LR
                                  variable, AMP loss scale and good/bad step counters, fp32 master
                                  weights, the gradient-merge step counter (all-zero merge buffers are
                                  left out and restored as zeros)
        <model_prefix>.pdmodel    the program description (informational)
        bert_config.json          the architecture (`modeling.BertConfig`); older checkpoints lack it
        progress.json             written LAST, with the size and SHA-256 of the files above; a
                                  step directory without it is not a checkpoint. (NVIDIA's reference
                                  names its record <model_prefix>_progress.json and keeps no loader
                                  position or checksums; such a directory is recognised and refused
                                  with that reason.)
    <output_dir>/<model_name>/phase<N>/superseded-<time>-XXXX/<step>/   moved aside, never deleted

A save writes `<step>.tmp-XXXX/`, fsyncs every file and the directory, then renames it to `<step>/`, so
a crash or power cut leaves either the previous set of checkpoints or the new one, never a directory that
looks complete but is not. Retention scans the disk, so a resumed process (or a second manager) purges
the checkpoints of earlier processes. What is deleted: complete checkpoints older than the newest
`keep_last` (retention), and the `<step>.tmp-*` directories of saves that were killed. Everything else
that must make way (a damaged step directory, one replaced by a new save of the same step, the later
steps of a run resumed from an older one) is moved aside to `superseded-*`. A save refuses parameters
holding NaN/inf (the non-finite policy, `utils.nonfinite`, defines the test and the error).

Restores match variables by name. Programs must therefore name their parameters explicitly and be built
the same way (optimizer accumulator names such as `l1.w_moment1_0` come from `paddle.utils.unique_name`;
build under `unique_name.guard()` when a process builds more than one program). A name that does not
match is reported as an error, never skipped.
"""
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time

import numpy as np
import paddle

from utils import checkpoint_io
from utils.checkpoint_io import DamagedCheckpoint, fsync_path
from utils.checks import is_int
from utils.checks import PREVIEW as _PREVIEW
from utils.checks import preview as _preview
from utils.fs import atomic_write_text
from utils.hf_import import NEWLY_INITIALIZED
from utils.nonfinite import NonFiniteParameters, nonfinite_names

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# Version 1 had no `files` (sizes and checksums); version 2 no `settings`, `vocab_sha256` nor a checksum of
# the record itself. Both are still read; what they cannot prove is named in one warning on resume
# (`Progress.unverified`).
_READABLE_VERSIONS = (1, 2, 3)
# The record's own SHA-256, over its other keys as canonical JSON: a hand-edited or corrupted progress.json
# (say lr_state.last_epoch 9 in step 4's record) is a damaged checkpoint, not a different training.
RECORD_CHECKSUM = "record_sha256"
PROGRESS_FILE = "progress.json"
INIT_FROM_CKPT = "*INIT_FROM_CKPT*"  # a parameter's source in the init log: loaded from a checkpoint
# ... and left at its startup value (anything else, e.g. an HF "<- name", was loaded)
# NVIDIA's reference writes `<model_prefix>_progress.json` (epoch, step, file list) beside its tensors;
# recognised so that resuming one of its directories is explained instead of looking like a broken save.
REFERENCE_PROGRESS_SUFFIX = "_progress.json"

_STEP_DIR = re.compile(r"^\d+$")
_TMP_DIR = re.compile(r"^\d+\.tmp-")
SUPERSEDED_PREFIX = "superseded-"
def _json_default(value):
    # Loader and scheduler states often carry numpy scalars; .item() is exact for ints and floats.
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def fingerprint_config(config):
    """SHA-256 of a config dict, independent of key order.

    Args:
      config: dict of JSON-serialisable values; pass only what fixes the architecture (e.g. the
        `bert_configs/*.json` contents), so unrelated settings such as the log interval can change.

    Returns:
      str, 64 lowercase hex digits.

    Raises:
      ValueError: `config` is not a dict or holds a value JSON cannot encode.
    """
    if not isinstance(config, dict):
        raise ValueError(f"fingerprint_config expects a dict, got {type(config).__name__}")
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config cannot be fingerprinted: {err}") from err
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def phase_dir(output_dir, model_name, phase):
    """The checkpoint root of one training phase: `<output_dir>/<model_name>/phase<phase>`.

    Raises:
      ValueError: empty `output_dir`/`model_name`, a `model_name` containing a path separator, or a
        `phase` that is not a positive int.
    """
    if not output_dir or not model_name or os.sep in model_name:
        raise ValueError(f"bad checkpoint location: output_dir={output_dir!r}, model_name={model_name!r}")
    if not is_int(phase) or phase < 1:
        raise ValueError(f"phase must be a positive int, got {phase!r}")
    return os.path.join(output_dir, model_name, f"phase{phase}")


@dataclasses.dataclass(frozen=True)
class Progress:
    """Everything besides the persistables that a run needs to continue exactly.

    Attributes:
      phase: int >= 1, the pretraining phase.
      global_step: int >= 0, optimizer steps completed; the checkpoint directory is named after it.
      epoch: int >= 0, the data epoch in progress.
      loader_state: dict from the data loader's `state_dict()` (epoch, batches consumed, world size).
      lr_state: dict from the LR scheduler's `state_dict()`.
      seeds: dict of the seeds the run used (e.g. {"base": 42, "loader": 43}).
      config_fingerprint: str, `fingerprint_config` of the architecture-relevant config.
      world_size: int >= 1, number of training processes.
      global_batch_size: int >= 1, sequences per optimizer step over all processes.
      extra: dict, free-form JSON-serialisable data (e.g. the resolved config, last loss).
      files: dict file basename -> {"size": int, "sha256": str} of the checkpoint's tensor files, filled
        in by `CheckpointManager.save` and verified by `restore`.
      settings: dict "--flag" (or a named non-flag setting) -> value of everything that fixes what an
        update computes (optimizer, betas, weight decay and its exclusions, clipping, masking, seed...);
        a resume must bring the same (`check_compatible`). Empty in records of schema < 3.
      vocab_sha256: str, SHA-256 of the vocab file the run tokenised with (None in records of schema < 3).
      schema_version: int, one of the readable versions (records of older ones keep theirs when read).

    Raises (on construction):
      ValueError: a field has the wrong type or range, or the schema version is unknown.
    """

    phase: int
    global_step: int
    epoch: int
    loader_state: dict
    lr_state: dict
    seeds: dict
    config_fingerprint: str
    world_size: int
    global_batch_size: int
    extra: dict = dataclasses.field(default_factory=dict)
    files: dict = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)
    vocab_sha256: object = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        if self.schema_version not in _READABLE_VERSIONS:
            raise ValueError(f"progress schema_version {self.schema_version!r} is not supported "
                             f"(this code reads versions {list(_READABLE_VERSIONS)})")
        for name, low in (("phase", 1), ("global_step", 0), ("epoch", 0), ("world_size", 1),
                          ("global_batch_size", 1)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ValueError(f"progress.{name} must be an int >= {low}, got {value!r}")
        for name in ("loader_state", "lr_state", "seeds", "extra", "files", "settings"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"progress.{name} must be a dict, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.config_fingerprint, str) or not self.config_fingerprint:
            raise ValueError(f"progress.config_fingerprint must be a non-empty str, "
                             f"got {self.config_fingerprint!r}")
        if self.vocab_sha256 is not None and not isinstance(self.vocab_sha256, str):
            raise ValueError(f"progress.vocab_sha256 must be a str or None, got {self.vocab_sha256!r}")

    def to_json(self):
        """Serialise to JSON text (sorted keys; numpy scalars become Python numbers), with the record's own
        checksum under RECORD_CHECKSUM.

        Raises:
          ValueError: a dict field holds something JSON cannot encode.
        """
        try:
            data = json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))
        except (TypeError, ValueError) as err:
            raise ValueError(f"progress is not JSON serialisable: {err}") from err
        return json.dumps({**data, RECORD_CHECKSUM: _record_digest(data)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text):
        """Parse `to_json` output (or a record of an older readable schema).

        Raises:
          DamagedCheckpoint: the record's checksum does not match its contents, or its step disagrees with
            its LR-scheduler or loader state (`inconsistency`): edited or corrupted.
          ValueError: not JSON, not an object, an unknown schema_version, or missing/unknown keys.
        """
        data = json.loads(text)  # JSONDecodeError is a ValueError
        if not isinstance(data, dict):
            raise ValueError(f"progress JSON must be an object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in _READABLE_VERSIONS:
            raise ValueError(f"progress schema_version {version!r} is not supported "
                             f"(this code reads versions {list(_READABLE_VERSIONS)})")
        recorded = data.pop(RECORD_CHECKSUM, None)
        if version >= 3 and recorded != _record_digest(data):
            raise DamagedCheckpoint(f"its {RECORD_CHECKSUM} does not match its contents (edited or corrupted)")
        if version == 1:  # same record without checksums
            data = dict(data, files={})
        if version <= 2:  # nor settings nor vocab
            data = dict(data, settings={}, vocab_sha256=None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - known), sorted(known - set(data))
        if unknown or missing:
            raise ValueError(f"progress JSON keys do not match schema {version}: "
                             f"unknown {unknown}, missing {missing}")
        progress = cls(**data)
        problem = progress.inconsistency()
        if problem:
            raise DamagedCheckpoint(problem)
        return progress

    def inconsistency(self):
        """Why the record contradicts itself, or None.

        The step must equal the LR scheduler's `last_epoch` and the loader's position (micro-batches
        consumed = step x gradient-merge steps): a record where they differ would resume at another rate
        or data position than the step it claims. Only a trainer's record is checked, recognised by its
        `data.loader` state: other users of the manager may step their schedulers otherwise.
        """
        loader = self.loader_state
        keys = ("epoch", "batches_consumed", "batches_per_epoch", "batch_size")
        if not all(is_int(loader.get(k)) for k in keys) or loader["batch_size"] < 1:
            return None
        last_epoch = self.lr_state.get("last_epoch")
        if last_epoch != self.global_step:
            return f"lr_state.last_epoch is {last_epoch!r} but global_step is {self.global_step}"
        if loader["epoch"] != self.epoch:
            return f"loader_state.epoch is {loader['epoch']} but epoch is {self.epoch}"
        merge, rest = divmod(self.global_batch_size, self.world_size * loader["batch_size"])
        consumed = loader["epoch"] * loader["batches_per_epoch"] + loader["batches_consumed"]
        if rest or consumed != self.global_step * merge:
            return (f"loader_state has consumed {consumed} batches (epoch {loader['epoch']}, batches_consumed "
                    f"{loader['batches_consumed']}) but global_step {self.global_step} x {merge} micro-batches "
                    f"per update is {self.global_step * merge}")
        return None

    def unverified(self):
        """What a record of an older schema cannot prove about its run (empty for the current schema)."""
        missing = []
        if self.schema_version < 3:
            missing.append(f"{PROGRESS_FILE}'s own checksum")
        if not self.settings:
            missing.append("the settings (optimizer, weight decay, LR, masking, seed, ...)")
        if self.vocab_sha256 is None:
            missing.append("the vocab's SHA-256")
        return missing


def _record_digest(data):
    """SHA-256 of a progress record's keys (without RECORD_CHECKSUM) as canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def check_compatible(progress, *, config_fingerprint, world_size, global_batch_size, settings=None,
                     vocab_sha256=None):
    """Refuse to resume a checkpoint under settings that would change what the run computes.

    A record of an older schema is resumed with one warning naming what it cannot prove.

    Args:
      progress: the `Progress` returned by `CheckpointManager.restore`.
      config_fingerprint: str, fingerprint of the current architecture config.
      world_size: int, current number of processes.
      global_batch_size: int, current sequences per optimizer step.
      settings: dict "--flag" -> value now (`Progress.settings`' keys); a key the record lacks (a setting
        added later) is not compared.
      vocab_sha256: str, SHA-256 of the vocab file now.

    Raises:
      ValueError: naming every setting that differs, with both values.
    """
    unverified = progress.unverified()
    if unverified:
        logger.warning("the checkpoint of step %d was written by an older version: %s could not be verified; "
                       "resuming on trust", progress.global_step, ", ".join(unverified))
    changes = _setting_changes(progress.settings, settings or {})
    if progress.vocab_sha256 and vocab_sha256 and progress.vocab_sha256 != vocab_sha256:
        changes.append(f"--vocab-file: SHA-256 {progress.vocab_sha256} in the checkpoint, {vocab_sha256} now "
                       f"(another vocab maps the shards' tokens to other ids)")
    if progress.config_fingerprint != config_fingerprint:
        changes.append(f"model architecture changed (config fingerprint {progress.config_fingerprint[:12]}... "
                       f"in the checkpoint, {str(config_fingerprint)[:12]}... now)")
    if progress.world_size != world_size:
        changes.append(f"world size changed ({progress.world_size} in the checkpoint, {world_size} now)")
    if progress.global_batch_size != global_batch_size:
        changes.append(f"global batch size changed ({progress.global_batch_size} in the checkpoint, "
                       f"{global_batch_size} now)")
    if changes:
        raise ValueError(f"cannot resume from step {progress.global_step}: " + "; ".join(changes)
                         + ". Resume with the original settings, or start a new run in a fresh --output-dir "
                           "with --from-pretrained-params <this checkpoint's step directory>.")


def _setting_changes(saved, now):
    """["--flag: <checkpoint value> in the checkpoint, <new value> now", ...] for every differing key."""
    now = json.loads(json.dumps(now, default=_json_default))  # compare as the record stores them (tuples: lists)
    return [f"{name}: {saved[name]!r} in the checkpoint, {now[name]!r} now"
            for name in sorted(set(saved) & set(now)) if saved[name] != now[name]]


def vocab_sha256(vocab_file):
    """Hex SHA-256 of a vocab file's bytes: token ids are line numbers, so any change to it counts."""
    return checkpoint_io.file_digest(vocab_file)["sha256"]


def recorded_vocab_sha256(init_path):
    """The vocab SHA-256 that the pretraining checkpoint holding `init_path` recorded, or None.

    Args:
      init_path: a step directory, or a `.pdparams` file (or its prefix) inside one; anything else (an HF
        checkpoint, a fine-tuned model, a checkpoint written before vocabs were recorded) gives None.
    """
    directory = init_path if os.path.isdir(init_path) else os.path.dirname(os.path.abspath(init_path))
    try:
        with open(os.path.join(directory, PROGRESS_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    value = data.get("vocab_sha256") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


# ----------------------------------------------------------------------------------------------------
# Program state helpers


def _persistable_names(program):
    """Names of the variables paddle.static.save stores: persistables that are not feed/fetch/reader."""
    skip = {paddle.framework.core.VarDesc.VarType.FEED_MINIBATCH,
            paddle.framework.core.VarDesc.VarType.FETCH_LIST,
            paddle.framework.core.VarDesc.VarType.READER}
    names = []
    for var in program.list_vars():
        if var.persistable and var.desc.type() not in skip and var.name not in names:
            names.append(var.name)
    return names


def _scope_tensor(name):
    """The initialised tensor of `name` in the current scope, or None."""
    var = paddle.static.global_scope().find_var(name)
    if var is None:
        return None
    tensor = var.get_tensor()
    return tensor if tensor._is_initialized() else None


def assign_to_scope(exe, arrays, source):
    """Check every array against the scope's tensor, then set them all (nothing is set on any error).

    Args:
      exe: the executor; each tensor keeps the place it already has (`tensor_place`), which is not
        always the executor's.
      arrays: dict name -> ndarray to write.
      source: str, the file or directory named in error messages.

    Raises:
      ValueError: a variable is not initialised (startup program not run), or a shape/dtype differs.
    """
    problems, tensors = [], {}
    for name, value in arrays.items():
        tensor = _scope_tensor(name)
        if tensor is None:
            problems.append(f"{name} is not initialised in the scope (run the startup program first)")
            continue
        current = np.array(tensor)
        value = np.asarray(value)
        if current.shape != value.shape or current.dtype != value.dtype:
            problems.append(f"{name}: program has {current.dtype}{list(current.shape)}, "
                            f"'{source}' has {value.dtype}{list(value.shape)}")
        tensors[name] = (tensor, value)
    if problems:
        shown = "; ".join(problems[:_PREVIEW])
        more = f"; ... and {len(problems) - _PREVIEW} more" if len(problems) > _PREVIEW else ""
        raise ValueError(f"cannot load '{source}': {shown}{more}")
    for tensor, value in tensors.values():
        tensor.set(value, tensor_place(tensor, exe.place))


def tensor_place(tensor, default):
    """The place `tensor` already lives on, in the form `Tensor.set` accepts (as
    `paddle.static.set_program_state` does).

    Why not the executor's place: Paddle keeps some persistables on the CPU under a GPU executor (the
    gradient-merge step counter, LAMB's beta powers); writing them to the GPU on restore would make
    the counter's CPU ops copy from the device and sync on every micro-batch, and would send LAMB down
    its other kernel branch, so a resumed run could drift from an uninterrupted one.

    Args:
      tensor: a scope tensor (`var.get_tensor()`).
      default: the place to use when `tensor` is not initialised yet, hence has no place: the
        executor's, where running the startup program would have put it.

    Returns:
      paddle CPUPlace | CUDAPinnedPlace | CUDAPlace | XPUPlace | CustomPlace.
    """
    if not tensor._is_initialized():
        return default
    place = tensor._place()
    if place.is_cpu_place():
        return paddle.CPUPlace()
    if place.is_cuda_pinned_place():
        return paddle.CUDAPinnedPlace()
    if place.is_gpu_place():
        return paddle.CUDAPlace(place.gpu_device_id())
    if place.is_xpu_place():
        return paddle.XPUPlace(place.xpu_device_id())
    if place.is_custom_place():
        return paddle.CustomPlace(place.custom_device_type(), place.custom_device_id())
    raise ValueError(f"cannot restore a tensor on {place}: not a CPU, CUDA, XPU or custom-device place")


def log_parameter_sources(program, sources, origin):
    """Say where the parameters came from: one INFO line (how many from `origin`, and the names of the
    newly initialised ones, so a silent random init is visible), then one DEBUG line per parameter, as
    google-research/bert's init log (BERT-large has ~400: too many for every run's log)."""
    params = sorted(program.all_parameters(), key=lambda p: p.name)
    fresh = [p.name for p in params if sources[p.name] == NEWLY_INITIALIZED]
    renamed = sum(_renamed(p.name, sources[p.name]) for p in params)
    logger.info("parameters: %d of %d from %s%s%s", len(params) - len(fresh), len(params), origin,
                f" ({renamed} under another name)" if renamed else "",
                f"; newly initialised: {', '.join(fresh)}" if fresh else "")
    for param in params:
        logger.debug("  %s %s %s", param.name, list(param.shape), sources[param.name])


def _renamed(name, source):
    """True if `source` ("<- hf.name (notes)", as `utils.hf_import.convert_hf_state` writes it) names a tensor
    other than `name` (a TF-style gamma/beta, a missing `bert.` prefix): loaded, under another name."""
    return source.startswith("<- ") and source[3:].split(" ", 1)[0] != name


def _scope_arrays(names):
    scope = paddle.static.global_scope()
    return {n: np.array(scope.find_var(n).get_tensor()) for n in names}


# ----------------------------------------------------------------------------------------------------
# Checkpoint manager


class CheckpointManager:
    """Saves, finds, verifies, restores and purges the step checkpoints under one root directory.

    Args:
      root_dir: str, directory holding `<step>/` checkpoints (see `phase_dir`); created on first save.
      keep_last: int >= 2, complete checkpoints kept after each save. One is not enough: a crash while
        the only checkpoint is being replaced would leave none.
      rank: int >= 0; only rank 0 writes or deletes anything, every rank can restore.
      model_prefix: str, file prefix of the `.pdparams`/`.pdopt`/`.pdmodel` files.
      model_config: dict (`BertConfig.to_dict()`) or None; written as `bert_config.json` into every step
        directory (before progress.json, checksummed with the tensors), so that fine-tuning, evaluation,
        export and phase 2 take the architecture from the checkpoint. Older step directories lack it.

    Raises:
      ValueError: any argument out of range.
    """

    def __init__(self, root_dir, *, keep_last=3, rank=0, model_prefix="bert_paddle", model_config=None):
        if not root_dir:
            raise ValueError("checkpoint root_dir must be a non-empty path")
        if not is_int(keep_last) or keep_last < 2:
            raise ValueError(f"keep_last must be an int >= 2 (a single kept checkpoint can be lost while it "
                             f"is being replaced), got {keep_last!r}")
        if not is_int(rank) or rank < 0:
            raise ValueError(f"rank must be an int >= 0, got {rank!r}")
        if not model_prefix or os.sep in model_prefix or model_prefix == PROGRESS_FILE:
            raise ValueError(f"model_prefix must be a plain file name prefix, got {model_prefix!r}")
        self.root_dir = os.path.abspath(root_dir)
        self.keep_last = int(keep_last)
        self.rank = int(rank)
        self.model_prefix = model_prefix
        self.model_config = None if model_config is None else dict(model_config)

    def step_dir(self, step):
        """Path of the checkpoint directory for `step` (whether or not it exists)."""
        return os.path.join(self.root_dir, str(int(step)))

    def _written_by_the_reference(self, step):
        """True for a step directory NVIDIA's reference wrote (its progress record, not ours): never ours
        to delete as an interrupted save."""
        path = self.step_dir(step)
        return (os.path.isfile(os.path.join(path, self.model_prefix + REFERENCE_PROGRESS_SUFFIX))
                and not os.path.exists(os.path.join(path, PROGRESS_FILE)))

    def _incomplete_reason(self, step):
        """Why `<root>/<step>/` is not a usable checkpoint (cheap checks only), or None."""
        path = self.step_dir(step)
        try:
            with open(os.path.join(path, PROGRESS_FILE), encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            if self._written_by_the_reference(step):
                reference = os.path.join(path, self.model_prefix + REFERENCE_PROGRESS_SUFFIX)
                return (f"{path} was written by NVIDIA's reference run_pretraining.py ({reference}): it "
                        "records no loader position or checksums and its parameters carry auto-generated "
                        "names, so it cannot be resumed here; start from one of this project's checkpoints")
            return f"{path} has no {PROGRESS_FILE} (a save that did not finish)"
        except (OSError, ValueError) as err:
            return f"{os.path.join(path, PROGRESS_FILE)} is unreadable ({err})"
        # Schema is checked strictly by restore(): a newer-schema checkpoint should fail loudly there
        # rather than be skipped here in favour of an older one.
        if not isinstance(data, dict) or data.get("global_step") != step:
            return f"{os.path.join(path, PROGRESS_FILE)} does not describe step {step}"
        params = os.path.join(path, self.model_prefix + checkpoint_io.PARAMS_SUFFIX)
        if not os.path.isfile(params):
            return f"{params} is missing"
        files = data.get("files")
        return checkpoint_io.size_problem(path, files) if isinstance(files, dict) else None

    def scan(self):
        """(complete steps ascending, {step: why incomplete}) of the step directories on disk."""
        if not os.path.isdir(self.root_dir):
            return [], {}
        complete, problems = [], {}
        for step in sorted(int(n) for n in os.listdir(self.root_dir) if _STEP_DIR.match(n)):
            reason = self._incomplete_reason(step)
            if reason is None:
                complete.append(step)
            else:
                problems[step] = reason
        return complete, problems

    def available_steps(self):
        """Steps with a complete checkpoint on disk, ascending.

        Returns:
          list of int; a directory counts only if progress.json parses, names its own step, the
          `.pdparams` file exists and every recorded file has its recorded size. Temporary and
          partial directories are ignored.
        """
        return self.scan()[0]

    def latest_complete_step(self):
        """The highest complete step on disk, or None when there is none."""
        steps = self.available_steps()
        return steps[-1] if steps else None

    def save(self, exe, program, progress):
        """Write a checkpoint of every persistable of `program` plus `progress`, atomically.

        The tensor files are written with their sizes and SHA-256 recorded in progress.json (written
        last), every file and the directory are fsynced, then the directory is renamed into place.

        Args:
          exe: the executor that ran the program (tensors are read from the current global scope).
          program: the training `paddle.static.Program`.
          progress: `Progress`; its global_step names the directory. An existing directory for the same
            step is replaced.

        Returns:
          str path of the new checkpoint directory, or None on ranks other than 0 (which write nothing).

        Raises:
          ValueError: `progress` is not a Progress, or a persistable is not initialised in the scope.
          NonFiniteParameters: a parameter holds NaN/inf (nothing is written: a checkpoint that cannot
            train on must never replace a good one).
        """
        del exe  # tensors are read from the global scope; kept for symmetry with restore()
        if not isinstance(progress, Progress):
            raise ValueError(f"save() needs a Progress, got {type(progress).__name__}")
        if self.rank != 0:
            return None
        names = _persistable_names(program)
        missing = [n for n in names if _scope_tensor(n) is None]
        if missing:
            raise ValueError(f"cannot save: persistables not initialised in the scope (run the startup "
                             f"program first): {_preview(missing)}")
        param_names = {p.name for p in program.all_parameters()}
        arrays = _scope_arrays(names)
        parameters = {n: v for n, v in arrays.items() if n in param_names}
        bad = nonfinite_names(parameters)
        if bad:
            raise NonFiniteParameters(
                f"parameters hold NaN/inf at step {progress.global_step} ({_preview(bad)}); not saving a "
                f"checkpoint. The latest good one is step {self.latest_complete_step()} in {self.root_dir}")
        step = progress.global_step
        os.makedirs(self.root_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{step}.tmp-", dir=self.root_dir)
        try:
            files = checkpoint_io.write_state(
                os.path.join(tmp, self.model_prefix), parameters,
                {n: v for n, v in arrays.items() if n not in param_names},
                program.desc.serialize_to_string())
            if self.model_config is not None:
                files.update(checkpoint_io.write_model_config(tmp, self.model_config))
            # Progress last: its presence is what marks the directory complete.
            atomic_write_text(os.path.join(tmp, PROGRESS_FILE),
                              dataclasses.replace(progress, files=files).to_json())
            fsync_path(tmp)
            self._move_into_place(tmp, self.step_dir(step))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("saved checkpoint for step %d to %s", step, self.step_dir(step))
        self._purge(keep=step)
        return self.step_dir(step)

    def _move_into_place(self, tmp, final):
        """Rename the finished `tmp` to `final`; a directory already there (a damaged checkpoint of the same
        step that resume skipped, or one of a replayed step) is moved aside first, never deleted."""
        if os.path.lexists(final):
            self.supersede([int(os.path.basename(final))], "a new checkpoint of the same step replaces it")
        os.replace(tmp, final)
        fsync_path(self.root_dir)

    def _remove_old(self, step):
        """Retention: delete an old complete checkpoint, saying whether that really happened."""
        path = self.step_dir(step)
        try:
            shutil.rmtree(path)
        except OSError as err:
            logger.warning("could not remove old checkpoint %s (%s); it stays on disk: remove it by hand", path,
                           err.strerror or err)
            return
        logger.info("removed old checkpoint %s (retention: the newest %d are kept)", path, self.keep_last)

    def _purge(self, keep):
        complete, problems = self.scan()
        newer = [s for s in complete if s > keep]
        if newer:  # callers move another run's newer checkpoints aside first; this is a safety net
            logger.warning("checkpoints newer than step %d exist in %s (%s); they come from another run "
                           "and an 'auto' resume would pick them", keep, self.root_dir, _preview(newer))
        kept = set(complete[-self.keep_last:]) | {keep} | set(newer)
        for step in complete:
            if step not in kept:
                self._remove_old(step)
        for step, reason in problems.items():
            if self._written_by_the_reference(step):
                logger.warning("leaving %s alone: %s", self.step_dir(step), reason)
                continue
            self.supersede([step], f"not a usable checkpoint ({reason})")
        for name in os.listdir(self.root_dir):
            path = os.path.join(self.root_dir, name)
            if os.path.isdir(path) and _TMP_DIR.match(name):
                logger.warning("removing the temporary directory of an interrupted save: %s", path)
                shutil.rmtree(path, ignore_errors=True)

    def supersede(self, steps, reason):
        """Move the checkpoints of `steps` aside to `<root>/superseded-<UTC time>/<step>/` (never deletes).

        Used when a run starts over a directory that holds checkpoints it must not mix with: `auto`
        would otherwise resume them. They stay on disk for the user to inspect or delete.

        Returns:
          the directory they were moved to, or None when there was nothing to move or on ranks > 0.
        """
        steps = sorted(steps)
        if not steps or self.rank != 0:
            return None
        aside = os.path.join(self.root_dir, SUPERSEDED_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        aside = tempfile.mkdtemp(prefix=os.path.basename(aside) + "-", dir=self.root_dir)
        for step in steps:
            os.replace(self.step_dir(step), os.path.join(aside, str(step)))
        fsync_path(self.root_dir)
        logger.warning("moved checkpoint(s) of step %s aside to %s: %s", _preview(steps), aside, reason)
        return aside

    def maybe_save(self, exe, program, progress, every_n_steps, is_last=False):
        """Save when `progress.global_step % every_n_steps == 0` or `is_last`.

        The rule depends on the global step only, so a resumed run saves on the same steps as an
        uninterrupted one.

        Returns:
          the checkpoint path when saved (rank 0), else None.

        Raises:
          ValueError: `every_n_steps` is not a positive int; anything `save` raises.
        """
        if self.is_save_step(progress.global_step, every_n_steps, is_last):
            return self.save(exe, program, progress)
        return None

    @staticmethod
    def is_save_step(step, every_n_steps, is_last=False):
        """Whether `maybe_save` saves at global `step` (a pure rule, so resumed runs save on the same steps).

        Raises:
          ValueError: `every_n_steps` is not a positive int.
        """
        if not is_int(every_n_steps) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        return step % every_n_steps == 0 or is_last

    def read_progress(self, step):
        """The Progress of a complete step.

        Raises:
          DamagedCheckpoint: progress.json unreadable, not matching its own checksum, or contradicting
            itself (`Progress.inconsistency`); ValueError: an unsupported schema.
        """
        path = os.path.join(self.step_dir(step), PROGRESS_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise DamagedCheckpoint(f"cannot read {path}: {err}") from err
        try:
            return Progress.from_json(text)
        except json.JSONDecodeError as err:
            raise DamagedCheckpoint(f"{path} is not valid JSON ({err})") from err
        except DamagedCheckpoint as err:
            raise DamagedCheckpoint(f"{path} is damaged: {err}") from err

    def _load_verified(self, step):
        """(Progress, tensors) of `step`, every recorded file checked as it is read. Raises DamagedCheckpoint."""
        progress = self.read_progress(step)
        prefix = os.path.join(self.step_dir(step), self.model_prefix)
        if progress.files:
            return progress, checkpoint_io.read_verified_state(prefix, progress.files)
        return progress, checkpoint_io.read_state(prefix)

    def _first_usable(self, step, open_step):
        """(step, open_step(step)) for the requested step, or with "auto" for the newest whose
        `open_step` does not raise DamagedCheckpoint (each damaged one is reported in a warning naming
        the file and why). None when "auto" finds no checkpoint directory at all.

        Raises:
          ValueError: an unknown `step`; DamagedCheckpoint: the requested step, or every one, is damaged.
        """
        steps, problems = self.scan()
        for bad_step, reason in problems.items():
            logger.warning("ignoring checkpoint directory %s: %s", self.step_dir(bad_step), reason)
        if step == "auto":
            if not steps and problems:
                raise DamagedCheckpoint(f"no usable checkpoint in {self.root_dir}: "
                                        + "; ".join(problems.values()))
            candidates = steps[::-1]
        elif not is_int(step):
            raise ValueError(f"restore step must be 'auto' or an int, got {step!r}")
        elif step not in steps:
            raise ValueError(f"no complete checkpoint for step {step} in {self.root_dir}"
                             + (f" ({problems[step]})" if step in problems else "")
                             + f"; available steps: {steps if steps else 'none'}")
        else:
            return step, open_step(step)  # a damaged requested step is an error, not a fallback
        damaged = []
        for candidate in candidates:
            try:
                return candidate, open_step(candidate)
            except DamagedCheckpoint as err:
                damaged.append(str(err))
                logger.warning("checkpoint of step %d is damaged: %s; falling back to the previous one",
                               candidate, err)
        if damaged:
            raise DamagedCheckpoint(f"every checkpoint in {self.root_dir} is damaged: " + "; ".join(damaged))
        return None

    def resolve_step(self, step="auto"):
        """The step `restore(step)` would load, with every file of it verified, without loading anything.

        Multi-process runs let rank 0 resolve "auto" and every rank then restores that exact step (see
        `tasks.resume_agreement`): ranks choosing alone can pick different steps.

        Returns:
          int, or None when step == "auto" and there is no checkpoint at all.

        Raises:
          DamagedCheckpoint / ValueError: as `restore`.
        """
        found = self._first_usable(step, lambda s: checkpoint_io.verify_files(
            self.step_dir(s), self.read_progress(s).files))
        return None if found is None else found[0]

    def restore(self, exe, program, step="auto", validate=None):
        """Load every persistable of `program` from a checkpoint and return its Progress.

        With step="auto" the newest checkpoint that passes verification is used: a damaged newer one
        (truncated or altered file, unreadable progress.json, missing parameters) is reported in a
        warning naming the file and why, and the previous one is tried. The startup program must have
        run. The caller applies `lr_state` and `loader_state` from the returned Progress.

        Args:
          exe: the executor that ran the startup program (each tensor keeps its place: `tensor_place`).
          program: the training program, built exactly as when the checkpoint was saved.
          step: "auto" for the latest usable checkpoint, or an int step.
          validate: optional callable(Progress, step_dir) raising ValueError to refuse a checkpoint
            (phase, architecture, world size); it runs before any tensor is assigned.

        Returns:
          Progress, or None when step == "auto" and the directory holds no checkpoint at all.

        Raises:
          ValueError: an unknown `step`, a missing persistable, a shape/dtype mismatch, an unsupported
            progress.json schema, `validate`'s refusal, or (DamagedCheckpoint) the requested step, or
            with "auto" every checkpoint, is damaged.
        """
        found = self._first_usable(step, self._load_verified)
        if found is None:
            return None
        chosen, (progress, state) = found
        if validate is not None:
            validate(progress, self.step_dir(chosen))
        self._assign(exe, program, state, self.step_dir(chosen))
        logger.info("restored step %d from %s", chosen, self.step_dir(chosen))
        return progress

    @staticmethod
    def _assign(exe, program, state, path):
        names = _persistable_names(program)
        arrays = {}
        for name in names:
            if name in state:
                arrays[name] = state[name]
            elif checkpoint_io.zero_if_absent(name) and _scope_tensor(name) is not None:
                arrays[name] = np.zeros_like(np.array(_scope_tensor(name)))  # left out: starts at zero
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"checkpoint {path} lacks {len(missing)} persistable(s) of the program: "
                             f"{_preview(missing)} (was it saved by a differently configured run? compare "
                             "--optimizer, --gradient-merge-steps, --amp and --use-pure-fp16)")
        assign_to_scope(exe, arrays, path)
        unused = sorted(set(state) - set(names))
        if unused:
            logger.warning("checkpoint %s holds variables the program does not use: %s", path, _preview(unused))
        log_parameter_sources(program, {p.name: INIT_FROM_CKPT for p in program.all_parameters()}, path)
        logger.info("loaded %d persistables from %s", len(names), path)
