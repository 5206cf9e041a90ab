"""Resumable, checksum-verified downloads, and the registry of the datasets this project uses.

Owns: `download()` (HTTP(S) GET with Range resume into `<dest>.part`, retries, md5/sha256 check, atomic
rename), the dataset registry (SQuAD v1.1/v2.0, GLUE's nine tasks, the four BERT vocabularies, English Wikipedia
dumps) and the
`python -m data.prep.download` CLI. Does not own: extracting or preprocessing anything (`data.prep.wikipedia`,
`data.prep.corpus`, the preprocessor).

Wikipedia dumps are pinned by date (`--wiki-dump-date YYYYMMDD`), never "latest", which moves and breaks
reproducibility. dumps.wikimedia.org keeps only the most recent few months of dumps; older dates are
mirrored on archive.org (items `enwiki-<date>`): pass
`--wiki-mirror https://archive.org/download/enwiki-{date}/`. The dump is verified against the md5 listed in
the dump's own `enwiki-<date>-md5sums.txt`, fetched from the same place.

Layout under --output-dir: squad/v1.1/{train,dev}-v1.1.json, squad/v2.0/{train,dev}-v2.0.json,
glue/<Task>/{train,dev,test}.tsv (MNLI: dev_matched, dev_mismatched, test_matched, test_mismatched; the
archives stay in glue/archives/),
wikipedia/enwiki-<date>-pages-articles.xml.bz2, and vocab/bert-*-vocab.txt (or --vocab-dir). The paths
of the resulting files are printed on stdout, one per line.

Usage (from the repo root):
    python -m data.prep.download all --output-dir data/download --vocab-dir vocab --wiki-dump-date 20261101
    python -m data.prep.download squad --output-dir data/download
    python -m data.prep.download glue --output-dir data/download [--glue-tasks MRPC,SST-2]
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first
import datetime
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_write_text, move_aside
from utils.logger import progress

logger = logging.getLogger(__name__)

SQUAD_BASE_URL = "https://rajpurkar.github.io/SQuAD-explorer/dataset/"
# {path under <output-dir>/squad: md5}; the file name is also the name at SQUAD_BASE_URL.
SQUAD_FILES = {
    "v1.1/train-v1.1.json": "981b29407e0affa3b1b156f72073b945",
    "v1.1/dev-v1.1.json": "3e85deb501d4e538b6bc56f786231552",
    "v2.0/train-v2.0.json": "62108c273c268d70893182d5cf8df740",
    "v2.0/dev-v2.0.json": "246adae8b7002f8679c027697b0b7cf8",
}
GLUE_BASE_URL = "https://dl.fbaipublicfiles.com/glue/data/"
SENTEVAL_BASE_URL = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"
# {task: (archive name at GLUE_BASE_URL, sha256)}: the archives GLUE's own download script fetches, with the
# sha256 sums Hugging Face's `glue` dataset pins for the same URLs.
GLUE_ARCHIVES = {
    "CoLA": ("CoLA.zip", "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff"),
    "SST-2": ("SST-2.zip", "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa"),
    "QQP": ("QQP-clean.zip", "40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0"),
    "STS-B": ("STS-B.zip", "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85"),
    "MNLI": ("MNLI.zip", "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633"),
    "QNLI": ("QNLIv2.zip", "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5"),
    "RTE": ("RTE.zip", "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee"),
    "WNLI": ("WNLI.zip", "ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46"),
}
# MRPC is built from Microsoft's files (as GLUE's script does): {name: (base URL key, sha256)}.
MRPC_SOURCES = {
    "msr_paraphrase_train.txt": ("senteval", "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89"),
    "msr_paraphrase_test.txt": ("senteval", "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784"),
    "mrpc_dev_ids.tsv": ("glue", "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7"),
}
GLUE_TASKS = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI")
VOCAB_URL_TEMPLATE = "https://huggingface.co/google-bert/{model}/resolve/main/vocab.txt"
_UNCASED_MD5 = "64800d5d8528ce344256daf115d4965e"
_CASED_MD5 = "bb6ca9b42e790e5cd986bbb16444d0e0"
# {model: md5 of its vocab.txt}; large uses the same vocabulary as base.
VOCAB_FILES = {
    "bert-base-uncased": _UNCASED_MD5,
    "bert-large-uncased": _UNCASED_MD5,
    "bert-base-cased": _CASED_MD5,
    "bert-large-cased": _CASED_MD5,
}
WIKI_MIRROR = "https://dumps.wikimedia.org/enwiki/{date}/"
# A complete (1st-of-the-month) dump; once dumps.wikimedia.org drops it, use an archive.org mirror.
DEFAULT_WIKI_DUMP_DATE = "20261101"
TARGETS = ("squad", "glue", "vocab", "wikipedia", "all")
_USER_AGENT = "bert-paddle-data-download/1.0 (python urllib)"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download could not be completed: unreachable host, HTTP error, or checksum mismatch."""


class _Transient(Exception):
    """A failure worth retrying from where the .part file stopped (connection dropped mid-body, 5xx)."""


# ----------------------------------------------------------------------------------------------------
# The downloader


def file_digest(path, algorithm):
    """Hex digest (str) of the file at `path` with hashlib `algorithm` ('md5', 'sha256'), read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksum_problem(path, md5, sha256):
    """None if `path` matches every given checksum, else a description of the mismatch."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                return f"{algorithm} is {actual}, expected {expected}"
    return None


def _unreachable(url, dest, reason):
    host = urllib.parse.urlsplit(url).netloc or url
    return DownloadError(f"cannot reach {host}: {reason}; download {url} by hand into {dest}")


def _open(url, offset, timeout):
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _response_start(resp, offset):
    """Where the body of `resp` starts in the file: `offset` if the server honoured Range, else 0."""
    if offset and resp.status == 206:
        content_range = resp.headers.get("Content-Range", "")
        match = re.match(r"bytes (\d+)-", content_range)
        if not match or int(match.group(1)) != offset:
            raise _Transient(f"server answered Range {offset}- with Content-Range '{content_range}'")
        return offset
    if offset:
        logger.info("server ignored the resume request; downloading from the start")
    return 0


def _request(url, offset, dest, timeout):
    """The response for `url` from byte `offset`; None if the server says nothing is left (HTTP 416)."""
    try:
        return _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return None  # the .part file already holds the whole body; the checksum decides
        if err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}; check the URL (dataset date, mirror) "
                            f"or download it by hand into {dest}") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, (ConnectionResetError, http.client.HTTPException)):
            raise _Transient(f"connection dropped before the response: {err.reason!r}") from err
        raise _unreachable(url, dest, err.reason) from err
    except (ConnectionResetError, http.client.HTTPException) as err:  # reached, then dropped: retry
        raise _Transient(f"connection dropped before the response: {err!r}") from err
    except OSError as err:  # refused, DNS failure, connect timeout: nothing to retry
        raise _unreachable(url, dest, err) from err


def _fetch_into(url, part, dest, timeout):
    """One attempt: append the rest of `url` to `part` (or restart it). Raises _Transient or DownloadError."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    resp = _request(url, offset, dest, timeout)
    if resp is None:
        return
    with resp:
        start = _response_start(resp, offset)
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        os.makedirs(os.path.dirname(os.path.abspath(part)), exist_ok=True)
        with open(part, "ab" if start else "wb") as f, \
                progress(total=total, desc=os.path.basename(dest), unit="B") as bar:
            bar.update(start)
            try:
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            except (http.client.HTTPException, OSError) as err:
                raise _Transient(f"connection lost after {f.tell()} bytes: {err!r}") from err
            if total is not None and f.tell() != total:
                raise _Transient(f"got {f.tell()} of {total} bytes")
            f.flush()
            os.fsync(f.fileno())


def _already_there(dest, md5, sha256):
    if not os.path.exists(dest):
        return False
    problem = _checksum_problem(dest, md5, sha256)
    if problem:
        raise DownloadError(f"existing file {dest} does not match its checksum ({problem}); "
                            "delete it and run again")
    logger.info("%s already present%s", dest, ", checksum ok" if (md5 or sha256) else "")
    return True


def download(url, dest, md5=None, sha256=None, *, timeout=60.0, retries=3, retry_wait=5.0):
    """Download `url` to `dest`, resuming a previous partial download and verifying checksums.

    The body goes to `<dest>.part`; an existing `.part` is continued with an HTTP Range request (a server
    that ignores Range restarts it). After a complete body the checksums are checked and the file is renamed
    to `dest` atomically, so `dest` exists only when it is complete and verified. A `dest` that already
    exists and matches is not downloaded again.

    Args:
      url: str, http(s) URL.
      dest: str, final path; parent directories are created.
      md5, sha256: optional expected hex digests.
      timeout: float seconds per socket operation.
      retries: int, further attempts (resuming) after a dropped connection or a 5xx answer.
      retry_wait: float seconds before the first retry, doubled each time.

    Returns:
      str, `dest`.

    Raises:
      DownloadError: host unreachable (the message says how to fetch the file by hand), HTTP 4xx, retries
        exhausted, or checksum mismatch (the bad `.part` is deleted; no `dest` is written).
    """
    dest = os.fspath(dest)
    if _already_there(dest, md5, sha256):
        return dest
    part = dest + ".part"
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, dest, timeout)
            break
        except _Transient as err:
            if attempt == retries:
                raise DownloadError(f"giving up on {url} after {retries + 1} attempts ({err}); run again to "
                                    f"resume from {part}, or download it by hand into {dest}") from err
            wait = retry_wait * 2 ** attempt
            logger.warning("%s: %s; resuming in %.0f s", url, err, wait)
            time.sleep(wait)
    problem = _checksum_problem(part, md5, sha256)
    if problem:
        os.remove(part)  # resuming a corrupt body can never fix it
        raise DownloadError(f"checksum mismatch for {url} ({problem}); removed the partial file, "
                            "run again to download it afresh")
    os.replace(part, dest)
    logger.info("downloaded %s (%d bytes)", dest, os.path.getsize(dest))
    return dest


# ----------------------------------------------------------------------------------------------------
# Registry


def download_squad(output_dir, base_url=SQUAD_BASE_URL, **kwargs):
    """SQuAD v1.1 and v2.0 train/dev into `<output_dir>/squad/`. Returns list[str] paths. Raises DownloadError."""
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    return [download(base_url + os.path.basename(rel), os.path.join(output_dir, "squad", rel), md5=md5, **kwargs)
            for rel, md5 in SQUAD_FILES.items()]


def download_vocab(vocab_dir, url_template=VOCAB_URL_TEMPLATE, **kwargs):
    """The four BERT vocabularies as `<vocab_dir>/<model>-vocab.txt`. Returns list[str]. Raises DownloadError."""
    return [download(url_template.format(model=model), os.path.join(vocab_dir, f"{model}-vocab.txt"), md5=md5,
                     **kwargs)
            for model, md5 in VOCAB_FILES.items()]


def _task_complete(task_dir):
    """True when a GLUE task directory holds its train file and a dev file (what extraction leaves)."""
    return os.path.isfile(os.path.join(task_dir, "train.tsv")) and any(
        os.path.isfile(os.path.join(task_dir, name)) for name in ("dev.tsv", "dev_matched.tsv"))


def _extract_task(archive, task, glue_dir):
    """Unpack `archive` (one top-level directory holding the task's .tsv files) into `<glue_dir>/<task>/`,
    atomically: into a sibling temporary directory first, renamed when complete."""
    import shutil
    import tempfile
    import zipfile

    final = os.path.join(glue_dir, task)
    tmp = tempfile.mkdtemp(prefix=f".{task}.", dir=glue_dir)
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise DownloadError(f"{archive} is not a zip archive ({err}); delete it and run again") from None
        roots = [os.path.join(tmp, d) for d in os.listdir(tmp) if not d.startswith("__MACOSX")]
        source = roots[0] if len(roots) == 1 and os.path.isdir(roots[0]) else tmp
        if not _task_complete(source):
            raise DownloadError(f"{archive} holds no {task} train.tsv / dev.tsv; delete it and run again")
        if os.path.exists(final):  # incomplete (a complete task is never extracted again): kept, not deleted
            move_aside(final, f"it lacks {task}'s train.tsv or dev.tsv; extracting {os.path.basename(archive)}")
        os.replace(source, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("extracted %s into %s", os.path.basename(archive), final)
    return final


def _msr_rows(path):
    """(header line, [(label, id1, id2, s1, s2)]) of a Microsoft paraphrase file, split as GLUE's script does."""
    with open(path, encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\r\n")
        rows = []
        for lineno, line in enumerate(f, 2):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            if len(fields) != 5:
                raise DownloadError(f"{path}:{lineno}: {len(fields)} tab-separated columns, expected 5")
            rows.append(tuple(fields))
    return header, rows


def build_mrpc(train_txt, test_txt, dev_ids_tsv, task_dir):
    """GLUE's MRPC train/dev/test.tsv from Microsoft's files, as GLUE's download script builds them: the pairs
    listed in mrpc_dev_ids.tsv go to dev.tsv, the other training pairs to train.tsv (both with the source's
    header), and test.tsv gets an `index` column. Each file is written atomically.

    Returns:
      list of the three paths.
    """
    with open(dev_ids_tsv, encoding="utf-8") as f:
        dev_ids = {tuple(line.strip().split("\t")) for line in f if line.strip()}
    header, train_rows = _msr_rows(train_txt)
    _, test_rows = _msr_rows(test_txt)
    train = [header] + ["\t".join(r) for r in train_rows if (r[1], r[2]) not in dev_ids]
    dev = [header] + ["\t".join(r) for r in train_rows if (r[1], r[2]) in dev_ids]
    test = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [f"{i}\t" + "\t".join(r[1:])
                                                           for i, r in enumerate(test_rows)]
    os.makedirs(task_dir, exist_ok=True)
    paths = []
    for name, lines in (("train.tsv", train), ("dev.tsv", dev), ("test.tsv", test)):
        paths.append(os.path.join(task_dir, name))
        atomic_write_text(paths[-1], "\n".join(lines) + "\n")
    logger.info("MRPC: %d train, %d dev, %d test pairs in %s", len(train) - 1, len(dev) - 1, len(test) - 1,
                task_dir)
    return paths


def download_glue(output_dir, tasks=GLUE_TASKS, base_url=GLUE_BASE_URL, senteval_url=SENTEVAL_BASE_URL, **kwargs):
    """GLUE's nine tasks into `<output_dir>/glue/<Task>/` (the layout run_glue.py's --data-dir expects).

    Archives are downloaded (resumable, sha256-checked) into `<output_dir>/glue/archives/` and unpacked
    atomically; MRPC is built from Microsoft's files with GLUE's dev split (`build_mrpc`). A task whose
    directory is already complete is left alone.

    Args:
      output_dir: root directory.
      tasks: names from GLUE_TASKS.
      base_url, senteval_url: directory URLs of the GLUE archives and of the MRPC source files.

    Returns:
      list[str], the task directories.

    Raises:
      ValueError: an unknown task. DownloadError: a download or an archive failed.
    """
    unknown = [t for t in tasks if t not in GLUE_TASKS]
    if unknown:
        raise ValueError(f"--glue-tasks: unknown task(s) {unknown}; expected some of {', '.join(GLUE_TASKS)}")
    bases = {"glue": base_url if base_url.endswith("/") else base_url + "/",
             "senteval": senteval_url if senteval_url.endswith("/") else senteval_url + "/"}
    glue_dir = os.path.join(output_dir, "glue")
    archives = os.path.join(glue_dir, "archives")
    out = []
    for task in tasks:
        task_dir = os.path.join(glue_dir, task)
        if _task_complete(task_dir) and (task != "MRPC" or os.path.isfile(os.path.join(task_dir, "test.tsv"))):
            logger.info("%s already present", task_dir)
        elif task == "MRPC":
            files = {name: download(bases[where] + name, os.path.join(archives, name), sha256=sha, **kwargs)
                     for name, (where, sha) in MRPC_SOURCES.items()}
            build_mrpc(files["msr_paraphrase_train.txt"], files["msr_paraphrase_test.txt"],
                       files["mrpc_dev_ids.tsv"], task_dir)
        else:
            name, sha = GLUE_ARCHIVES[task]
            _extract_task(download(bases["glue"] + name, os.path.join(archives, name), sha256=sha, **kwargs),
                          task, glue_dir)
        out.append(task_dir)
    return out


def check_dump_date(date):
    """Raises ValueError unless `date` is a real calendar date written YYYYMMDD."""
    if date == "latest":
        raise ValueError("--wiki-dump-date latest is not allowed: it changes over time and breaks "
                         "reproducibility; pass a date YYYYMMDD listed at https://dumps.wikimedia.org/enwiki/")
    try:
        if not (isinstance(date, str) and len(date) == 8 and date.isdigit()):
            raise ValueError(date)
        datetime.datetime.strptime(date, "%Y%m%d")
    except ValueError:
        raise ValueError(f"--wiki-dump-date must be a date YYYYMMDD, got {date!r}") from None


def md5_from_md5sums(md5sums_path, file_name):
    """The md5 listed for `file_name` in an `md5sums.txt` file (lines `<md5>  <name>`); None if absent."""
    with open(md5sums_path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == file_name and re.fullmatch(r"[0-9a-f]{32}", parts[0]):
                return parts[0]
    return None


def download_wikipedia(output_dir, date=DEFAULT_WIKI_DUMP_DATE, mirror=WIKI_MIRROR, **kwargs):
    """The English Wikipedia `pages-articles` dump of `date`, md5-verified against the dump's md5sums file.

    Args:
      output_dir: files go to `<output_dir>/wikipedia/`.
      date: str YYYYMMDD.
      mirror: URL template containing `{date}` for the directory holding that date's files.

    Returns:
      str, path of `enwiki-<date>-pages-articles.xml.bz2`.

    Raises:
      ValueError: bad date or mirror. DownloadError: download failed, or the dump is not listed in the
        md5sums file (the cached md5sums file is then deleted so a later run fetches it again).
    """
    check_dump_date(date)
    if "{date}" not in mirror:
        raise ValueError(f"--wiki-mirror must contain {{date}}, e.g. {WIKI_MIRROR}, got {mirror!r}")
    base = mirror.format(date=date)
    base = base if base.endswith("/") else base + "/"
    wiki_dir = os.path.join(output_dir, "wikipedia")
    dump_name = f"enwiki-{date}-pages-articles.xml.bz2"
    sums_path = download(base + f"enwiki-{date}-md5sums.txt", os.path.join(wiki_dir, f"enwiki-{date}-md5sums.txt"),
                         **kwargs)
    md5 = md5_from_md5sums(sums_path, dump_name)
    if md5 is None:
        os.remove(sums_path)
        raise DownloadError(f"{dump_name} is not listed in {base}enwiki-{date}-md5sums.txt: that dump may be "
                            "unfinished; pick an earlier --wiki-dump-date")
    return download(base + dump_name, os.path.join(wiki_dir, dump_name), md5=md5, **kwargs)


# ----------------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv, target=None):
    """Parse and check the flags; `target` fixed by the caller (a one-target command) drops the argument."""
    prog = "python -m data.prep.download" if target is None else f"download_{target}"
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    if target is None:
        parser.add_argument("target", choices=TARGETS, help="what to download")
    else:
        parser.set_defaults(target=target)
    parser.add_argument("--output-dir", default="data/download", help="root for squad/ and wikipedia/")
    parser.add_argument("--vocab-dir", default=None, help="where vocab files go (default <output-dir>/vocab)")
    parser.add_argument("--wiki-dump-date", default=None,
                        help=f"YYYYMMDD of the enwiki dump (default {DEFAULT_WIKI_DUMP_DATE})")
    parser.add_argument("--wiki-mirror", default=WIKI_MIRROR,
                        help="URL template with {date} for the dump directory, e.g. "
                             "https://archive.org/download/enwiki-{date}/ for dates no longer on dumps.wikimedia.org")
    parser.add_argument("--wiki-dump", default=None, help="use this local pages-articles dump; download nothing")
    parser.add_argument("--squad-base-url", default=SQUAD_BASE_URL, help="directory URL holding the SQuAD json")
    parser.add_argument("--vocab-url-template", default=VOCAB_URL_TEMPLATE, help="URL with {model}")
    parser.add_argument("--glue-tasks", default=",".join(GLUE_TASKS),
                        help="comma-separated GLUE tasks to fetch (default: all nine)")
    parser.add_argument("--glue-base-url", default=GLUE_BASE_URL, help="directory URL holding GLUE's archives")
    parser.add_argument("--senteval-base-url", default=SENTEVAL_BASE_URL,
                        help="directory URL holding Microsoft's MRPC files (msr_paraphrase_*.txt)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per socket operation")
    parser.add_argument("--retries", type=int, default=3, help="resume attempts after a dropped connection")
    args = parser.parse_args(argv)
    _check_args(args)
    return args


def _check_args(args):
    if args.wiki_dump is not None:
        if args.wiki_dump_date is not None:
            raise ValueError("give either --wiki-dump (a local file) or --wiki-dump-date, not both")
        if not os.path.isfile(args.wiki_dump):
            raise ValueError(f"--wiki-dump '{args.wiki_dump}' does not exist or is not a file")
    else:
        args.wiki_dump_date = args.wiki_dump_date or DEFAULT_WIKI_DUMP_DATE
        check_dump_date(args.wiki_dump_date)
    if "{date}" not in args.wiki_mirror:
        raise ValueError(f"--wiki-mirror must contain {{date}}, got {args.wiki_mirror!r}")
    if "{model}" not in args.vocab_url_template:
        raise ValueError(f"--vocab-url-template must contain {{model}}, got {args.vocab_url_template!r}")
    if args.timeout <= 0 or args.retries < 0:
        raise ValueError("--timeout must be > 0 and --retries >= 0")


def main(argv=None, target=None):
    """Run the download CLI. Returns list[str] of the resulting files. Raises ValueError / DownloadError.

    Args:
      argv: the arguments (None: sys.argv[1:]).
      target: one of TARGETS for a one-target command (`download_wikipedia`): argv then has no target.
    """
    args = _parse_args(argv, target)
    opts = {"timeout": args.timeout, "retries": args.retries}
    paths = []
    if args.target in ("vocab", "all"):
        paths += download_vocab(args.vocab_dir or os.path.join(args.output_dir, "vocab"), args.vocab_url_template,
                                **opts)
    if args.target in ("squad", "all"):
        paths += download_squad(args.output_dir, args.squad_base_url, **opts)
    if args.target in ("glue", "all"):
        tasks = [t.strip() for t in args.glue_tasks.split(",") if t.strip()]
        paths += download_glue(args.output_dir, tasks, args.glue_base_url, args.senteval_base_url, **opts)
    if args.target in ("wikipedia", "all"):
        if args.wiki_dump:
            logger.info("using the local dump %s", args.wiki_dump)
            paths.append(args.wiki_dump)
        else:
            paths.append(download_wikipedia(args.output_dir, args.wiki_dump_date, args.wiki_mirror, **opts))
    return paths


def _main_printing(argv, target=None):
    # The CLI's result, for scripts: DUMP=$(python -m data.prep.download wikipedia ...); logs go to stderr.
    for path in main(argv, target):
        sys.stdout.write(path + "\n")


def cli(argv=None):
    """`main` as a command printing the result paths on stdout: 0 ok, 2 bad input, 1 a download failed."""
    return run_cli(_main_printing, argv, exit_codes={DownloadError: 1})


def download_wikipedia_cli(argv=None):
    """The `download_wikipedia` console script (LDDL's command name): `python -m data.prep.download wikipedia`.

    Downloads the pinned, checksummed dump only (LDDL's command also extracts it; here that is
    `python -m data.prep.wikipedia`). Same flags and exit statuses as `cli` without the target argument.

    Args:
      argv: the arguments after the command name (None: sys.argv[1:]).

    Returns:
      int exit status: 0 ok (the dump's path on stdout), 2 bad input, 1 the download failed.
    """
    return run_cli(lambda args: _main_printing(args, target="wikipedia"), argv, exit_codes={DownloadError: 1})


if __name__ == "__main__":
    sys.exit(cli())
