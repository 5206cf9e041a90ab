"""data.features.glue: every task's reader on fixtures written in that task's exact GLUE layout (header or not,
column count and order, test files with an index column), the real MRPC, malformed rows, and features."""
import numpy as np
import pytest

from conftest import shared_path
from data.features import glue as G

# task -> {split: file text}; rows copied in the released files' column layouts (tabs, no quoting).
FIXTURES = {
    "CoLA": {
        "train": "gj04\t1\t\tOur friends won't buy this analysis.\nclc95\t0\t*\tThe more we study verbs.\n",
        "dev": "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n",
        "test": "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked \"down the road.\n",
    },
    "SST-2": {
        "train": "sentence\tlabel\nhide new secretions from the parental units \t0\nit 's a charming journey \t1\n",
        "dev": "sentence\tlabel\nit 's a lovely film \t1\n",
        "test": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n",
    },
    "MRPC": {
        "train": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tAmrozi accused his brother.\t"
                 "Referring to him, Amrozi accused his brother.\n",
        "dev": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tHe said \"no.\tShe said yes.\n",
        "test": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tPCCW's officer.\tThe officer.\n",
    },
    "STS-B": {
        "train": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
                 "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
                 "An air plane is taking off.\t5.000\n"
                 "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a flute.\t"
                 "A man is playing a bamboo flute.\t3.800\n",
        "dev": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
               "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\t"
               "A man wearing a hard hat is dancing.\t5.000\n",
        "test": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
                "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\t"
                "A girl is brushing her hair.\n",
    },
    "QQP": {
        "train": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n133273\t213221\t213222\t"
                 "How is the life of a math student?\tWhich level of prepration is enough?\t0\n",
        "dev": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n201359\t303345\t303346\t"
               "Why are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n",
        "test": "id\tquestion1\tquestion2\n0\tWhy am I mentally very lonely?\tFind the remainder when 23 is divided?\n",
    },
    "MNLI": {
        "train": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
                 "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
                 "0\t31193\t31193n\tgovernment\t( ( C ) )\t( P )\t(ROOT)\t(ROOT)\t"
                 "Conceptually cream skimming has two basic dimensions.\tProduct and geography are what make "
                 "cream skimming work.\tneutral\tneutral\n",
        "dev_matched": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                       "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\t"
                       "label5\tgold_label\n0\t63735\t63735n\tslate\t( T )\t( T )\t(ROOT)\t(ROOT)\t"
                       "The new rights are nice enough\tEveryone really likes the newest benefits\tneutral\t"
                       "entailment\tneutral\tneutral\tneutral\tneutral\n",
        "dev_mismatched": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                          "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
                          "label4\tlabel5\tgold_label\n0\t75290\t75290c\tletters\t( Y )\t( Y )\t(ROOT)\t(ROOT)\t"
                          "Your contribution helped.\tYour contributions were of no help.\tcontradiction\t"
                          "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n",
        "test_matched": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                        "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\n0\t31493\t31493\ttravel\t( H )\t"
                        "( H )\t(ROOT)\t(ROOT)\tHierbas, ans seco.\tHierbas is a name.\n",
        "test_mismatched": "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                           "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\n0\t1\t1\tfiction\t( E )\t"
                           "( E )\t(ROOT)\t(ROOT)\tEye fiction.\tIt is fiction.\n",
    },
    "QNLI": {
        "train": "index\tquestion\tsentence\tlabel\n0\tWhen did the third Digimon series begin?\t"
                 "Unlike the two seasons before it.\tnot_entailment\n",
        "dev": "index\tquestion\tsentence\tlabel\n0\tWhat came into force after the new constitution?\t"
               "As of that day, the new constitution was in force.\tentailment\n",
        "test": "index\tquestion\tsentence\n0\tWhat organization is IPCC a part of?\tThe IPCC is a UN body.\n",
    },
    "RTE": {
        "train": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction Found in Iraq Yet.\t"
                 "Weapons of Mass Destruction Found in Iraq.\tnot_entailment\n",
        "dev": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died of lung cancer.\t"
               "Christopher Reeve had an accident.\tnot_entailment\n",
        "test": "index\tsentence1\tsentence2\n0\tMangla was an underground rock.\tMangla is a dam.\n",
    },
    "WNLI": {
        "train": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n",
        "dev": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair.\tThe hair has to be cleaned.\t0\n",
        "test": "index\tsentence1\tsentence2\n0\tMaude and Dora had seen the trains.\tThe trains were seen.\n",
    },
}
# task -> (first train example's text_a, text_b, label)
EXPECTED_FIRST_TRAIN = {
    "CoLA": ("Our friends won't buy this analysis.", None, "1"),
    "SST-2": ("hide new secretions from the parental units ", None, "0"),
    "MRPC": ("Amrozi accused his brother.", "Referring to him, Amrozi accused his brother.", "1"),
    "STS-B": ("A plane is taking off.", "An air plane is taking off.", 5.0),
    "QQP": ("How is the life of a math student?", "Which level of prepration is enough?", "0"),
    "MNLI": ("Conceptually cream skimming has two basic dimensions.",
             "Product and geography are what make cream skimming work.", "neutral"),
    "QNLI": ("When did the third Digimon series begin?", "Unlike the two seasons before it.", "not_entailment"),
    "RTE": ("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.",
            "not_entailment"),
    "WNLI": ("I stuck a pin through a carrot.", "The carrot had a hole.", "1"),
}


def write_task(root, task):
    directory = root / task
    directory.mkdir()
    for split, text in FIXTURES[task].items():
        (directory / f"{split}.tsv").write_text(text, encoding="utf-8")
    return directory


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_each_task_reads_its_train_dev_and_test_layouts(tmp_path, task):
    spec = G.TASKS[task]
    directory = write_task(tmp_path, task)
    first = G.read_examples(str(directory / "train.tsv"), spec, "train")[0]
    assert (first.text_a, first.text_b, first.label) == EXPECTED_FIRST_TRAIN[task]
    for split in spec.dev_splits:
        assert all(e.label is not None for e in G.read_examples(str(directory / f"{split}.tsv"), spec, split))
    for split, name in spec.test_splits:
        test = G.read_examples(str(directory / f"{split}.tsv"), spec, split)
        assert test[0].label is None and test[0].index == "0" and name.endswith(".tsv")
        assert (test[0].text_b is None) == (spec.train.text_b is None)


def test_task_names_are_case_and_dash_insensitive():
    assert G.task_spec("sst-2").name == G.task_spec("SST2").name == "SST-2"
    assert G.task_spec("sts-b").is_regression and G.task_spec("STS-B").num_labels == 1
    assert G.task_spec("mnli").num_labels == 3
    with pytest.raises(ValueError, match="not a GLUE task.*CoLA, SST-2"):
        G.task_spec("squad")


def test_quotes_are_not_special(tmp_path):
    # CoLA's test fixture has an unbalanced quote in row 2: it stays one row with the quote kept.
    spec = G.TASKS["CoLA"]
    rows = G.read_examples(str(write_task(tmp_path, "CoLA") / "test.tsv"), spec, "test")
    assert [r.text_a for r in rows] == ["Bill whistled past the house.", 'The car honked "down the road.']


def test_real_mrpc_row_counts_and_the_unbalanced_quote():
    spec = G.TASKS["MRPC"]
    counts = {split: len(G.read_examples(str(shared_path("data", "glue", "MRPC", f"{split}.tsv")), spec, split))
              for split in ("train", "dev", "test")}
    assert counts == {"train": 3668, "dev": 408, "test": 1725}
    dev = G.read_examples(str(shared_path("data", "glue", "MRPC", "dev.tsv")), spec, "dev")
    assert dev[0].text_b.startswith('"The foodservice pie business') and dev[0].label == "1"
    assert dev[1].text_a.startswith("Magnarelli said")  # the quote did not swallow the next row
    test = G.read_examples(str(shared_path("data", "glue", "MRPC", "test.tsv")), spec, "test")
    assert [t.index for t in test[:3]] == ["0", "1", "2"] and test[-1].index == "1724"


@pytest.mark.parametrize("row, message", [
    ("1\t702876\t702977\tonly four columns", r"train\.tsv:3: 4 tab-separated columns.*has 5"),
    ("2\t702876\t702977\ta\tb", r"train\.tsv:3: label '2' is not one of MRPC's labels \['0', '1'\]"),
    ("1\t702876\t702977\t \tb", r"train\.tsv:3: an empty sentence"),
])
def test_a_malformed_row_is_one_error_naming_file_and_line(tmp_path, row, message):
    directory = write_task(tmp_path, "MRPC")
    path = directory / "train.tsv"
    path.write_text(FIXTURES["MRPC"]["train"] + row + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        G.read_examples(str(path), G.TASKS["MRPC"], "train")


def test_stsb_score_outside_0_5_and_wrong_header(tmp_path):
    spec = G.TASKS["STS-B"]
    path = tmp_path / "train.tsv"
    path.write_text(FIXTURES["STS-B"]["train"].replace("\t3.800", "\t5.5"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"train\.tsv:3: STS-B score '5.5' is not a number in \[0, 5\]"):
        G.read_examples(str(path), spec, "train")
    path.write_text(FIXTURES["MRPC"]["train"], encoding="utf-8")  # MRPC's file given as STS-B
    with pytest.raises(ValueError, match=r"train\.tsv:1: expected the STS-B train header 'index\\tgenre.*"
                                         r"\(that is the header of a MRPC train/dev file\)"):
        G.read_examples(str(path), spec, "train")


def test_real_mrpc_train_without_its_header_is_refused_not_one_row_short(tmp_path):
    # Issue 20 item 11: the first row was taken for the header and silently dropped.
    lines = shared_path("data", "glue", "MRPC", "train.tsv").read_text(encoding="utf-8-sig").splitlines(True)
    path = tmp_path / "train.tsv"
    path.write_text("".join(lines[1:]), encoding="utf-8")
    first = lines[1].rstrip("\n")
    with pytest.raises(ValueError) as err:
        G.read_examples(str(path), G.TASKS["MRPC"], "train")
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    assert str(err.value) == (f"{path}:1: expected the MRPC train header {header!r}, found "
                              f"{first[:120] + '...'!r} (a file without its header line, or not a GLUE file)")


def test_real_mrpc_dev_copied_over_test_is_refused(tmp_path):
    # Issue 20 item 11: dev.tsv as test.tsv had the same column count, so its 0/1 labels became the index.
    path = tmp_path / "test.tsv"
    path.write_bytes(shared_path("data", "glue", "MRPC", "dev.tsv").read_bytes())
    with pytest.raises(ValueError, match=r"test\.tsv:1: expected the MRPC test header 'index\\t#1 ID.*found "
                                         r"'Quality\\t#1 ID.*\(that is the header of a MRPC train/dev file\)"):
        G.read_examples(str(path), G.TASKS["MRPC"], "test")


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_every_headed_split_refuses_its_first_row_as_header_and_a_sibling_split(tmp_path, task):
    spec = G.TASKS[task]
    splits = ["train", *spec.dev_splits, *(s for s, _ in spec.test_splits)]
    for split in splits:
        text = FIXTURES[task][split]
        path = tmp_path / f"{split}.tsv"
        if spec.layout(split).header is None:  # CoLA train/dev: a header line is a bad label on line 1
            path.write_text("source\tlabel\tjudgement\tsentence\n" + text, encoding="utf-8")
            with pytest.raises(ValueError, match=rf"{split}\.tsv:1: label 'label' is not one of"):
                G.read_examples(str(path), spec, split)
            continue
        path.write_text(text.split("\n", 1)[1], encoding="utf-8")  # header dropped
        with pytest.raises(ValueError, match=rf"{split}\.tsv:1: expected the {task} {split} header"):
            G.read_examples(str(path), spec, split)
        other = next((s for s in splits if spec.layout(s).header not in (None, spec.layout(split).header)), None)
        if other is None:  # CoLA's test file: no other split has a header
            continue
        path.write_text(FIXTURES[task][other], encoding="utf-8")
        with pytest.raises(ValueError, match=rf"{split}\.tsv:1: .*\(that is the header of a {task} [a-z/]+ file\)"):
            G.read_examples(str(path), spec, split)


def test_carriage_returns_inside_a_field_stay_in_it(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\r\na\rb\t1\r\n")
    (row,) = G.read_examples(str(path), G.TASKS["SST-2"], "train")
    assert row.text_a == "a\rb" and row.label == "1"


def test_truncate_pair_pops_the_longer_side_first():
    a, b = list("aaaaa"), list("bbb")
    G.truncate_pair(a, b, 6)
    assert (len(a), len(b)) == (3, 3)  # a loses 2 to reach b's length, then nothing more is needed
    a, b = list("aaa"), list("bbb")
    G.truncate_pair(a, b, 5)
    assert (len(a), len(b)) == (3, 2)  # ties: b first


class WordTokenizer:
    """Whitespace tokenizer over a fixed vocab (ids are the positions in VOCAB)."""
    VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "e", "f"]

    def tokenize(self, text):
        return text.split()

    def convert_tokens_to_ids(self, tokens):
        return [self.VOCAB.index(t) for t in tokens]


def test_pair_features_layout_and_truncation():
    spec = G.TASKS["MRPC"]
    examples = [G.GlueExample("x-1", "a b c d e", "f", "1"), G.GlueExample("x-2", "a", "b c", "0")]
    feats = G.examples_to_features(examples, WordTokenizer(), spec, 7)
    # row 0: 6 tokens + 3 specials > 7 -> a loses its last 2: [CLS] a b c [SEP] f [SEP]
    assert feats.input_ids[0].tolist() == [2, 5, 6, 7, 3, 10, 3]
    assert feats.token_type_ids[0].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert feats.input_ids[1].tolist() == [2, 5, 3, 6, 7, 3, 0]
    assert feats.token_type_ids[1].tolist() == [0, 0, 0, 1, 1, 1, 0]
    assert feats.seq_lengths.tolist() == [7, 6] and feats.labels.tolist() == [1, 0] and feats.truncated == 1
    batch = G.batch_of_rows(feats, [1, 0])
    assert batch["attention_mask"].shape == (2, 1, 1, 7)
    assert batch["attention_mask"][0, 0, 0].tolist() == [1] * 6 + [0]
    assert batch["labels"].tolist() == [[0], [1]] and batch["labels"].dtype == np.int64


def test_single_sentence_and_regression_features():
    single = G.examples_to_features([G.GlueExample("x", "a b c d", None, "1")], WordTokenizer(), G.TASKS["SST-2"], 4)
    assert single.input_ids[0].tolist() == [2, 5, 6, 3] and not single.token_type_ids.any()
    scores = G.examples_to_features([G.GlueExample("x", "a", "b", 3.8)], WordTokenizer(), G.TASKS["STS-B"], 8)
    assert scores.labels.dtype == np.float32 and scores.labels.tolist() == [pytest.approx(3.8)]
    unlabelled = G.examples_to_features([G.GlueExample("x", "a", "b", index="0")], WordTokenizer(), G.TASKS["RTE"], 8)
    assert unlabelled.labels is None
    with pytest.raises(ValueError, match="no labels"):
        G.batch_of_rows(unlabelled, [0])
