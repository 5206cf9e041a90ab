"""Tests for data.prep.wikipedia: page selection, wikitext cleaning, output layout, determinism, bad dumps."""
import bz2
import contextlib
import faulthandler
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.prep import wikipedia
from data.prep.wikipedia import clean_wikitext, extract, iter_pages, ordered_clean

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "wiki" / "enwiki-sample-pages-articles.xml.bz2"
LINE_RE = re.compile(r"^\S+ \S")
# The only ns-0, non-redirect page of the sample that is nothing but headings and list items.
ALL_LIST_PAGE_ID = "728"  # "List of anthropologists"


def _sample():
    if not SAMPLE.exists():
        pytest.skip(f"shared test data not present: {SAMPLE}")
    return SAMPLE


def _read_docs(out_dir):
    docs = {}
    for path in sorted(Path(out_dir).glob("wiki-*.txt")):
        for line in path.read_text(encoding="utf-8").splitlines():
            doc_id, _, text = line.partition(" ")
            assert doc_id not in docs, f"duplicate doc_id {doc_id}"
            docs[doc_id] = text
    return docs


def _articles_by_regex(xml_text):
    """Independent reading of the dump: ids of ns-0 pages without a redirect, by plain regexes."""
    ids = []
    for page in re.findall(r"<page>(.*?)</page>", xml_text, flags=re.S):
        ns = re.search(r"<ns>(\d+)</ns>", page).group(1)
        page_id = re.search(r"<id>(\d+)</id>", page).group(1)  # the first <id> is the page's
        if ns == "0" and "<redirect" not in page:
            ids.append(page_id)
    return ids


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wiki") / "source"
    stats = extract(str(_sample()), str(out), num_files=3, num_workers=1)
    return out, stats


def test_exactly_the_articles_come_out(sample_run):
    out, stats = sample_run
    expected = _articles_by_regex(bz2.open(SAMPLE, "rt", encoding="utf-8").read())
    assert len(expected) == 106
    docs = _read_docs(out)
    assert set(docs) == {f"wiki-{i}" for i in expected if i != ALL_LIST_PAGE_ID}
    assert (stats.pages, stats.kept, stats.redirects, stats.other_namespace, stats.empty, stats.failed) == (
        206, 105, 99, 1, 1, 0)
    assert stats.chars == sum(len(t) for t in docs.values())


def test_output_layout_round_robin_in_dump_order(sample_run):
    out, _ = sample_run
    assert sorted(os.listdir(out)) == ["wiki-0.txt", "wiki-1.txt", "wiki-2.txt"]
    counts = [len((out / f"wiki-{k}.txt").read_text(encoding="utf-8").splitlines()) for k in range(3)]
    assert counts == [35, 35, 35]
    first = (out / "wiki-0.txt").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("wiki-12 ")  # Anarchism is the first article of the dump
    second = (out / "wiki-1.txt").read_text(encoding="utf-8").splitlines()[0]
    assert second.startswith("wiki-25 ")  # Autism is the second


def test_no_markup_left_and_line_format(sample_run):
    out, _ = sample_run
    for path in out.glob("wiki-*.txt"):
        raw = path.read_bytes()
        assert b"\r" not in raw
        for line in raw.decode("utf-8").split("\n")[:-1]:
            assert LINE_RE.match(line), line[:80]
            assert line == line.strip() and "  " not in line
            for token in ("{{", "}}", "[[", "]]", "|}", "{|", "<ref", "==", "&nbsp;", "__TOC__", "'''"):
                assert token not in line, (token, line[:80])


@pytest.mark.parametrize("doc_id,opening", [
    ("wiki-12", "Anarchism is a political philosophy that advocates self-governed societies based on "
                "voluntary institutions."),
    ("wiki-303", "Alabama is a state located in the southeastern region of the United States. It is "
                 "bordered by Tennessee to the north, Georgia to the east,"),
    ("wiki-309", "An American in Paris is a jazz-influenced symphonic poem by the American composer "
                 "George Gershwin, written in 1928."),
    ("wiki-340", "Alain Connes (born 1 April 1947) is a French mathematician,"),
    ("wiki-332", "Animalia is an illustrated children's book by Graeme Base."),
])
def test_known_openings(sample_run, doc_id, opening):
    docs = _read_docs(sample_run[0])
    assert docs[doc_id].startswith(opening)


def test_sections_headings_and_refs_are_dropped(sample_run):
    docs = _read_docs(sample_run[0])
    anarchism = docs["wiki-12"]
    # Body prose from a later section survives, its heading line ("== Etymology and terminology ==") does not.
    assert "The term anarchism is a compound word composed from the word anarchy and the suffix" in anarchism
    assert "Etymology and terminology" not in anarchism
    assert "ANARCHISM, a social philosophy" not in anarchism  # text of the first <ref>


def test_parallel_output_identical(sample_run, tmp_path):
    out1, _ = sample_run
    out2 = tmp_path / "two"
    extract(str(SAMPLE), str(out2), num_files=3, num_workers=2)
    for k in range(3):
        assert (out1 / f"wiki-{k}.txt").read_bytes() == (out2 / f"wiki-{k}.txt").read_bytes()


def test_ordered_clean_many_small_batches_keeps_order():
    jobs = [(str(i), f"Sentence number {i}. [[Link {i}|text {i}]]") for i in range(41)]
    got = list(ordered_clean(iter(jobs), num_workers=2, max_pages=3))
    assert got == [(str(i), f"Sentence number {i}. text {i}") for i in range(41)]


def test_clean_wikitext_hand_example():
    text = ("{{Infobox x|a=1}}\n'''Foo''' is a [[bar|baz]] of [[qux]]s.<ref>cite [[z]]</ref> It has "
            "<!-- hidden --> two [[File:x.jpg|thumb|caption [[y]]]] parts.{{citation needed}}\n\n"
            "== History ==\nFoo began in 1900 ({{IPA|x}}; born 1850).\n* item one\n# item two\n: indented\n"
            "; term\n{| class=wikitable\n|-\n| cell\n|}\nA&nbsp;B &amp; C, [http://x.org Example site], "
            "[[:Category:Z|cats]], {{lang|fr|le mot}}, [[Paris (band)|]].\n[[Category:Things]]\n[[de:Foo]]")
    assert clean_wikitext(text) == ("Foo is a baz of quxs. It has two parts. Foo began in 1900 (born 1850). "
                                    "A B & C, Example site, cats, le mot, Paris.")


@pytest.mark.parametrize("text,expected", [
    ("", ""),
    ("* a\n* b\n== H ==\n{{Navbox|x}}", ""),
    ("__NOTOC__\nH<sub>2</sub>O and<br/>ice\n----\nend", "H2O and ice end"),
    ("Unclosed {{cite web |title=T", "Unclosed cite web |title=T"),  # parser gives up; tokens still go
])
def test_clean_wikitext_edge_cases(text, expected):
    assert clean_wikitext(text) == expected


def _xml(pages, ns_uri="http://www.mediawiki.org/xml/export-0.11/"):
    attr = f' xmlns="{ns_uri}"' if ns_uri else ""
    body = "".join(pages)
    return f'<mediawiki{attr} version="0.11" xml:lang="en"><siteinfo><namespaces>' \
           f'<namespace key="0" /><namespace key="1">Talk</namespace></namespaces></siteinfo>{body}</mediawiki>'


def _page(page_id, title, text, ns="0", redirect=False):
    ns_el = f"<ns>{ns}</ns>" if ns is not None else ""
    red = f'<redirect title="X" />' if redirect else ""
    return (f"<page><title>{title}</title>{ns_el}<id>{page_id}</id>{red}<revision><id>9{page_id}</id>"
            f'<text xml:space="preserve">{text}</text></revision></page>')


@pytest.mark.parametrize("ns_uri", ["http://www.mediawiki.org/xml/export-0.11/",
                                    "http://www.mediawiki.org/xml/export-0.3/", None])
def test_any_schema_version_and_page_selection(tmp_path, ns_uri):
    xml = _xml([
        _page(1, "Kept", "Kept text."),
        _page(2, "Redir", "#redirect [[Kept]]"),  # text-only redirect, lower case
        _page(3, "Redir2", "whatever", redirect=True),
        _page(4, "Talk:Kept", "Talk text.", ns="1"),
        _page(5, "Talk:Old", "Old talk.", ns=None),  # pre-0.6 exports have no <ns>: use the title prefix
        _page(6, "Plain", "Plain text.", ns=None),
        _page(7, "Empty", "{{stub}}"),
    ], ns_uri)
    dump = tmp_path / "d.xml"
    dump.write_text(xml, encoding="utf-8")
    out = tmp_path / "out"
    stats = extract(str(dump), str(out), num_files=4, num_workers=1)
    assert _read_docs(out) == {"wiki-1": "Kept text.", "wiki-6": "Plain text."}
    assert (stats.redirects, stats.other_namespace, stats.empty) == (2, 2, 1)
    assert (out / "wiki-3.txt").read_text() == ""  # more files than documents: the rest stay empty
    with open(dump, "rb") as f:
        pages = list(iter_pages(f))
    assert [p.page_id for p in pages] == ["1", "2", "3", "4", "5", "6", "7"]


def test_min_chars(tmp_path):
    dump = tmp_path / "d.xml"
    dump.write_text(_xml([_page(1, "A", "Short."), _page(2, "B", "A longer sentence here.")]), encoding="utf-8")
    stats = extract(str(dump), str(tmp_path / "out"), num_files=1, num_workers=1, min_chars=7)
    assert _read_docs(tmp_path / "out") == {"wiki-2": "A longer sentence here."}
    assert stats.empty == 1


def _assert_fails_cleanly(dump, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=re.escape(str(dump))):
        extract(str(dump), str(out), num_files=2, num_workers=1)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [dump.name]  # no temporary directory left over


def test_corrupt_bz2(tmp_path):
    data = bytearray(_sample().read_bytes()[:400_000])
    for i in range(200_000, 200_400):
        data[i] ^= 0x5A
    dump = tmp_path / "corrupt.xml.bz2"
    dump.write_bytes(bytes(data))
    _assert_fails_cleanly(dump, tmp_path)


def test_truncated_bz2(tmp_path):
    dump = tmp_path / "trunc.xml.bz2"
    dump.write_bytes(_sample().read_bytes()[:300_000])
    _assert_fails_cleanly(dump, tmp_path)


def test_truncated_xml(tmp_path):
    xml = _xml([_page(1, "A", "Some text."), _page(2, "B", "More text.")])
    dump = tmp_path / "trunc.xml"
    dump.write_text(xml[: xml.index("<page>", xml.index("</page>")) + 40], encoding="utf-8")
    _assert_fails_cleanly(dump, tmp_path)


@pytest.mark.parametrize("content", ["just some text, not xml\n", "", "<html><body>x</body></html>"])
def test_not_a_mediawiki_export(tmp_path, content):
    dump = tmp_path / "bad.xml"
    dump.write_text(content, encoding="utf-8")
    _assert_fails_cleanly(dump, tmp_path)


def test_output_dir_rules(tmp_path):
    dump = tmp_path / "d.xml"
    dump.write_text(_xml([_page(1, "A", "Text one.")]), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    extract(str(dump), str(out), num_files=1, num_workers=1)  # an existing empty directory is fine
    with pytest.raises(ValueError, match="not empty"):
        extract(str(dump), str(out), num_files=1, num_workers=1)
    dump.write_text(_xml([_page(2, "B", "Text two.")]), encoding="utf-8")
    extract(str(dump), str(out), num_files=1, num_workers=1, overwrite=True)
    assert _read_docs(out) == {"wiki-2": "Text two."}
    with pytest.raises(ValueError, match="--num-files"):
        extract(str(dump), str(tmp_path / "o2"), num_files=0)
    with pytest.raises(ValueError, match="does not exist"):
        extract(str(tmp_path / "missing.xml"), str(tmp_path / "o3"))


def test_cli_as_a_user_runs_it(tmp_path):
    good = tmp_path / "d.xml"
    good.write_text(_xml([_page(1, "A", "'''A''' is a letter.")]), encoding="utf-8")
    run = [sys.executable, "-m", "data.prep.wikipedia", "--dump", str(good), "--output-dir", str(tmp_path / "o"),
           "--num-files", "1", "--num-workers", "2"]
    proc = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "wiki-0.txt").read_text(encoding="utf-8") == "wiki-1 A is a letter.\n"
    assert "1 articles kept" in proc.stderr
    bad = tmp_path / "bad.xml.bz2"
    bad.write_bytes(b"not bz2 at all")
    run[4], run[6] = str(bad), str(tmp_path / "o2")
    proc = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o2").exists()


def test_cli_function_exit_code(tmp_path):
    assert wikipedia.cli(["--dump", str(tmp_path / "nope.xml"), "--output-dir", str(tmp_path / "o")]) == 2


def _segfault(job):
    faulthandler._sigsegv()  # a real SIGSEGV in the worker process that runs this


def test_dead_worker_raises_instead_of_hanging():
    with pytest.raises(RuntimeError, match="worker process died"):
        list(ordered_clean([("1", "x")] * 4, num_workers=2, clean=_segfault))


def test_ampersands_safe_under_debug_allocator():
    # mwparserfromhell 0.7.2 frees entity buffers with the wrong allocator (upstream issue #352); the
    # debug allocator turns that into a crash, so this fails if '&' ever reaches the parser again.
    code = ("from data.prep.wikipedia import clean_wikitext as c; "
            "print(c('{{T|p=a & b}} [[AT&T]] &amp; x&nbsp;y &#38; [http://a.org/?p=1&q=2 site] &bogus;'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONMALLOC": "debug"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "AT&T & x y & site &bogus;\n"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_the_cli_is_killed(tmp_path, sig):
    # Issue 8 defect 6: workers ran on 40 s and more after the main process was killed.
    psutil = pytest.importorskip("psutil")
    heavy = ("'''Foo''' is a [[bar|baz]] of {{cite web|url=http://x|title=t}} the thing.<ref>{{cite|a=b}}</ref> "
             * 40 + "\n\n== H ==\n") * 5  # ~0.15 s of cleaning per page: the run lasts far longer than the test
    dump = tmp_path / "big.xml"
    heavy = heavy.replace("<", "&lt;").replace(">", "&gt;")  # wikitext inside XML text
    dump.write_text(_xml([_page(i, f"P{i}", heavy) for i in range(1, 400)], None), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "data.prep.wikipedia", "--dump", str(dump), "--output-dir",
                             str(tmp_path / "out"), "--num-workers", "2", "--num-files", "2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    descendants = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            # The pool's workers, not spawn's short-lived resource tracker.
            workers = [c for c in parent.children(recursive=True)
                       if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2, f"workers did not start (exit {proc.poll()})"
        time.sleep(1.0)  # the workers are now busy cleaning pages
        descendants = parent.children(recursive=True)
        os.kill(proc.pid, sig)
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(descendants, timeout=5)
        assert not alive, f"still running 5 s after the main process died: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for child in descendants:  # orphans of a failed test must not run on
            with contextlib.suppress(psutil.Error):
                child.kill()


def test_worker_whose_parent_is_already_gone_exits_at_once():
    # The race prctl cannot cover: the parent died between the worker's start and its initializer.
    code = "import os; from utils.workers import exit_with_parent as e; e(os.getppid() + 1); print('ran on')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
