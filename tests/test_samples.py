"""The embedded SQuAD sample (data/samples/squad) that the offline demo fine-tunes on is valid SQuAD v1.1."""
import json
import os

import pytest

from conftest import REPO
from data.features.squad import read_examples
from tasks.squad_metrics import evaluate_v1

SAMPLE = os.path.join(REPO, "data", "samples", "squad")


@pytest.mark.parametrize("name, count", [("train-v1.1.json", 27), ("dev-v1.1.json", 13)])
def test_sample_reads_as_training_data_with_exact_answer_spans(name, count):
    path = os.path.join(SAMPLE, name)
    examples = read_examples(path, is_training=True)
    assert len(examples) == count
    for ex in examples:  # the word span recovered from answer_start spells the answer
        span = " ".join(ex.doc_tokens[ex.start_position:ex.end_position + 1])
        assert ex.orig_answer_text in span


def test_sample_scores_100_with_its_own_answers_and_train_dev_do_not_overlap():
    with open(os.path.join(SAMPLE, "dev-v1.1.json"), encoding="utf-8") as f:
        dev = json.load(f)
    gold = {qa["id"]: qa["answers"][0]["text"] for a in dev["data"] for p in a["paragraphs"]
            for qa in p["qas"]}
    scores = evaluate_v1(dev, gold)
    assert scores["exact_match"] == 100.0 and scores["f1"] == 100.0
    with open(os.path.join(SAMPLE, "train-v1.1.json"), encoding="utf-8") as f:
        train_titles = {a["title"] for a in json.load(f)["data"]}
    assert not train_titles & {a["title"] for a in dev["data"]}
