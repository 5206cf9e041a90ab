"""Tests for tokenizer.py: hand-derived golden cases, vocab loading and case checks, and token-for-token
equality of the HF fast path with the pure-Python reference (exhaustive on ASCII, on tricky Unicode and
on real English text)."""
import itertools
import json
import random
from pathlib import Path

import pytest

from tokenizer import (BasicTokenizer, BertTokenizer, FullTokenizer, WordpieceTokenizer, check_vocab_case,
                       clean_text, has_words, load_vocab, whitespace_tokenize)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def shared(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


def write_vocab(tmp_path, tokens, name="vocab.txt"):
    path = tmp_path / name
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


@pytest.fixture
def tiny_vocab(tmp_path):
    # Google's own test vocabulary idea: enough pieces to split 'unwanted' and 'running' one way only.
    tokens = SPECIALS + ["want", "##want", "##ed", "wa", "un", "runn", "##ing", ",", "low", "lowest",
                         "οδος", "a", "##a", "b", "##b", "\U0002B820"]
    return write_vocab(tmp_path, tokens)


def both(vocab_file, do_lower_case=True):
    return (FullTokenizer(vocab_file, do_lower_case, check_case=False),
            BertTokenizer(vocab_file, do_lower_case, check_case=False))


# ---------------------------------------------------------------------------------------------- golden

@pytest.mark.parametrize("text, expected", [
    # uncased: lower-case, strip the accent of 'é', split ',' off, then greedy longest match
    ("UNwant\u00E9d,running", ["un", "##want", "##ed", ",", "runn", "##ing"]),
    ("", []),
    ("  \t\n\r ", []),
    ("\x00\x01\ufffd", []),
    ("unwantedX", ["[UNK]"]),                 # 'x' has no piece: the whole word is [UNK], not a prefix
    ("lowest low", ["lowest", "low"]),        # longest match first: 'lowest', not 'low' + '##est'
    ("ΟΔΟΣ", ["οδος"]),                       # Greek final sigma: Python's lower() gives 'ς'
    ("a\u0378b", ["a", "##b"]),               # U+0378 is unassigned (Cn): removed, joining 'ab' 
    ("a\U0002B820b", ["a", "\U0002B820", "b"]),  # CJK Ext. E ideograph: split into its own token
])
def test_golden_uncased(tiny_vocab, text, expected):
    for tok in both(tiny_vocab, do_lower_case=True):
        assert tok.tokenize(text) == expected, type(tok).__name__


def test_max_input_chars_per_word(tiny_vocab):
    for tok in both(tiny_vocab):
        assert tok.tokenize("a" * 100) == ["a"] + ["##a"] * 99
        assert tok.tokenize("a" * 101) == ["[UNK]"]
        assert tok.tokenize("b " + "a" * 101 + " b") == ["b", "[UNK]", "b"]


@pytest.mark.parametrize("text, lower, cased", [
    (" \tHeLLo!how  \n Are yoU?  ", ["hello", "!", "how", "are", "you", "?"],
     ["HeLLo", "!", "how", "Are", "yoU", "?"]),
    ("H\u00E9llo \u00D6l\u00E7\u00FC", ["hello", "olcu"], ["H\u00E9llo", "\u00D6l\u00E7\u00FC"]),
    ("ah\u535A\u63A8zz", ["ah", "\u535A", "\u63A8", "zz"], ["ah", "\u535A", "\u63A8", "zz"]),
    # NUL, BEL (Cc), U+FFFD, zero-width space (Cf) vanish without splitting the word
    ("a\x00b\x07c\ufffdd\u200be", ["abcde"], ["abcde"]),
    # tab/newline/CR and no-break space (Zs) separate words
    ("a\tb\nc\rd\u00a0e", ["a", "b", "c", "d", "e"], ["a", "b", "c", "d", "e"]),
    # every non-alphanumeric ASCII char splits, including symbols ($ + ^ ` | ~) Unicode files under S*
    ("a+b$c^d`e|f~g", list("a+b$c^d`e|f~g"), list("a+b$c^d`e|f~g")),
    # Unicode punctuation (P*) splits; a non-ASCII symbol (° is So) does not
    ("a\u00bfb\u00a7c d\u00b0e", ["a", "\u00bf", "b", "\u00a7", "c", "d\u00b0e"],
     ["a", "\u00bf", "b", "\u00a7", "c", "d\u00b0e"]),
    ("don't...", ["don", "'", "t", ".", ".", "."], ["don", "'", "t", ".", ".", "."]),
])
def test_basic_tokenizer_golden(text, lower, cased):
    assert BasicTokenizer(do_lower_case=True).tokenize(text) == lower
    assert BasicTokenizer(do_lower_case=False).tokenize(text) == cased


def test_basic_tokenizer_rejects_non_str():
    with pytest.raises(ValueError, match="expects str"):
        BasicTokenizer().tokenize(b"bytes")


def test_helpers():
    assert whitespace_tokenize("  a \u2028 b\t") == ["a", "b"]
    assert whitespace_tokenize(" \n ") == []
    # NUL and \x1f (Cc) are dropped, tab and the ideographic space (Zs) become ' '
    assert clean_text("a\x00\tb\x1fc\u3000d") == "a bc d"
    assert WordpieceTokenizer({"un", "##aff", "##able"}).tokenize("unaffable") == ["un", "##aff", "##able"]


def test_has_words_is_whether_the_reference_basic_tokenizer_finds_a_word():
    cased = BasicTokenizer(do_lower_case=False)  # has_words is about cleaning, not case or accents
    texts = [chr(cp) for cp in range(0x3000)] + [chr(cp) for cp in range(0xFE00, 0x10000)] + \
        ["\u200b\u200b", "\x00\x01\x02", "\ufeff\u2028 \u00ad", "\u200ba", "", " \t\n", "\U000E0001"]
    assert [has_words(t) for t in texts] == [bool(cased.tokenize(t)) for t in texts]
    assert not has_words("\x00\x01\x02") and not has_words("\u200b\u200b") and has_words("\u200bx")


# --------------------------------------------------------------------------------------------- vocab

def test_load_vocab_ids_are_line_numbers_and_strip_crlf(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(b"[PAD]\r\nhello\r\n##lo \nworld")  # CRLF, trailing space, no final newline
    assert load_vocab(path) == {"[PAD]": 0, "hello": 1, "##lo": 2, "world": 3}
    assert list(load_vocab(path)) == ["[PAD]", "hello", "##lo", "world"]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"a\n\nb\n", "line 2 is blank"),
    (b"a\nb\na\n", "line 3 repeats token 'a'"),
    (b"a\n\xff\xfe\n", "not UTF-8"),
])
def test_load_vocab_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_vocab(path)
    assert str(path) in str(err.value)


def test_load_vocab_missing_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_vocab(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="does not exist"):
        BertTokenizer(tmp_path / "nope.txt")


def test_missing_special_token_names_file(tmp_path):
    path = write_vocab(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"])
    with pytest.raises(ValueError, match=r"lacks special token\(s\) \[MASK\]") as err:
        BertTokenizer(path, check_case=False)
    assert str(path) in str(err.value)


def test_special_ids_and_conversions(tiny_vocab):
    tok = BertTokenizer(tiny_vocab, check_case=False)
    assert tok.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert tok.vocab_size == 21 and tok.do_lower_case is True
    assert list(tok.vocab)[:5] == SPECIALS and tok.inv_vocab[5] == "want"
    ids = tok.convert_tokens_to_ids(["un", "##want", "##ed"])
    assert ids == [9, 6, 7]
    assert tok.convert_ids_to_tokens(ids) == ["un", "##want", "##ed"]
    with pytest.raises(ValueError, match="'zzz' is not in the vocabulary"):
        tok.convert_tokens_to_ids(["un", "zzz"])
    with pytest.raises(ValueError, match="id 21 is not in the vocabulary"):
        tok.convert_ids_to_tokens([0, 21])
    ref = FullTokenizer(tiny_vocab, check_case=False)
    assert ref.convert_tokens_to_ids(["un", "##want"]) == [9, 6]


# ------------------------------------------------------------------------------------- case checking

def test_case_check_tiny_vocabs(tmp_path):
    lower = load_vocab(write_vocab(tmp_path, SPECIALS + ["the", "##s", "cat", "ℝ"], "l.txt"))
    upper = load_vocab(write_vocab(tmp_path, SPECIALS + ["The", "##s", "cat", "Cat"], "u.txt"))
    digits = load_vocab(write_vocab(tmp_path, SPECIALS + ["1", "##2", "+"], "d.txt"))
    check_vocab_case(lower, True, "l.txt")       # 'ℝ' has no lower-case form: not evidence of casing
    check_vocab_case(upper, False, "u.txt")
    check_vocab_case(digits, True, "d.txt")      # nothing with case: cannot tell, must not complain
    check_vocab_case(digits, False, "d.txt")
    with pytest.raises(ValueError, match="l.txt' is uncased.*use do_lower_case=True"):
        check_vocab_case(lower, False, "l.txt")
    with pytest.raises(ValueError, match="u.txt' is cased.*use do_lower_case=False"):
        check_vocab_case(upper, True, "u.txt")


@pytest.mark.parametrize("case, lower, ok", [
    ("cased", False, True), ("uncased", True, True), ("cased", True, False), ("uncased", False, False),
])
def test_case_check_real_vocabs(case, lower, ok):
    path = shared("vocab", f"bert-base-{case}-vocab.txt")
    for cls in (BertTokenizer, FullTokenizer):
        if ok:
            cls(path, do_lower_case=lower)
        else:
            with pytest.raises(ValueError, match="use do_lower_case=") as err:
                cls(path, do_lower_case=lower)
            assert str(path) in str(err.value)
        cls(path, do_lower_case=lower, check_case=False)  # explicit opt-out always loads


# ------------------------------------------------------------------------- fast path == reference

def char_vocab(tmp_path, texts, do_lower_case):
    """A vocab holding every character (and its ## form) the reference produces for `texts`, so WordPiece
    never hides a basic-tokenizer difference behind [UNK]."""
    basic = BasicTokenizer(do_lower_case)
    chars = sorted({ch for t in texts for word in basic.tokenize(t) for ch in word})
    return write_vocab(tmp_path, SPECIALS + chars + ["##" + c for c in chars], f"chars{do_lower_case}.txt")


def assert_same(ref, fast, texts):
    got = fast.tokenize_batch(texts)
    assert len(got) == len(texts)
    for text, tokens in zip(texts, got):
        assert tokens == ref.tokenize(text), repr(text)


@pytest.mark.parametrize("lower", [True, False])
def test_fast_equals_reference_exhaustive_ascii(tmp_path, lower):
    contexts = ["{c}", "a{c}b", "A{c}", "{c}A", "x {c}{c} y", "{c}word{c}"]
    texts = [ctx.format(c=chr(cp)) for cp in range(128) for ctx in contexts]
    rng = random.Random(1234)
    alphabet = [chr(cp) for cp in range(128)]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(2000)]
    vocab = char_vocab(tmp_path, texts, lower)
    assert_same(*both(vocab, lower), texts)


# Characters where HF's BertNormalizer (alone) and Google's Python disagree, plus ordinary non-ASCII.
TRICKY = ["Σ", "Ο", "Δ", "İ", "ß", "ﬁ", "é", "e\u0301", "Å", "\u0378", "\U0002B820", "\u4e2d",
          "\u200b", "\u2028", "\u00a0", "\u3000", "\u061d", "\u2e5d", "\u08e2", "\ue000", "\U0001F600",
          "\U0001FAE8", "\u00bf", "\u00b0", "\u0307", "\u1abf", "\u166d", "ς", "Ⅻ", "ǅ", "\ufffd", "\x85",
          "\x1c"]


@pytest.mark.parametrize("lower", [True, False])
def test_fast_equals_reference_tricky_unicode(tmp_path, lower):
    rng = random.Random(99)
    pool = TRICKY + list("aB ,.-")
    texts = ["".join(rng.choice(pool) for _ in range(rng.randrange(1, 12))) for _ in range(1500)]
    texts += [ch for ch in TRICKY] + [f"A{ch}" for ch in TRICKY] + ["ΟΔΟΣ", "ΟΔΟΣ ΟΔΟΣ.", "word ΟΔΟΣ"]
    vocab = char_vocab(tmp_path, texts, lower)
    ref, fast = both(vocab, lower)
    assert_same(ref, fast, texts)
    # mixing exact-path and fast-path texts in one batch keeps the order
    mixed = ["ΟΔΟΣ", "ab", "\u0378ab"]
    assert fast.tokenize_batch(mixed) == [ref.tokenize(t) for t in mixed]


def test_fast_path_rejects_non_str(tiny_vocab):
    tok = BertTokenizer(tiny_vocab, check_case=False)
    with pytest.raises(ValueError, match="item 1 is NoneType"):
        tok.tokenize_batch(["a", None])


@pytest.fixture(scope="module")
def english_texts():
    """Real English: ~300 stdlib docstring documents and, if present, 300 SQuAD paragraphs + questions."""
    from data.prep.sample_corpus import iter_documents

    texts = [text for _, text in itertools.islice(iter_documents(), 300)]
    squad = SHARED / "data" / "squad" / "dev-v1.1.json"
    if squad.exists():
        data = json.loads(squad.read_text(encoding="utf-8"))["data"]
        paragraphs = [p for article in data for p in article["paragraphs"]][:300]
        texts += [p["context"] for p in paragraphs]
        texts += [qa["question"] for p in paragraphs for qa in p["qas"]]
    return texts


@pytest.mark.parametrize("case", ["uncased", "cased"])
def test_fast_equals_reference_on_real_english(case, english_texts):
    path = shared("vocab", f"bert-base-{case}-vocab.txt")
    lower = case == "uncased"
    ref, fast = FullTokenizer(path, lower), BertTokenizer(path, lower)
    assert len(english_texts) >= 300
    assert any(not t.isascii() for t in english_texts)  # the non-ASCII checks are really exercised
    assert_same(ref, fast, english_texts)
    assert fast.tokenize(english_texts[0]) == ref.tokenize(english_texts[0])


def test_real_vocab_known_answers():
    path = shared("vocab", "bert-base-uncased-vocab.txt")
    tok = BertTokenizer(path)
    # Ids from the published bert-base-uncased vocab file (line number - 1).
    assert tok.special_ids == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    assert tok.tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    assert tok.convert_tokens_to_ids(["hello", ",", "world", "!"]) == [7592, 1010, 2088, 999]
