"""GLUE's metrics, as the benchmark defines them, in plain numpy.

Owns: `accuracy`, `f1` (binary, positive class 1), `matthews_corrcoef` (binary or multi-class, Gorodkin's
R_K as scikit-learn computes it), `pearson`, `spearman` (average ranks for ties), `mean_loss` (the eval loss
the training objective would give), and `task_metrics`, the per-task table:

  CoLA: mcc · SST-2, QNLI, RTE, WNLI: acc · MRPC, QQP: acc, f1, acc_and_f1 · STS-B: pearson, spearmanr, corr ·
  MNLI: acc on each of dev_matched / dev_mismatched (the runner prefixes the mismatched one with `mm_`).

Classification tasks also get `acc` where GLUE's table has another main metric (CoLA), as the seeds log it.
Degenerate inputs (a constant prediction column) give 0.0 for MCC and NaN for the correlations, as
scikit-learn and scipy do. Does not own: reading files or predictions (`data.features.glue`, `tasks.glue`).
"""
import numpy as np

MAIN_METRIC = {"CoLA": "mcc", "SST-2": "acc", "MRPC": "f1", "STS-B": "corr", "QQP": "f1", "MNLI": "acc",
               "QNLI": "acc", "RTE": "acc", "WNLI": "acc"}


def _pair(predictions, labels):
    p, y = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"predictions ({p.size}) and labels ({y.size}) must be non-empty and of equal length")
    return p, y


def accuracy(predictions, labels):
    """Fraction of predictions equal to the labels."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def f1(predictions, labels, positive=1):
    """Binary F1 of class `positive`: 2TP / (2TP + FP + FN); 0.0 when there is no positive anywhere."""
    p, y = _pair(predictions, labels)
    tp = np.sum((p == positive) & (y == positive))
    fp = np.sum((p == positive) & (y != positive))
    fn = np.sum((p != positive) & (y == positive))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, labels):
    """Matthews correlation coefficient (multi-class R_K); 0.0 when either side is constant."""
    p, y = _pair(predictions, labels)
    classes = np.union1d(p, y)
    confusion = np.zeros((classes.size, classes.size), np.float64)
    np.add.at(confusion, (np.searchsorted(classes, y), np.searchsorted(classes, p)), 1)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # true / predicted counts per class
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denominator) if denominator else 0.0


def pearson(x, y):
    """Pearson correlation; NaN when either side is constant."""
    a, b = _pair(x, y)
    a, b = a.astype(np.float64) - np.mean(a), b.astype(np.float64) - np.mean(b)
    denominator = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denominator) if denominator else float("nan")


def average_ranks(values):
    """Ranks 1..n, tied values sharing the mean of their ranks (scipy.stats.rankdata 'average')."""
    values = np.asarray(values).reshape(-1)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # starts of runs of equal values, and each element's run
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(values.size, np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def spearman(x, y):
    """Spearman rank correlation: Pearson of the average ranks."""
    a, b = _pair(x, y)
    return pearson(average_ranks(a), average_ranks(b))


def mean_loss(outputs, labels):
    """The training objective on predictions: mean cross-entropy of logits [N, C] against class ids, or,
    for one output column, the mean squared error against the scores."""
    outputs = np.asarray(outputs, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if outputs.ndim != 2 or outputs.shape[0] != labels.size:
        raise ValueError(f"outputs {outputs.shape} and labels ({labels.size}) do not match")
    if outputs.shape[1] == 1:
        return float(np.mean((outputs[:, 0] - labels) ** 2))
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(labels.size), labels.astype(np.int64)]))


def task_metrics(task, predictions, labels):
    """GLUE's metrics of one task (see the module docstring), as fractions (not percent).

    Args:
      task: a canonical task name (data.features.glue.TASKS keys).
      predictions: class ids [N], or scores [N] for STS-B.
      labels: the gold class ids / scores [N].

    Returns:
      dict metric name -> float.

    Raises:
      ValueError: unknown task, or mismatched lengths.
    """
    if task not in MAIN_METRIC:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(MAIN_METRIC)}")
    if task == "STS-B":
        r, rho = pearson(predictions, labels), spearman(predictions, labels)
        return {"pearson": r, "spearmanr": rho, "corr": (r + rho) / 2}
    result = {"acc": accuracy(predictions, labels)}
    if task == "CoLA":
        result["mcc"] = matthews_corrcoef(predictions, labels)
    if task in ("MRPC", "QQP"):
        result["f1"] = f1(predictions, labels)
        result["acc_and_f1"] = (result["acc"] + result["f1"]) / 2
    return result
