"""The bytes of one checkpoint directory: writing the state files with checksums, verifying and reading them.

Owns: the on-disk format of the tensors of a checkpoint (the same pickled `{name: ndarray}` dicts that
`paddle.static.save` writes, so `paddle.static.load_program_state` and `paddle.load` read them too), the
size + SHA-256 of every file recorded at save time and checked at load time, fsync of what was written,
and which persistables need not be written. Does not own: where checkpoints live, retention, `Progress`
or resume policy (`utils.checkpoint`).

Why write the files ourselves instead of calling `paddle.static.save`:
  * the checksum is computed from the bytes as they are written, in the same pass;
  * gradient-merge accumulators (`<param>@GRAD@GradientMerge`, one per parameter: 1.3 GB for BERT-large)
    are all zeros at an update boundary, which is where training saves; writing them would double the
    size of every checkpoint. An all-zero accumulator is left out and restored as zeros;
  * every file is fsynced before the caller renames the directory into place, so a power cut cannot
    leave a checkpoint whose progress file exists but whose tensors were never flushed.
"""
import contextlib
import hashlib
import json
import os
import pickle

import paddle

from utils.fs import file_digest

PARAMS_SUFFIX = ".pdparams"
OPT_SUFFIX = ".pdopt"
MODEL_SUFFIX = ".pdmodel"
GRADIENT_MERGE_SUFFIX = "@GRAD@GradientMerge"
CONFIG_FILE_NAME = "bert_config.json"  # the architecture, in step directories and beside fine-tuned parameters
_PICKLE_PROTOCOL = 4  # what paddle.static.save uses by default; handles arrays over 4 GB
_CHECKSUM_MISMATCH = ("{path} does not match the SHA-256 recorded when it was saved (the file was altered or "
                      "corrupted on disk)")


class DamagedCheckpoint(ValueError):
    """A checkpoint file is missing, truncated, altered or unreadable (the message names the file and why)."""


class _DigestingWriter:
    """A binary file that hashes and counts what passes through `write`."""

    def __init__(self, f):
        self._f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        return self._f.write(view)


def fsync_path(path):
    """fsync a file or directory by path (a directory's fsync makes the names inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_digested(path, dump):
    """Create `path`, let `dump(file)` write it, fsync it; returns {"size", "sha256"} of what was written."""
    with open(path, "wb") as f:
        writer = _DigestingWriter(f)
        dump(writer)
        f.flush()
        os.fsync(f.fileno())
    return {"size": writer.size, "sha256": writer.sha256.hexdigest()}


# Persistables that start at zero and may be absent from a checkpoint, restored as zeros: gradient-merge
# buffers (left out when all zero, see `skippable`) and the training-metric window and skipped-update
# counters of `program.TrainMetrics` (named "train_metrics.*"; checkpoints written before they existed
# lack them, and a metric window restarting at zero changes no parameter).
_ZERO_IF_ABSENT_PREFIXES = ("train_metrics.",)


def zero_if_absent(name):
    """True for a persistable a checkpoint may lack, which then starts from zeros."""
    return name.endswith(GRADIENT_MERGE_SUFFIX) or name.startswith(_ZERO_IF_ABSENT_PREFIXES)


def skippable(name, value):
    """True for a tensor that is not written because restoring it as zeros is exact."""
    return name.endswith(GRADIENT_MERGE_SUFFIX) and not value.any()


def write_state(prefix, parameters, others, program_desc):
    """Write `<prefix>.pdparams`, `<prefix>.pdopt` and `<prefix>.pdmodel`, fsynced, and return their digests.

    Args:
      prefix: path prefix inside the (temporary) checkpoint directory.
      parameters: dict name -> ndarray, the trainable parameters.
      others: dict name -> ndarray, every other persistable (optimizer moments, LR, loss scale,
        master weights, gradient-merge state); all-zero gradient-merge accumulators are left out.
      program_desc: bytes, the serialised program (informational; never read back).

    Returns:
      dict file basename -> {"size": int, "sha256": str}, for `Progress.files`.
    """
    kept = {n: v for n, v in others.items() if not skippable(n, v)}
    base = os.path.basename(prefix)
    return {
        base + PARAMS_SUFFIX: _write_digested(prefix + PARAMS_SUFFIX,
                                              lambda f: pickle.dump(parameters, f, protocol=_PICKLE_PROTOCOL)),
        base + OPT_SUFFIX: _write_digested(prefix + OPT_SUFFIX,
                                           lambda f: pickle.dump(kept, f, protocol=_PICKLE_PROTOCOL)),
        base + MODEL_SUFFIX: _write_digested(prefix + MODEL_SUFFIX, lambda f: f.write(program_desc)),
    }


def write_model_config(directory, config):
    """Write the architecture (`modeling.BertConfig.to_dict()`) as `<directory>/bert_config.json`, fsynced.

    Why: a step directory is also a model to fine-tune, evaluate or export; with its config beside the
    parameters no consumer has to be told (or guess) which architecture they belong to.

    Returns:
      {"bert_config.json": {"size", "sha256"}}, for `Progress.files` (verified like the tensor files).
    """
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    return {CONFIG_FILE_NAME: _write_digested(os.path.join(directory, CONFIG_FILE_NAME),
                                              lambda f: f.write(text.encode("utf-8")))}


def size_problem(directory, files):
    """Why the files of `directory` cannot match `files` by size alone (a cheap stat), or None."""
    for name, expected in sorted(files.items()):
        path = os.path.join(directory, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            return f"{path} is missing"
        if size != expected["size"]:
            return f"{path} has {size} bytes, {expected['size']} were written (truncated or altered)"
    return None


def verify_files(directory, files):
    """Check every recorded file's size and SHA-256.

    Args:
      directory: the checkpoint directory.
      files: dict basename -> {"size", "sha256"} from `Progress.files` (empty for checkpoints written
        before checksums were recorded: nothing to verify).

    Raises:
      DamagedCheckpoint: naming the first file that is missing, of the wrong size or the wrong checksum.
    """
    problem = size_problem(directory, files)
    if problem:
        raise DamagedCheckpoint(problem)
    for name, expected in sorted(files.items()):
        path = os.path.join(directory, name)
        if file_digest(path)["sha256"] != expected["sha256"]:
            raise DamagedCheckpoint(_CHECKSUM_MISMATCH.format(path=path))


class _DigestingReader:
    """A binary file that hashes what `pickle.load` reads from it (verify and load in one pass)."""

    def __init__(self, f):
        self._f, self.sha256 = f, hashlib.sha256()

    def read(self, size=-1):
        data = self._f.read(size)
        self.sha256.update(data)
        return data

    def readinto(self, buffer):
        count = self._f.readinto(buffer)
        self.sha256.update(memoryview(buffer)[:count])
        return count

    def readline(self):
        data = self._f.readline()
        self.sha256.update(data)
        return data


def _load_digested(path, expected):
    """Unpickle `path` while hashing it; raises DamagedCheckpoint unless it is all read and matches."""
    try:
        with open(path, "rb") as f:
            reader = _DigestingReader(f)
            value = pickle.load(reader)
            reader.sha256.update(f.read())  # nothing should follow the pickle, but hash it if it does
    except Exception as err:  # pickle, EOF and OS errors all mean the file cannot be used
        # An altered byte usually breaks the pickle first; the checksum says what really happened.
        with contextlib.suppress(OSError):
            if file_digest(path)["sha256"] != expected["sha256"]:
                raise DamagedCheckpoint(_CHECKSUM_MISMATCH.format(path=path)) from err
        raise DamagedCheckpoint(f"cannot read {path}: {type(err).__name__}: {err}") from err
    if reader.sha256.hexdigest() != expected["sha256"]:
        raise DamagedCheckpoint(_CHECKSUM_MISMATCH.format(path=path))
    if not isinstance(value, dict):
        raise DamagedCheckpoint(f"{path} does not hold a dict of name -> array")
    return value


def read_verified_state(prefix, files):
    """All tensors of a checkpoint whose files were recorded, each file checked as it is read.

    One pass over the bytes (a checkpoint of BERT-large with LAMB state is several GB: reading it once
    to hash and again to load would double the resume time on a shared filesystem).

    Args:
      prefix: path prefix of the tensor files.
      files: `Progress.files`, non-empty.

    Returns:
      dict name -> ndarray (parameters and the rest together).

    Raises:
      DamagedCheckpoint: a file missing, of the wrong size or checksum, or unreadable.
    """
    directory, base = os.path.dirname(prefix), os.path.basename(prefix)
    problem = size_problem(directory, files)
    if problem:
        raise DamagedCheckpoint(problem)
    state = {}
    for suffix in (PARAMS_SUFFIX, OPT_SUFFIX):
        name = base + suffix
        if name not in files:
            raise DamagedCheckpoint(f"{os.path.join(directory, 'progress.json')} records no {name}")
        state.update(_load_digested(os.path.join(directory, name), files[name]))
    verify_files(directory, {n: d for n, d in files.items() if n.endswith(MODEL_SUFFIX)})
    return state


def read_state(prefix):
    """All tensors of a checkpoint without recorded checksums (schema 1): dict name -> ndarray.

    Raises:
      DamagedCheckpoint: the files cannot be unpickled (e.g. a truncated checkpoint saved before
        checksums were recorded).
    """
    try:
        return paddle.static.load_program_state(prefix)
    except Exception as err:  # pickle, EOF, OS and paddle's own errors all mean the same here
        raise DamagedCheckpoint(f"cannot read {prefix}{PARAMS_SUFFIX}/{OPT_SUFFIX}: "
                                f"{type(err).__name__}: {err}") from err
