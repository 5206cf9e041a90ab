"""`BertTokenizer.encode_ids_batch` (the word cache the preprocessing tokenizes through) equals the reference."""
import itertools

import numpy as np
import pytest

import tokenizer as tokmod
from conftest import shared_path
from data.prep.pretraining_pairs import split_sentences, tokenize_documents
from tokenizer import BertTokenizer, FullTokenizer

# Texts where a word-by-word shortcut could go wrong: control characters that clean_text drops inside a word
# (joining its halves) or maps to a space, separators str.split knows but clean_text keeps or drops,
# accents, Greek final sigma (HF and Google differ: the exact path), CJK ideographs (one token each, no
# spaces around them), an over-long word ([UNK]), punctuation runs, combining marks alone, empty texts.
TRICKY = [
    "", "   ", "Hello, world!", "a\x00b c\x07d\te\rf\ng", "x\x1cy\x1fz ascii\x0bvt\x0cff", "x\x1cy z\x85w",
    "line\u2028sep para\u2029sep",
    "nbsp\u00a0here thin\u2009space", "Café naïve résumé", "ΟΔΟΣ Σίσυφος", "中文字符 and 日本語テキスト",
    "x" * 150 + " short", "...!!!???", "\u0301\u0301 lone marks", "\ufffdreplacement\ufffd", "tab\t\tsep",
    "soft\u00adhyphen zero\u200bwidth", "İstanbul ǅemal ﬁne", "a+b=c <tag> `q` |p| ~t^", "\x7fdel\x7f",
]


@pytest.fixture(scope="module")
def tokenizers():
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    return BertTokenizer(vocab), FullTokenizer(vocab)


def _expected(ref, texts):
    toks = [ref.tokenize(t) for t in texts]
    return [ref.convert_tokens_to_ids(t) for t in toks]


def _split(ids, lengths):
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [ids[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]


def test_tricky_texts_equal_the_reference(tokenizers):
    fast, ref = tokenizers
    ids, lengths = fast.encode_ids_batch(TRICKY)
    assert ids.dtype == np.int32 and lengths.dtype == np.int64 and len(lengths) == len(TRICKY)
    assert _split(ids, lengths) == _expected(ref, TRICKY)
    # Again, now every word is a cache hit: same answer.
    ids2, lengths2 = fast.encode_ids_batch(TRICKY[::-1])
    assert _split(ids2, lengths2) == _expected(ref, TRICKY[::-1])


def test_wikipedia_sentences_equal_the_reference(tokenizers):
    """Raw wikitext (markup, entities, many scripts) from the shared dump, sentence by sentence."""
    from data.prep.wikipedia import iter_dump_pages

    fast, ref = tokenizers
    dump = shared_path("data", "wiki", "enwiki-sample-pages-articles.xml.bz2")
    pages = itertools.islice(iter_dump_pages(dump), 40)
    sentences, chars = [], 0
    for page in pages:
        for s in split_sentences(page.text):
            sentences.append(s)
            chars += len(s)
        if chars > 200_000:
            break
    assert len(sentences) > 500 and any(not s.isascii() for s in sentences)
    ids, lengths = fast.encode_ids_batch(sentences)
    assert _split(ids, lengths) == _expected(ref, sentences)


def test_cache_reset_does_not_change_results(tokenizers, monkeypatch):
    fast, ref = tokenizers
    texts = [f"word{i} shared words here" for i in range(50)]
    monkeypatch.setattr(tokmod, "_WORD_CACHE_LIMIT", 10)
    for _ in range(3):  # every call overflows the limit and starts afresh
        ids, lengths = fast.encode_ids_batch(texts)
        assert len(fast._word_index) <= 10 + 54
        assert _split(ids, lengths) == _expected(ref, texts)


def test_non_str_is_a_value_error_and_leaves_the_cache_usable(tokenizers):
    fast, ref = tokenizers
    with pytest.raises(ValueError, match="item 1 is NoneType"):
        fast.encode_ids_batch(["fine", None])
    ids, lengths = fast.encode_ids_batch(["fine again"])
    assert _split(ids, lengths) == _expected(ref, ["fine again"])


def test_tokenize_documents_same_either_way(tokenizers):
    fast, _ = tokenizers
    documents = [["First sentence.", "", "Second one, café."], [" "], ["Only sentence of doc three."]]
    by_ids = tokenize_documents(documents, encode_ids_batch=fast.encode_ids_batch)
    by_tokens = tokenize_documents(documents, fast.tokenize_batch, fast.vocab)
    for field in ("token_ids", "sentence_offsets", "document_offsets"):
        np.testing.assert_array_equal(getattr(by_ids, field), getattr(by_tokens, field))
    assert by_ids.num_documents == 2
    with pytest.raises(ValueError, match="encode_ids_batch"):
        tokenize_documents(documents)
