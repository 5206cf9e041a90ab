"""tasks.glue_metrics against hand-computed cases, and against scikit-learn / scipy on random data (those
comparisons skip when the libraries are not installed; requirements-test.txt pins them)."""
import math

import numpy as np
import pytest

from tasks import glue_metrics as M


def test_accuracy_and_f1_by_hand():
    pred, gold = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert M.accuracy(pred, gold) == pytest.approx(3 / 5)
    # TP 2, FP 1, FN 1 -> 2*2 / (4 + 1 + 1)
    assert M.f1(pred, gold) == pytest.approx(4 / 6)
    assert M.f1([0, 0], [0, 0]) == 0.0


def test_matthews_by_hand():
    # TP 2, TN 1, FP 1, FN 1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert M.matthews_corrcoef([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 6)
    assert M.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert M.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert M.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # constant prediction


def test_pearson_spearman_and_average_ranks_by_hand():
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))
    assert M.average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    # ranks x: 1 2 3, y: 1.5 1.5 3 -> pearson of those
    a, b = np.array([1, 2, 3.0]), np.array([1.5, 1.5, 3.0])
    a, b = a - a.mean(), b - b.mean()
    assert M.spearman([1, 2, 3], [7, 7, 9]) == pytest.approx((a @ b) / math.sqrt((a @ a) * (b @ b)))
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear


def test_mean_loss_is_cross_entropy_or_mse():
    logits = np.array([[0.0, math.log(3.0)], [2.0, 2.0]])
    # p(label) = 3/4 for row 0 (label 1), 1/2 for row 1 (label 0)
    assert M.mean_loss(logits, [1, 0]) == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2)
    assert M.mean_loss(np.array([[1.0], [3.0]]), [2.0, 2.0]) == pytest.approx(1.0)


def test_task_table():
    assert set(M.task_metrics("MRPC", [1, 0], [1, 1])) == {"acc", "f1", "acc_and_f1"}
    assert set(M.task_metrics("CoLA", [1, 0], [1, 1])) == {"acc", "mcc"}
    assert set(M.task_metrics("STS-B", [1.0, 2.0, 3.0], [1.0, 2.5, 2.9])) == {"pearson", "spearmanr", "corr"}
    assert set(M.task_metrics("RTE", [1], [1])) == {"acc"}
    out = M.task_metrics("QQP", [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert out["acc_and_f1"] == pytest.approx((0.6 + 4 / 6) / 2)
    assert set(M.MAIN_METRIC) == {"CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI"}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        M.task_metrics("SQuAD", [1], [1])
    with pytest.raises(ValueError, match="equal length"):
        M.accuracy([1, 0], [1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    gold, pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert M.accuracy(pred, gold) == pytest.approx(metrics.accuracy_score(gold, pred))
    assert M.f1(pred, gold) == pytest.approx(metrics.f1_score(gold, pred))
    assert M.matthews_corrcoef(pred, gold) == pytest.approx(metrics.matthews_corrcoef(gold, pred))
    gold3, pred3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)  # MNLI-style three classes
    assert M.matthews_corrcoef(pred3, gold3) == pytest.approx(metrics.matthews_corrcoef(gold3, pred3))


@pytest.mark.parametrize("seed", [0, 1])
def test_against_scipy_with_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 11, 150) / 2.0  # STS-B-like scores in 0.5 steps: many ties
    pred = np.round(gold + rng.normal(0, 1.0, 150), 1)
    assert M.pearson(pred, gold) == pytest.approx(stats.pearsonr(pred, gold)[0])
    assert M.spearman(pred, gold) == pytest.approx(stats.spearmanr(pred, gold)[0])
    assert M.average_ranks(gold).tolist() == pytest.approx(stats.rankdata(gold).tolist())


def test_a_constant_score_dev_set_warns_that_the_correlations_are_undefined(caplog):
    # Issue 20 item 17: four rows all scored 3.0 by the annotators, varied predictions.
    from data.features.glue import GlueFeatures, task_spec
    from tasks import glue

    labels = np.full(4, 3.0, np.float32)
    features = GlueFeatures(np.zeros((4, 3), np.int32), np.zeros((4, 3), np.int8), np.full(4, 3, np.int32), labels)
    outputs = np.array([[1.0], [2.0], [2.5], [4.0]], np.float32)
    result = glue.evaluate(task_spec("STS-B"), outputs, features)
    assert np.isnan(result["pearson"]) and np.isnan(result["corr"])
    assert result["eval_loss"] == pytest.approx(np.mean((outputs[:, 0] - 3.0) ** 2))
    assert caplog.messages == ["STS-B: corr, pearson, spearmanr undefined (gold scores constant over 4 rows): "
                               "written as null"]
