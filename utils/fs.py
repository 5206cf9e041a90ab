"""Atomic file and directory output, and the digest of a file.

Owns: writing a file or a whole directory so that readers see either the old state or the complete new
one, never a half-written result. Every tool that writes user-visible output (shards, vocabularies,
extracted text, checkpoints, reports) goes through these helpers.

Why: a crash or Ctrl-C halfway through a multi-hour preprocessing run must not leave a directory that
looks finished. We write into a sibling temporary path on the same filesystem and `os.replace` it into
place at the end (rename is atomic on POSIX within one filesystem).

Also owns `sha256_file`, the content hash with which caches check that a file is still the one they wrote.
"""
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time

logger = logging.getLogger(__name__)

# Temporary siblings of an output directory are named `<name>.tmp-<pid>@<host>-XXXXXXXX` (being built) and
# `<name>.old-<pid>@<host>-XXXXXXXX` (the previous output, moved aside for the final rename), so a later run
# can tell debris of a dead process from the work of a live one without a lock file.
_RANDOM_PART = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp appends


# Write failures that are the storage's fault, not the program's or the input's. `utils.cli` reports them in
# one line with their own exit status; the atomic helpers below add the output's path when the error from
# the layer that hit them (Arrow's writers, a plain write) names none.
STORAGE_ERRORS = {errno.ENOSPC: "the filesystem is full", errno.EDQUOT: "the disk quota is exceeded",
                  errno.EROFS: "the filesystem is read-only"}
_STORAGE_PHRASES = {"no space left on device": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT,
                    "read-only file system": errno.EROFS}


def storage_errno(err):
    """ENOSPC / EDQUOT / EROFS when `err` (or an exception it was raised from) is such a write failure.

    Arrow raises OSError whose errno is sometimes unset and whose message carries the cause
    ("... Detail: [errno 28] No space left on device"), so the message is read as well.

    Args:
      err: BaseException.

    Returns:
      int errno from STORAGE_ERRORS, or None.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            if err.errno in STORAGE_ERRORS:
                return err.errno
            text = str(err).lower()
            for phrase, code in _STORAGE_PHRASES.items():
                if phrase in text:
                    return code
        err = err.__cause__ or err.__context__
    return None


def _naming(err, path, what):
    """`err` itself, or, for a storage failure that names no file, an OSError naming `path` raised from it."""
    code = storage_errno(err)
    if code is None or (isinstance(err, OSError) and err.filename is not None):
        return err
    named = OSError(code, f"{os.strerror(code)} while writing {what}", path)
    named.__cause__ = err
    return named


def probe_writable(directory):
    """Prove that files can be created in `directory` (or, while it does not exist, in its nearest existing
    ancestor) before any long work, leaving nothing behind: a probe file is made and removed.

    Why a probe: `os.access` says yes to root on a read-only mount and knows nothing of quotas.

    Raises:
      NotADirectoryError: a file stands where a directory would be (its path is the error's filename).
      OSError: the probe could not be created (permission, read-only filesystem, full disk); the error
        keeps its errno and names the directory that refused it.
    """
    place = os.path.abspath(directory or ".")
    while not os.path.lexists(place):
        place = os.path.dirname(place)
    if not os.path.isdir(place):
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a directory", place)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=place)
    except OSError as err:
        raise type(err)(err.errno, err.strerror or str(err), place) from None
    os.close(fd)
    os.unlink(probe)


def check_writable_dir(directory, flag):
    """`probe_writable(directory)`, with the error saying which command-line flag chose the directory.

    Raises:
      OSError (naming `directory`, errno kept so a full or read-only disk keeps its exit status).
    """
    try:
        probe_writable(directory)
    except OSError as err:
        raise type(err)(err.errno, f"{flag}: cannot write into this directory ({err.strerror or err})",
                        os.path.abspath(directory or ".")) from None


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_digest(path, chunk_size=8 << 20):
    """{"size": bytes, "sha256": hex} of a file as it is on disk now (what checkpoints and shard directories
    record of their files, so a later reader can tell the same bytes from changed ones)."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            sha.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha.hexdigest()}


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
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        named = _naming(err, path, "the file")
        if named is err:
            raise
        raise named from err


def atomic_write_text(path, text):
    """Write `text` (str, UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2):
    """Write `obj` as JSON to `path` atomically (keys sorted, so output is reproducible)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def sha256_file(path):
    """Hex SHA-256 of a file (`file_digest` without the size)."""
    return file_digest(path)["sha256"]


def _owner_tag():
    """`<pid>@<host>` of this process, safe inside a file name."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
    return f"{os.getpid()}@{host}"


def pid_running(pid):
    """True if process `pid` exists on this host (a recycled pid reads as alive: the safe direction for
    everything that asks, which only keeps a stale lock or directory longer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _owner_alive(pid, host):
    """True if process `pid` runs (on this host), False if it is gone, None when it is on another host."""
    if host != _owner_tag().split("@", 1)[1]:
        return None
    return pid_running(pid)


def _tree_size(path):
    """(number of files, bytes) under `path`, not following symlinks."""
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
    return files, size


def _human(nbytes):
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"  # pragma: no cover -- unreachable, the loop returns at GB


def clean_stale_temp_dirs(path):
    """Remove what killed runs writing output directory `path` left next to it; restore a moved-aside output.

    Only siblings named by `atomic_output_dir` for exactly this `path` are touched, and only when the
    process that made them is known to be dead (same host, pid gone): a second job writing the same output
    right now keeps its directory. `<name>.tmp-*` of a dead owner is deleted. `<name>.old-*` of a dead owner
    (the previous output, moved aside just before the final rename) is deleted if `path` exists, and
    renamed back to `path` if the run died between the two renames, so the good output is never lost.
    Directories of the older unmarked form `<name>.tmp-XXXXXXXX` and of other hosts are only reported:
    nothing tells whether their owner still runs.

    Args:
      path: str, the output directory (need not exist).

    Returns:
      list[str] of the directories removed.
    """
    path = os.path.abspath(path)
    parent, base = os.path.dirname(path), os.path.basename(path)
    marked = re.compile(rf"^{re.escape(base)}\.(?P<kind>tmp|old)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)-"
                        rf"{_RANDOM_PART}$")
    unmarked = re.compile(rf"^{re.escape(base)}\.tmp-{_RANDOM_PART}$")
    try:
        names = sorted(os.listdir(parent))
    except (FileNotFoundError, NotADirectoryError):  # nothing can be next to `path`; the caller reports why
        return []
    removed = []
    for name in names:
        debris = os.path.join(parent, name)
        match = marked.match(name)
        if not os.path.isdir(debris) or os.path.islink(debris):
            continue
        if match is None:
            if unmarked.match(name):
                files, size = _tree_size(debris)
                logger.warning("%s (%d files, %s) looks like the temporary directory of an interrupted run "
                               "of an older version; remove it by hand if no other job writes %s", debris,
                               files, _human(size), path)
            continue
        pid, host = int(match.group("pid")), match.group("host")
        alive = _owner_alive(pid, host)
        if alive is not False:
            if alive is None:
                logger.warning("kept %s: made by pid %d on host %s, which this host cannot check; remove it by "
                               "hand if that job is gone", debris, pid, host)
            else:
                logger.info("kept %s: process %d that writes it is still running", debris, pid)
            continue
        if match.group("kind") == "old" and not os.path.exists(path):
            os.replace(debris, path)
            logger.warning("restored %s from %s: the run that was replacing it (pid %d) died between "
                           "its two renames", path, debris, pid)
            continue
        files, size = _tree_size(debris)
        shutil.rmtree(debris, ignore_errors=True)
        logger.info("removed %s (%d files, %s) left by a killed run (pid %d on %s)", debris, files,
                    _human(size), pid, host)
        removed.append(debris)
    return removed


@contextlib.contextmanager
def atomic_output_dir(path, overwrite=False):
    """Build a directory under a temporary name and move it to `path` only if the block succeeds.

    Args:
      path: final directory path.
      overwrite: if False and `path` already exists, raise FileExistsError before any work is done.

    Yields:
      str, the temporary directory to write into (same filesystem as `path`), named
      `<name>.tmp-<pid>@<host>-XXXXXXXX` so that a later run can remove it if this process is killed.

    Raises:
      FileExistsError: `path` exists and overwrite is False.
      OSError naming the parent directory: the temporary directory cannot be created there (not
        writable, read-only, full), found before the caller's work starts.
      OSError naming `path`: the block failed on a full / over-quota / read-only filesystem with an
        error that named no file (see `storage_errno`).

    On an exception the temporary directory is removed and `path` is left exactly as it was. What a
    killed earlier run left next to `path` is cleaned up first (see `clean_stale_temp_dirs`).
    """
    path = os.path.abspath(path)
    clean_stale_temp_dirs(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output directory '{path}' already exists; remove it or pass --overwrite")
    parent = os.path.dirname(path)
    try:
        parent, base = _sibling_tmp(path, f".tmp-{_owner_tag()}-")
        tmp = tempfile.mkdtemp(prefix=base, dir=parent)
    except OSError as err:  # found now, before the caller's work, not when its results are written
        raise type(err)(err.errno, f"cannot create output directory '{path}': {err.strerror or err} in "
                                   "its parent directory", parent) from None
    os.chmod(tmp, 0o777 & ~_current_umask())  # mkdtemp makes 0700; outputs should look like mkdir's
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        named = _naming(err, path, "the output directory")
        if named is err:
            raise
        raise named from err
    old = None
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f"{os.path.basename(path)}.old-{_owner_tag()}-", dir=parent)
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _relation(output, given):
    """How path `output` stands to path `given` (both resolved through symlinks): 'is', 'contains',
    'lies inside' or None when they are apart."""
    out, inp = os.path.realpath(output), os.path.realpath(given)
    if out == inp:
        return "is"
    if os.path.commonpath([out, inp]) == out:
        return "contains"
    if os.path.commonpath([out, inp]) == inp:
        return "lies inside"
    return None


def refuse_output_over_inputs(output_flag, output, inputs, *, inside_allowed=False):
    """Refuse an output location that is, contains or lies inside any input, `--overwrite` or not.

    Why: every output is written under a temporary name and renamed over the old one, so an output that
    is (or holds) an input would replace that input with the result built from it: the corpus, the vocab
    or the checkpoint the user pointed at would be gone after a run that "succeeded". An output inside an
    input directory is refused too: the input would change under the user (and a re-run would read it).

    Args:
      output_flag: str, the flag naming the output (for the message), e.g. "--sink".
      output: str path of the output file or directory (need not exist).
      inputs: iterable of (flag, path or None): every file or directory the command reads; None is skipped.
      inside_allowed: True for an output FILE that may sit in an input directory without changing it (a
        report beside the checkpoint it evaluates); it may still not be an input.

    Raises:
      ValueError: naming both flags, both paths and how they overlap.
    """
    for flag, given in inputs:
        if given is None:
            continue
        relation = _relation(output, given)
        if relation is not None and not (inside_allowed and relation == "lies inside"):
            raise ValueError(f"{output_flag} '{output}' {relation} {flag} '{given}': writing there would replace "
                             f"an input; give {output_flag} a path outside every input")


def move_aside(path, reason):
    """Rename `path` (a file or directory) to a sibling `<name>.superseded-<UTC time>-XXXX` and say so.

    Why: when a command must make room for a new output where an old one stands (the user asked for
    that), the old one is kept, never deleted: the user decides what to remove.

    Args:
      path: str, an existing file or directory.
      reason: str, why it is moved (logged in the warning with both paths).

    Returns:
      str, the new path.
    """
    path = os.path.abspath(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    holder = tempfile.mkdtemp(prefix=f"{os.path.basename(path)}.superseded-{stamp}-", dir=os.path.dirname(path))
    os.rmdir(holder)  # only its unique name is wanted: the rename below creates it
    os.replace(path, holder)
    logger.warning("moved %s aside to %s: %s", path, holder, reason)
    return holder
