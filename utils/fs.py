"""Atomic file and directory output.

Owns: writing a file or a whole directory so that readers see either the old state or the complete new
one, never a half-written result. Every tool that writes user-visible output (shards, vocabularies,
extracted text, checkpoints, reports) goes through these helpers.

Why: a crash or Ctrl-C halfway through a multi-hour preprocessing run must not leave a directory that
looks finished. We write into a sibling temporary path on the same filesystem and `os.replace` it into
place at the end (rename is atomic on POSIX within one filesystem).
"""
import contextlib
import json
import os
import shutil
import tempfile


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sibling_tmp(path, suffix):
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    return parent, os.path.basename(os.path.abspath(path)) + suffix


def atomic_write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically (temp file in the same directory, fsync, rename)."""
    parent, base = _sibling_tmp(path, ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=base + ".", dir=parent)
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; match a plain open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    """Write `text` (str, UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2):
    """Write `obj` as JSON to `path` atomically (keys sorted, so output is reproducible)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_output_dir(path, overwrite=False):
    """Build a directory under a temporary name and move it to `path` only if the block succeeds.

    Args:
      path: final directory path.
      overwrite: if False and `path` already exists, raise FileExistsError before any work is done.

    Yields:
      str, the temporary directory to write into (same filesystem as `path`).

    Raises:
      FileExistsError: `path` exists and overwrite is False.

    On an exception the temporary directory is removed and `path` is left exactly as it was.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output directory '{path}' already exists; remove it or pass --overwrite")
    parent, base = _sibling_tmp(path, ".tmp-")
    tmp = tempfile.mkdtemp(prefix=base, dir=parent)
    os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes 0700; outputs should look like mkdir's
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=os.path.basename(path) + ".old-", dir=parent)
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)
