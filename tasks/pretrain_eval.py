"""Validation of the pretraining objectives: masked-LM and NSP loss and accuracy on a fixed, held-out set.

Owns: choosing the evaluation batches (`load_eval_batches`: always the same ones), running the `for_test`
program over them (`PretrainEvaluator`) and combining per-batch values into set-level metrics (`combine`).
Used during training (`tasks.pretraining`, every --eval-freq updates and at the end) and standalone
(`evaluate_checkpoint`, what run_pretraining_inference.py runs: runtime, program, parameters, evaluation).
Does not own the programs (`program.build_pretraining`: its `eval_program` is the forward cloned
`for_test`, so dropout is off), the loss definitions (`loss.py`), or the report.

Determinism: the batches come from `data.loader.lddl_loader` with a fixed seed (`EVAL_SEED`, not the
training seed, so runs with different seeds are scored on the identical set), one process's view
(rank 0 of 1), no workers, epoch 0; dynamic masking draws from that seed per batch, static masks are
read as stored. They are read once and kept in memory, so every evaluation feeds the same arrays.

Weighting: a batch's MLM loss and accuracy are means over its predicted tokens and its NSP values means
over its sequences, so the set-level values weight batch means by those counts: the result is the mean
over all predicted tokens (MLM) and over all sequences (NSP) of the set, whatever the batch boundaries.
"""
import logging
import time

import numpy as np

import program as program_lib
from data.loader.lddl_loader import get_bert_pretrain_data_loader
from tasks.config import PrecisionConfig, train_config
from utils.logger import progress
from utils.weights import load_pretrained
from utils.runtime import init_runtime

logger = logging.getLogger(__name__)

EVAL_SEED = 20231  # masks and batch order of every evaluation set; independent of --seed on purpose
IGNORE_INDEX = -1  # masked_lm_labels where nothing is predicted (the loader's default)
PER_BATCH = ("mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc")


def load_eval_batches(eval_dir, *, vocab_file, batch_size, num_batches=None, max_seq_length=None,
                      max_predictions_per_seq=None, sequence_length_alignment=64, show_progress=False):
    """The evaluation set: the first `num_batches` batches of `eval_dir` (all of one pass when None).

    Args:
      eval_dir: directory of LDDL Parquet or NVIDIA HDF5 shards (what the training loader reads).
      vocab_file: the vocab the shards were tokenised with.
      batch_size: int >= 1; the last batch of a bin may be smaller (nothing is dropped).
      num_batches: int >= 1 or None.
      max_seq_length, max_predictions_per_seq, sequence_length_alignment: as for training.
      show_progress: a bar (terminal) or periodic lines (log) while reading: a whole pass takes minutes.

    Returns:
      list of feed dicts (int64 arrays, see `data.loader.lddl_loader.get_bert_pretrain_data_loader`).

    Raises:
      ValueError: bad shards (from the loader), or a directory that gives no batch.
    """
    loader = get_bert_pretrain_data_loader(
        eval_dir, vocab_file=vocab_file, batch_size=batch_size, rank=0, world_size=1, seed=EVAL_SEED,
        num_workers=0, sequence_length_alignment=sequence_length_alignment,
        max_predictions_per_seq=max_predictions_per_seq, max_seq_length=max_seq_length, drop_last=False)
    batches = []
    try:
        for feed in progress(loader, total=num_batches, desc="reading the evaluation set", unit="batch",
                             disable=None if show_progress else True):
            batches.append(feed)
            if num_batches is not None and len(batches) >= num_batches:
                break
    finally:
        loader.close()
    if not batches:
        raise ValueError(f"--eval-dir '{eval_dir}' gives no batch of {batch_size} sequences")
    if num_batches is not None and len(batches) < num_batches:
        logger.warning("--eval-dir '%s' has only %d batches of %d; evaluating those (--num-eval-batches %d)",
                       eval_dir, len(batches), batch_size, num_batches)
    logger.info("evaluation set: %d batches, %d sequences, %d predicted tokens from %s", len(batches),
                sum(len(b["input_ids"]) for b in batches), sum(batch_counts(b)[0] for b in batches), eval_dir)
    return batches


def batch_counts(feed):
    """(predicted tokens, sequences) of one feed: the weights of its MLM and NSP means."""
    return int(np.count_nonzero(np.asarray(feed["masked_lm_labels"]) != IGNORE_INDEX)), len(feed["input_ids"])


def combine(per_batch):
    """Set-level metrics from per-batch means (weighting in the module docstring).

    Args:
      per_batch: list of (values, tokens, sequences): values a dict with mlm_loss, mlm_acc, nsp_loss,
        nsp_acc (floats, the batch's means), tokens its predicted tokens, sequences its sequences.

    Returns:
      dict eval_loss (= eval_mlm_loss + eval_nsp_loss, as the training loss), eval_mlm_loss, eval_mlm_acc,
      eval_nsp_loss, eval_nsp_acc, eval_sequences, eval_masked_tokens.

    Raises:
      ValueError: no batch, or no predicted token at all.
    """
    tokens = np.array([t for _, t, _ in per_batch], np.float64)
    sequences = np.array([s for _, _, s in per_batch], np.float64)
    if not per_batch or tokens.sum() <= 0:
        raise ValueError("the evaluation set has no predicted (masked) token")

    def mean(name, weights):
        return float(np.dot([v[name] for v, _, _ in per_batch], weights) / weights.sum())

    out = {"eval_mlm_loss": mean("mlm_loss", tokens), "eval_mlm_acc": mean("mlm_acc", tokens),
           "eval_nsp_loss": mean("nsp_loss", sequences), "eval_nsp_acc": mean("nsp_acc", sequences)}
    return {"eval_loss": out["eval_mlm_loss"] + out["eval_nsp_loss"], **out,
            "eval_sequences": int(sequences.sum()), "eval_masked_tokens": int(tokens.sum())}


class PretrainEvaluator:
    """Runs a pretraining `for_test` program over a fixed list of batches.

    Args:
      exe: executor whose scope holds the parameters (the training scope: nothing is copied).
      program: `ProgramBundle.eval_program` of `program.build_pretraining` (or a copy of it).
      fetches: `ProgramBundle.eval_fetches` (name -> Variable; mlm_loss, mlm_acc, nsp_loss, nsp_acc used).
      batches: list of feed dicts (`load_eval_batches`).
    """

    def __init__(self, exe, program, fetches, batches):
        self.exe, self.program, self.batches = exe, program, list(batches)
        self.fetch_names = [fetches[name].name for name in PER_BATCH]

    def run_batch(self, feed):
        """The per-batch means (dict of PER_BATCH floats) of one feed."""
        values = self.exe.run(self.program, feed=feed, fetch_list=self.fetch_names)
        return {name: float(np.asarray(v).reshape(-1)[0]) for name, v in zip(PER_BATCH, values)}

    def evaluate(self, benchmark_warmup=None, show_progress=False):
        """Metrics over every batch (see `combine`) plus throughput.

        Args:
          benchmark_warmup: None, or a number of batches to run first without timing them (their
            metrics still count): inference throughput is then measured over the remaining ones.
          show_progress: a bar (terminal) or periodic lines with done/total, rate and ETA (log); off
            during training, whose own bar and lines are running.

        Returns:
          dict from `combine` plus e2e_inference_time (s, all batches) and inference_sequences_per_second.
        """
        per_batch, started = [], time.time()
        timed_from, timed_sequences = started, 0
        batches = progress(self.batches, desc="evaluating", unit="batch", disable=None if show_progress else True)
        for index, feed in enumerate(batches):
            if benchmark_warmup is not None and index == benchmark_warmup:
                timed_from, timed_sequences = time.time(), 0
            tokens, sequences = batch_counts(feed)
            per_batch.append((self.run_batch(feed), tokens, sequences))
            timed_sequences += sequences
        now = time.time()
        result = combine(per_batch)
        result["e2e_inference_time"] = now - started
        result["inference_sequences_per_second"] = timed_sequences / max(now - timed_from, 1e-9)
        return result


def evaluate_checkpoint(cfg):
    """Evaluate one pretraining checkpoint on fixed batches of shards, in fp32 (what CPUs run exactly).

    Args:
      cfg: tasks.config.PretrainInferenceConfig (built by `run_pretraining_inference.validate_args`).

    Returns:
      dict from `PretrainEvaluator.evaluate`; with --benchmark the throughput counts only the batches after
      the warm-up ones.

    Raises:
      ValueError: bad shards, too few batches for the benchmark's warm-up, or parameters that do not fit.
    """
    data, run = cfg.data, cfg.run
    batches = load_eval_batches(data.input_dir, vocab_file=data.vocab_file, batch_size=data.batch_size,
                                num_batches=cfg.num_batches, max_seq_length=data.max_seq_length,
                                max_predictions_per_seq=data.max_predictions_per_seq,
                                sequence_length_alignment=data.sequence_length_alignment, show_progress=True)
    if run.benchmark and len(batches) <= run.benchmark_warmup_steps:
        raise ValueError(f"--input-dir '{data.input_dir}' gives {len(batches)} batches of {data.batch_size}: not "
                         f"more than --benchmark-warmup-steps {run.benchmark_warmup_steps}; lower it")
    rt = init_runtime(run.device, seed=run.seed, cpu_affinity=run.enable_cpu_affinity)
    precision = PrecisionConfig(amp={"amp": "off"}, fuse_mha=False)  # fp32 forward: what CPUs run exactly
    bundle = program_lib.build_pretraining(cfg.model, train_config(None, precision, total_steps=1, seed=run.seed,
                                                                   device=rt.device), is_training=False)
    rt.exe.run(bundle.startup_program)
    load_pretrained(rt.exe, bundle.main_program, cfg.init_path)
    evaluator = PretrainEvaluator(rt.exe, bundle.eval_program, bundle.eval_fetches, batches)
    return evaluator.evaluate(benchmark_warmup=run.benchmark_warmup_steps if run.benchmark else None,
                              show_progress=True)
