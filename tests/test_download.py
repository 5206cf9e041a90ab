"""Tests for data.prep.download against a local HTTP server on 127.0.0.1 (never a real host).

The server is a tiny handler written here because http.server.SimpleHTTPRequestHandler does not honour
Range requests. It can also ignore Range, cut a response short, or fail with 5xx, to test resume paths.
"""
import bz2
import hashlib
import http.server
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from data.prep import download as dl
from data.prep.download import DownloadError, download

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BODY = bytes(range(256)) * 4000  # 1,024,000 bytes, more than one read chunk
BODY_MD5 = hashlib.md5(BODY).hexdigest()
BODY_SHA256 = hashlib.sha256(BODY).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}  # url path -> bytes
    log = []  # (path, Range header or None)
    ignore_range = False
    cut_next = []  # byte counts: the next responses send only this many body bytes, then hang up
    fail_next = []  # status codes to answer the next requests with

    def do_GET(self):  # noqa: N802 -- http.server's naming
        self.log.append((self.path, self.headers.get("Range")))
        if self.fail_next:
            self.send_error(self.fail_next.pop(0))
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not self.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.cut_next:
            payload = payload[: self.cut_next.pop(0)]
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Handler.files = {}
    _Handler.log = []
    _Handler.ignore_range = False
    _Handler.cut_next = []
    _Handler.fail_next = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


def test_full_download_with_checksums(server, tmp_path):
    base, handler = server
    handler.files["/f.bin"] = BODY
    dest = tmp_path / "sub" / "f.bin"
    assert download(base + "/f.bin", str(dest), md5=BODY_MD5, sha256=BODY_SHA256) == str(dest)
    assert dest.read_bytes() == BODY
    assert not Path(str(dest) + ".part").exists()
    assert handler.log == [("/f.bin", None)]
    # Present and verified: no second request.
    download(base + "/f.bin", str(dest), md5=BODY_MD5)
    assert len(handler.log) == 1


@pytest.mark.parametrize("part, ignore_range, checksum", [
    (BODY[:300_001], False, {"md5": BODY_MD5}),  # continued with a Range request
    (b"x" * 5000, True, {"md5": BODY_MD5}),  # server ignores Range: restarted (appending would corrupt it)
    (BODY, False, {"sha256": BODY_SHA256}),  # .part already complete: the server answers 416, checksum decides
])
def test_existing_part_file(server, tmp_path, part, ignore_range, checksum):
    base, handler = server
    handler.files["/f.bin"] = BODY
    handler.ignore_range = ignore_range
    dest = tmp_path / "f.bin"
    Path(str(dest) + ".part").write_bytes(part)
    download(base + "/f.bin", str(dest), **checksum)
    assert dest.read_bytes() == BODY
    assert handler.log == [("/f.bin", f"bytes={len(part)}-")]


def test_dropped_connection_is_resumed(server, tmp_path):
    base, handler = server
    handler.files["/f.bin"] = BODY
    handler.cut_next = [100_000, 250_000]
    handler.fail_next = []
    dest = tmp_path / "f.bin"
    download(base + "/f.bin", str(dest), md5=BODY_MD5, retry_wait=0)
    assert dest.read_bytes() == BODY
    assert [r for _, r in handler.log] == [None, "bytes=100000-", "bytes=350000-"]


def test_server_error_is_retried_then_gives_up(server, tmp_path):
    base, handler = server
    handler.files["/f.bin"] = BODY
    handler.fail_next = [503]
    dest = tmp_path / "f.bin"
    download(base + "/f.bin", str(dest), md5=BODY_MD5, retry_wait=0)
    assert dest.read_bytes() == BODY
    handler.fail_next = [503, 503, 503]
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download(base + "/f.bin", str(tmp_path / "g.bin"), retries=2, retry_wait=0)
    assert not (tmp_path / "g.bin").exists()


def test_checksum_mismatch(server, tmp_path):
    base, handler = server
    handler.files["/f.bin"] = BODY
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="checksum mismatch.*md5 is " + BODY_MD5):
        download(base + "/f.bin", str(dest), md5="0" * 32)
    assert list(tmp_path.iterdir()) == []  # neither dest nor the .part remain
    dest.write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="does not match its checksum"):
        download(base + "/f.bin", str(dest), md5=BODY_MD5)
    assert dest.read_bytes() == b"tampered"  # never silently deleted


def test_http_404(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(base + "/missing.json", str(tmp_path / "m.json"))
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host(tmp_path):
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/squad/dev-v1.1.json"
    dest = tmp_path / "squad" / "dev-v1.1.json"
    with pytest.raises(DownloadError) as err:
        download(url, str(dest), retry_wait=0)
    message = str(err.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{port}:")
    assert f"download {url} by hand into {dest}" in message
    assert list(tmp_path.iterdir()) == []  # not even the parent directory


def test_cli_offline_exit_code(tmp_path, capsys):
    template = f"http://127.0.0.1:{_closed_port()}/{{model}}/vocab.txt"
    assert dl.cli(["vocab", "--output-dir", str(tmp_path), "--vocab-url-template", template]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1].startswith("error: cannot reach 127.0.0.1:")


def test_registry_md5s_match_the_real_files():
    """The registry's checksums are those of the real files (shared copies of SQuAD dev v1.1 and the vocabs)."""
    dev = SHARED / "data" / "squad" / "dev-v1.1.json"
    vocabs = SHARED / "vocab"
    if not dev.exists() or not vocabs.exists():
        pytest.skip("shared data not present")
    assert dl.file_digest(dev, "md5") == dl.SQUAD_FILES["v1.1/dev-v1.1.json"]
    for model, md5 in dl.VOCAB_FILES.items():
        assert dl.file_digest(vocabs / f"{model}-vocab.txt", "md5") == md5
    assert set(dl.SQUAD_FILES) == {"v1.1/train-v1.1.json", "v1.1/dev-v1.1.json", "v2.0/train-v2.0.json",
                                   "v2.0/dev-v2.0.json"}


def test_cli_vocab_from_local_server(server, tmp_path, capsys):
    vocabs = SHARED / "vocab"
    if not vocabs.exists():
        pytest.skip("shared vocab not present")
    base, handler = server
    for model in dl.VOCAB_FILES:
        handler.files[f"/{model}/vocab.txt"] = (vocabs / f"{model}-vocab.txt").read_bytes()
    assert dl.cli(["vocab", "--output-dir", str(tmp_path / "x"), "--vocab-dir", str(tmp_path / "vocab"),
                   "--vocab-url-template", base + "/{model}/vocab.txt"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "vocab" / f"{m}-vocab.txt") for m in dl.VOCAB_FILES]
    for model in dl.VOCAB_FILES:
        assert (tmp_path / "vocab" / f"{model}-vocab.txt").read_bytes() == handler.files[f"/{model}/vocab.txt"]


def test_wikipedia_verified_by_md5sums(server, tmp_path):
    base, handler = server
    dump = bz2.compress(b"<mediawiki></mediawiki>")
    name = "enwiki-20200101-pages-articles.xml.bz2"
    handler.files[f"/enwiki/20200101/{name}"] = dump
    handler.files["/enwiki/20200101/enwiki-20200101-md5sums.txt"] = (
        f"{'1' * 32}  enwiki-20200101-pages-articles-multistream.xml.bz2\n"
        f"{hashlib.md5(dump).hexdigest()}  {name}\n").encode()
    mirror = base + "/enwiki/{date}"
    path = dl.main(["wikipedia", "--output-dir", str(tmp_path), "--wiki-dump-date", "20200101",
                    "--wiki-mirror", mirror])
    assert path == [str(tmp_path / "wikipedia" / name)]
    assert Path(path[0]).read_bytes() == dump
    # A corrupted dump on the mirror is refused.
    handler.files[f"/enwiki/20200101/{name}"] = dump + b"junk"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        dl.download_wikipedia(str(tmp_path / "again"), "20200101", mirror)
    # A dump missing from md5sums (still running) is refused, and the stale md5sums file is not kept.
    handler.files["/enwiki/20200101/enwiki-20200101-md5sums.txt"] = b""
    with pytest.raises(DownloadError, match="not listed"):
        dl.download_wikipedia(str(tmp_path / "third"), "20200101", mirror)
    assert not (tmp_path / "third" / "wikipedia" / "enwiki-20200101-md5sums.txt").exists()


@pytest.mark.parametrize("argv,message", [
    (["wikipedia", "--wiki-dump-date", "latest"], "latest is not allowed"),
    (["wikipedia", "--wiki-dump-date", "20261341"], "must be a date YYYYMMDD"),
    (["wikipedia", "--wiki-dump-date", "2026111"], "must be a date YYYYMMDD"),
    (["wikipedia", "--wiki-mirror", "https://example.org/enwiki/"], "must contain {date}"),
    (["wikipedia", "--wiki-dump", "/no/such/dump.xml.bz2"], "does not exist"),
    (["vocab", "--vocab-url-template", "https://example.org/vocab.txt"], "must contain {model}"),
])
def test_cli_argument_errors(tmp_path, argv, message):
    # Checked before any network access: example.org is never contacted.
    with pytest.raises(ValueError, match=re.escape(message)):
        dl.main(argv + ["--output-dir", str(tmp_path)])
    assert dl.cli(argv + ["--output-dir", str(tmp_path)]) == 2


def test_local_wiki_dump_downloads_nothing(tmp_path, capsys):
    dump = tmp_path / "enwiki-x.xml.bz2"
    dump.write_bytes(b"x")
    assert dl.cli(["wikipedia", "--wiki-dump", str(dump), "--output-dir", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().out.split() == [str(dump)]
    with pytest.raises(ValueError, match="not both"):
        dl.main(["wikipedia", "--wiki-dump", str(dump), "--wiki-dump-date", "20200101"])


def test_create_datasets_script_is_valid_bash():
    script = REPO / "data" / "create_datasets_from_start.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert "data.prep.preprocess_bert_pretrain" in text and "data.prep.wikipedia" in text
