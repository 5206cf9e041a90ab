"""Wikipedia XML dump -> LDDL source text (one document per line: `<doc_id> <text>`).

Owns: stream-parsing a MediaWiki XML export (`pages-articles.xml[.bz2|.gz]`, any export schema version),
choosing which pages are articles (namespace 0, not a redirect, non-empty after cleaning), turning
wikitext into plain prose, and writing the documents into `--num-files` text files atomically.
Does not own: sentence splitting, tokenization or anything later in the pipeline (that is
`data.prep.preprocess_bert_pretrain`), nor downloading the dump (`data.prep.download`).

Cleaning follows the BERT recipe ("extract only the text passages and ignore headers, lists, and
tables"): templates, tables, <ref>s, files/images/categories, interlanguage links, HTML comments,
headings and list items are dropped; link text is kept; whitespace is collapsed so a document is one line.

Usage (from the repo root):
    python -m data.prep.wikipedia --dump data/download/wikipedia/enwiki-20261101-pages-articles.xml.bz2 \
        --output-dir data/download/wikipedia/source --num-files 16 --num-workers 8
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first
import collections
import contextlib
import dataclasses
import html
import logging
import os
import re
import sys
import xml.etree.ElementTree as ET
from concurrent.futures.process import BrokenProcessPool

import mwparserfromhell
from mwparserfromhell import nodes as mwnodes

from data.prep.corpus import open_binary
from utils.cli import ArgumentParser, run_cli
from utils.fs import atomic_output_dir, refuse_output_over_inputs
from utils.logger import progress
from utils.workers import process_pool

logger = logging.getLogger(__name__)

# Link namespaces whose target is media or page metadata, never prose (English names plus canonical aliases).
_DROPPED_LINK_NAMESPACES = frozenset({"file", "image", "media", "category"})
# Interlanguage / interwiki links without a label ("[[de:Anarchismus]]") carry no prose for this wiki.
_INTERLANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]+)*:")
# Tags whose contents are not running prose: citations, tables, formulas, source listings, galleries,
# HTML lists and layout boxes.
_DROPPED_TAGS = frozenset({
    "ref", "references", "table", "gallery", "math", "chem", "ce", "timeline", "imagemap", "score",
    "graph", "syntaxhighlight", "source", "pre", "mapframe", "maplink", "templatedata",
    "includeonly", "noinclude", "hiero", "inputbox", "categorytree", "charinsert", "poem", "ul", "ol",
    "dl", "li", "dt", "dd", "caption", "tr", "td", "th", "div",
})
_LIST_MARKUP = frozenset({"*", "#", ";", ":"})
# A character that cannot occur in XML 1.0 text, used to flag list-item lines for removal.
_LIST_SENTINEL = "\x00"
_MAGIC_WORD_RE = re.compile(r"__[A-Z]+__")
_LEFTOVER_MARKUP_RE = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|={2,}|</?[A-Za-z][^<>]*>")
_STYLE_QUOTES_RE = re.compile(r"'{2,}")
# The few inline templates whose output is part of the sentence, and which positional parameter holds it.
# Every other template (infoboxes, citations, navboxes, pronunciations, conversions) is dropped.
_TEXT_TEMPLATES = {"lang": 2, "nowrap": 1, "nobr": 1, "small": 1}
_EMPTY_PARENS_RE = re.compile(r"\(\s*(?:[,;:]\s*)*\)")
_PAREN_LEADING_PUNCT_RE = re.compile(r"\(\s*(?:[,;:]\s*)+")
_PAREN_TRAILING_PUNCT_RE = re.compile(r"(?:\s*[,;:])+\s*\)")
_DOUBLE_PUNCT_RE = re.compile(r"([,;:])(?:\s*[,;:])+")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?])(?=\s|$)")
_REDIRECT_PREFIX = "#REDIRECT"
# mwparserfromhell 0.7.2's C tokenizer frees its HTML-entity buffers with the wrong allocator (upstream
# issue #352, fixed after 0.7.2, the newest release): it crashes under PYTHONMALLOC=debug and is undefined
# behaviour otherwise. So '&' never reaches the parser: it is swapped for a character XML text cannot
# contain, put back after rendering, and entities are decoded by html.unescape instead.
_AMP_PLACEHOLDER = "\x01"


class WorkerDied(RuntimeError):
    """A page-cleaning worker process died (killed, out of memory, or a crash in the C tokenizer)."""


@dataclasses.dataclass(frozen=True)
class Page:
    """One `<page>` of the dump. `text` is the wikitext of its last revision ('' if absent)."""

    page_id: str
    namespace: int
    title: str
    text: str
    is_redirect: bool


@dataclasses.dataclass
class ExtractStats:
    """Counts reported at the end of an extraction (all ints)."""

    pages: int = 0
    kept: int = 0
    redirects: int = 0
    other_namespace: int = 0
    empty: int = 0
    failed: int = 0
    chars: int = 0


# ----------------------------------------------------------------------------------------------------
# XML streaming


def _local(tag):
    """Element name without its `{namespace}`: the export namespace URI changes with the schema version."""
    return tag.rsplit("}", 1)[-1]


def _namespace_table(siteinfo):
    """{namespace name (lower case): key} from `<siteinfo><namespaces>`, for exports without `<ns>`."""
    table = {}
    for elem in siteinfo.iter():
        if _local(elem.tag) == "namespace" and elem.text:
            table[elem.text.strip().lower()] = int(elem.get("key", "0"))
    return table


def _page_from_element(elem, namespaces):
    fields = {"title": "", "ns": None, "id": "", "text": "", "redirect": False}
    for child in elem:
        name = _local(child.tag)
        if name in ("title", "ns", "id") and not fields.get(name):
            fields[name] = (child.text or "").strip()
        elif name == "redirect":
            fields["redirect"] = True
        elif name == "revision":  # full-history dumps hold several; the last one is current
            for sub in child:
                if _local(sub.tag) == "text":
                    fields["text"] = sub.text or ""
    title = fields["title"]
    if fields["ns"]:
        namespace = int(fields["ns"])
    else:  # export schemas before 0.6 have no <ns>; derive it from the title prefix
        prefix = title.split(":", 1)[0].lower() if ":" in title else ""
        namespace = namespaces.get(prefix, 0)
    redirect = fields["redirect"] or fields["text"].lstrip()[:len(_REDIRECT_PREFIX)].upper() == _REDIRECT_PREFIX
    return Page(page_id=fields["id"], namespace=namespace, title=title, text=fields["text"],
                is_redirect=redirect)


def iter_pages(stream):
    """Stream the pages of a MediaWiki XML export without holding more than one page in memory.

    Args:
      stream: binary file object positioned at the start of the XML document.

    Yields:
      Page, in dump order.

    Raises:
      ValueError: the root element is not <mediawiki>.
      xml.etree.ElementTree.ParseError: malformed or truncated XML.
    """
    context = ET.iterparse(stream, events=("start", "end"))
    first = next(context, None)
    if first is None:
        raise ValueError("empty XML document")
    root = first[1]
    if _local(root.tag) != "mediawiki":
        raise ValueError(f"not a MediaWiki XML export (root element is <{_local(root.tag)}>)")
    namespaces = {}
    for event, elem in context:
        if event != "end":
            continue
        name = _local(elem.tag)
        if name == "siteinfo":
            namespaces = _namespace_table(elem)
        elif name == "page":
            yield _page_from_element(elem, namespaces)
            root.clear()  # drop finished pages (and siteinfo) so memory stays flat over a 100 GB dump


def iter_dump_pages(path):
    """Pages of the dump file at `path` (`.xml`, `.xml.bz2` or `.xml.gz`).

    Raises:
      ValueError: the file is unreadable, truncated, corrupt or not a MediaWiki export; the message names
        the file. Raised lazily, when iteration reaches the bad part.
    """
    try:
        with open_binary(path) as stream:  # also reads multistream dumps (concatenated bz2 streams)
            yield from iter_pages(stream)
    except (OSError, EOFError, ET.ParseError, ValueError) as err:
        raise ValueError(f"cannot read Wikipedia dump '{path}': {err}") from err


# ----------------------------------------------------------------------------------------------------
# Wikitext -> prose


def _link_text(link):
    title = str(link.title).strip()
    target = title.lstrip(":")
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    if prefix in _DROPPED_LINK_NAMESPACES and not title.startswith(":"):
        return ""  # [[File:...]] / [[Category:...]]; a leading ':' makes it an ordinary inline link
    if link.text is None:
        if _INTERLANGUAGE_RE.match(title):
            return ""
        return _render(link.title)
    label = _render(link.text)
    if label.strip():
        return label
    # Pipe trick "[[Paris (band)|]]" displays the title without its parenthetical.
    return re.sub(r"\s*\(.*\)\s*$", "", target)


def _tag_text(tag):
    name = str(tag.tag).strip().lower()
    if tag.wiki_markup in _LIST_MARKUP:
        return _LIST_SENTINEL
    if name in _DROPPED_TAGS:
        return ""
    if name == "br":
        return " "
    if name == "hr":
        return "\n"
    if tag.self_closing or tag.contents is None:
        return ""
    return _render(tag.contents)


def _template_text(template):
    name = str(template.name).strip().lower().replace("_", " ")
    index = 1 if name.startswith("lang-") else _TEXT_TEMPLATES.get(name)
    if index is None or not template.has(index):
        return ""
    return _render(template.get(index).value)


def _render(code):
    """Plain text of a parsed Wikicode, with list items marked by _LIST_SENTINEL at their line start."""
    parts = []
    for node in code.nodes:
        if isinstance(node, mwnodes.Text):
            parts.append(node.value)
        elif isinstance(node, mwnodes.Wikilink):
            parts.append(_link_text(node))
        elif isinstance(node, mwnodes.Tag):
            parts.append(_tag_text(node))
        elif isinstance(node, mwnodes.Template):
            parts.append(_template_text(node))
        elif isinstance(node, mwnodes.ExternalLink):
            # A labelled [http://x label] reads as prose; a bare URL does not.
            parts.append(_render(node.title) if node.brackets and node.title is not None else "")
        # Headings, comments and {{{arguments}}} contribute nothing.
    return "".join(parts)


def _prose_lines(rendered):
    """Lines of running text: drops list items and any table or heading residue mwparserfromhell left."""
    for line in rendered.split("\n"):
        stripped = line.strip()
        if not stripped or _LIST_SENTINEL in line:
            continue
        if stripped.startswith(("{|", "|", "!")) or (stripped.startswith("=") and stripped.endswith("=")):
            continue
        yield stripped


def _tidy(text):
    # Entities are decoded here, not by the parser (see _AMP_PLACEHOLDER).
    text = html.unescape(_MAGIC_WORD_RE.sub(" ", text).replace(_AMP_PLACEHOLDER, "&"))
    # Malformed markup (an unclosed "{{" or "<ref") stays as raw text after parsing; strip its tokens.
    text = _LEFTOVER_MARKUP_RE.sub(" ", text)
    text = _STYLE_QUOTES_RE.sub("", text)  # ''italic'' / '''bold''' marks, left unparsed on purpose
    text = " ".join(text.split())
    # Dropped templates (pronunciations, dates) leave "( )" or "(; born ...)" behind.
    text = _PAREN_LEADING_PUNCT_RE.sub("(", text)
    text = _PAREN_TRAILING_PUNCT_RE.sub(")", text)
    text = _EMPTY_PARENS_RE.sub("", text)
    text = _DOUBLE_PUNCT_RE.sub(r"\1", text)
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return " ".join(text.split())


def clean_wikitext(wikitext):
    """Plain prose of an article's wikitext, on one line.

    Args:
      wikitext: str, the raw `<text>` of a page.

    Returns:
      str with no newlines, whitespace collapsed to single spaces; '' if the page has no prose.
    """
    # Style quotes ('' and ''') are left unparsed: when unbalanced (common inside citations) they make
    # the parser give up on the enclosing template or <ref>, which would then leak into the text as markup.
    safe = wikitext.replace(_AMP_PLACEHOLDER, "").replace("&", _AMP_PLACEHOLDER)
    code = mwparserfromhell.parse(safe, skip_style_tags=True)
    return _tidy(" ".join(_prose_lines(_render(code))))


def _clean_job(job):
    """Worker entry point: (page_id, wikitext) -> (page_id, text or None if cleaning raised)."""
    page_id, wikitext = job
    try:
        return page_id, clean_wikitext(wikitext)
    except Exception:  # noqa: BLE001 -- one pathological page must not kill a multi-hour run
        logging.getLogger(__name__).warning("could not clean page %s", page_id, exc_info=True)
        return page_id, None


# ----------------------------------------------------------------------------------------------------
# Parallel, ordered, memory-bounded cleaning


def _batches(jobs, max_pages, max_chars):
    batch, chars = [], 0
    for job in jobs:
        batch.append(job)
        chars += len(job[1])
        if len(batch) >= max_pages or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _clean_batch(clean, batch):
    return [clean(job) for job in batch]


def _batch_results(future):
    try:
        return future.result()
    except BrokenProcessPool as err:
        raise WorkerDied("a page-cleaning worker process died (killed, out of memory, or a crash in "
                           "mwparserfromhell's C tokenizer); rerun with --num-workers 1 to see the page "
                           "it died on") from err


def ordered_clean(jobs, num_workers, max_pages=64, max_chars=4 << 20, clean=_clean_job):
    """Clean (page_id, wikitext) jobs in a process pool, yielding results in input order.

    Pool.imap would pull the whole dump into its task queue ahead of the workers, so jobs go out in
    small batches with at most 2 * num_workers in flight: workers stay busy, memory stays bounded.
    A worker that dies makes this raise instead of hanging (concurrent.futures, not multiprocessing.Pool);
    a killed parent takes its workers with it (`utils.workers.exit_with_parent`); consume it in a thread
    that lives as long as the pool (the CLI consumes it in its main thread).

    Args:
      jobs: iterable of (str page_id, str wikitext).
      num_workers: int >= 1; 1 cleans in this process.
      max_pages, max_chars: batch bounds.
      clean: picklable job -> result function (default: clean_wikitext, None where it raised).

    Yields:
      clean(job) for each job, in the order of `jobs`: by default (page_id, cleaned text or None).

    Raises:
      WorkerDied (a RuntimeError): a worker process died.
    """
    if num_workers <= 1:
        yield from map(clean, jobs)
        return
    # spawn: forked children would inherit whatever threads the parent runs (e.g. paddle's, under pytest).
    # Workers end with this process, even when it is SIGKILLed.
    pool = process_pool(num_workers, "spawn")
    try:
        pending = collections.deque()
        for batch in _batches(jobs, max_pages, max_chars):
            pending.append(pool.submit(_clean_batch, clean, batch))
            if len(pending) >= 2 * num_workers:
                yield from _batch_results(pending.popleft())
        while pending:
            yield from _batch_results(pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------------
# Extraction


def _article_jobs(pages, stats):
    for page in pages:
        stats.pages += 1
        if page.namespace != 0:
            stats.other_namespace += 1
        elif page.is_redirect:
            stats.redirects += 1
        else:
            yield page.page_id, page.text


def _write_round_robin(results, outputs, min_chars, stats):
    for page_id, text in results:
        if text is None:
            stats.failed += 1
        elif len(text) < min_chars:
            stats.empty += 1
        else:
            outputs[stats.kept % len(outputs)].write(f"wiki-{page_id} {text}\n")
            stats.kept += 1
            stats.chars += len(text)


def _check_output_dir(output_dir, overwrite):
    """Returns the `overwrite` flag for atomic_output_dir: an existing empty directory may be replaced."""
    if not os.path.exists(output_dir):
        return False
    if not os.path.isdir(output_dir):
        raise ValueError(f"--output-dir '{output_dir}' exists and is not a directory")
    if os.listdir(output_dir) and not overwrite:
        raise ValueError(f"--output-dir '{output_dir}' exists and is not empty; remove it or pass --overwrite")
    return True


def extract(dump_path, output_dir, num_files=16, num_workers=None, min_chars=1, overwrite=False):
    """Extract the articles of a Wikipedia dump into `num_files` LDDL source files `wiki-<k>.txt`.

    Document i (in dump order, counting kept documents only) goes to file i % num_files, so output is
    identical for any number of workers.

    Args:
      dump_path: str, `*.xml`, `*.xml.bz2` or `*.xml.gz` MediaWiki export.
      output_dir: str, created atomically; must not exist or be empty unless `overwrite`.
      num_files: int >= 1.
      num_workers: int >= 1, cleaning processes (default os.cpu_count()).
      min_chars: int >= 1, pages whose cleaned text is shorter are dropped (counted as empty).
      overwrite: replace a non-empty `output_dir`.

    Returns:
      ExtractStats.

    Raises:
      ValueError: bad argument, missing/unreadable/corrupt dump, or unusable output_dir. No output
        directory is left behind.
    """
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    for flag, value in (("--num-files", num_files), ("--num-workers", num_workers), ("--min-chars", min_chars)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    if not os.path.isfile(dump_path):
        raise ValueError(f"--dump '{dump_path}' does not exist or is not a file")
    refuse_output_over_inputs("--output-dir", output_dir, [("--dump", dump_path)])
    replace = _check_output_dir(output_dir, overwrite)
    stats = ExtractStats()
    with atomic_output_dir(output_dir, overwrite=replace) as tmp:
        outputs = [open(os.path.join(tmp, f"wiki-{k}.txt"), "w", encoding="utf-8", newline="\n")
                   for k in range(num_files)]
        try:
            pages = progress(iter_dump_pages(dump_path), desc="wikipedia pages", unit="page")
            # closing(): a write error must shut the worker pool down now, not at garbage collection.
            with contextlib.closing(ordered_clean(_article_jobs(pages, stats), num_workers)) as results:
                _write_round_robin(results, outputs, min_chars, stats)
        finally:
            for out in outputs:
                out.close()
    logger.info("%s: %d pages seen, %d articles kept (%d chars) in %d files, %d redirects, "
                "%d in other namespaces, %d empty, %d failed to parse", dump_path, stats.pages, stats.kept,
                stats.chars, num_files, stats.redirects, stats.other_namespace, stats.empty, stats.failed)
    return stats


def _parse_args(argv):
    parser = ArgumentParser(prog="python -m data.prep.wikipedia", description=__doc__.split("\n")[0])
    parser.add_argument("--dump", required=True, help="enwiki-YYYYMMDD-pages-articles.xml(.bz2|.gz)")
    parser.add_argument("--output-dir", required=True, help="directory to create with wiki-<k>.txt files")
    parser.add_argument("--num-files", type=int, default=16, help="number of output text files")
    parser.add_argument("--num-workers", type=int, default=os.cpu_count() or 1, help="cleaning processes")
    parser.add_argument("--min-chars", type=int, default=1, help="drop articles with less cleaned text")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the extraction CLI. Returns ExtractStats; raises ValueError on bad input (see `extract`)."""
    args = _parse_args(argv)
    return extract(args.dump, args.output_dir, num_files=args.num_files, num_workers=args.num_workers,
                   min_chars=args.min_chars, overwrite=args.overwrite)


def cli(argv=None):
    """`main` as a command (`utils.cli.run_cli`): 0 ok, 2 bad input, 1 a cleaning worker died."""
    return run_cli(main, argv, exit_codes={WorkerDied: 1})


if __name__ == "__main__":
    sys.exit(cli())
