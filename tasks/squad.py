"""The SQuAD fine-tuning and prediction loops run_squad.py drives, as functions of explicit arguments.

Owns: planning the number of updates (`plan_updates`), the per-rank shuffled batch stream, trimming batches
to their longest row, initialising a program from our `.pdparams` or an HF checkpoint (`init_parameters`),
the training loop (`train`), the prediction loop (`predict_logits`), saving fine-tuned parameters
atomically (`save_params`) and answering one question (`single_question_example`).
Does not own: flags and their validation (run_squad.py), building programs (`program.build_squad`), features
(`data.features.squad`), turning logits into answers (`utils.squad_postprocess`) or scoring (`utils.squad_metrics`).

Steps are the reference's: one pass over this rank's windows is `ceil(rows / batch_size)` micro-batches;
`epochs` passes, `gradient_merge_steps` micro-batches per optimizer update, and `max_steps > 0` caps the
updates (`min(max_steps, updates in epochs)`). The LR scheduler steps once per update, so warm-up and decay
follow `--warmup-proportion` of the updates actually run (the reference ignored it).
"""
import dataclasses
import itertools
import json
import logging
import os
import re
import time

import numpy as np
import paddle

from data.features.squad import PREDICT_ONLY_KEYS, SquadExample, batch_of_rows, split_on_whitespace
from tasks.engine import run_updates
from utils.checkpoint import load_pretrained, parameter_shapes
from utils.checkpoint import resolve_init_path  # noqa: F401 -- run_squad and tasks.finetune import it from here
from utils.fs import atomic_write_bytes, atomic_write_json
from utils.hf_import import hf_parameter_shapes, is_hf_checkpoint, load_hf_pretrained

logger = logging.getLogger(__name__)

QA_HEAD_PREFIX = "qa_outputs"
# The task heads fine-tuning adds to the encoder, by the task that trains them (parameter name prefixes).
TASK_HEAD_PREFIXES = {"SQuAD": QA_HEAD_PREFIX + ".", "GLUE": "classifier."}
PAD_LOGIT = -10000.0  # logits of positions cut off by batch trimming (padding: never a valid answer)
SEQ_ALIGN = 8
CONFIG_FILE_NAME = "bert_config.json"  # the architecture, saved beside fine-tuned parameters


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Training-loop settings (validated by run_squad.py before any work).

    Fields: epochs >= 1; max_steps None or > 0 (caps updates); batch_size per process; gradient_merge_steps
    micro-batches per update; log_freq in updates; benchmark, benchmark_steps, benchmark_warmup_steps as
    the reference (measure updates warmup+1 .. warmup+steps, then stop); seed of the shuffle.
    """
    epochs: int = 2
    max_steps: int = None
    batch_size: int = 32
    gradient_merge_steps: int = 1
    log_freq: int = 10
    benchmark: bool = False
    benchmark_steps: int = 20
    benchmark_warmup_steps: int = 20
    seed: int = 42

    @classmethod
    def from_flags(cls, args, *, max_steps, batch_size):
        """The options of a fine-tuning runner's parsed flags (both runners spell them alike); `max_steps`
        and `batch_size` are the values its validate_args resolved."""
        return cls(epochs=args.epochs, max_steps=max_steps, batch_size=batch_size,
                   gradient_merge_steps=args.gradient_merge_steps, log_freq=args.log_freq,
                   benchmark=args.benchmark, benchmark_steps=args.benchmark_steps,
                   benchmark_warmup_steps=args.benchmark_warmup_steps, seed=args.seed)


def rows_per_rank(num_features, world_size):
    """Windows each process trains on per epoch: equal on every rank (the all-reduce needs equal steps)."""
    return num_features // world_size


def plan_updates(num_features, opts, world_size=1):
    """(micro-batches per epoch, optimizer updates to run) for a training set.

    Raises:
      ValueError: the data is too small for a single update (naming the numbers).
    """
    rows = rows_per_rank(num_features, world_size)
    per_epoch = -(-rows // opts.batch_size)
    updates = per_epoch * opts.epochs // opts.gradient_merge_steps
    if opts.max_steps is not None and opts.max_steps > 0:
        updates = min(updates, opts.max_steps)
    if opts.benchmark:
        updates = opts.benchmark_warmup_steps + opts.benchmark_steps
    if updates < 1:
        raise ValueError(f"the training file gives {num_features} windows ({rows} per process): fewer "
                         f"than one update of --train-batch-size {opts.batch_size} x "
                         f"--gradient-merge-steps {opts.gradient_merge_steps}; add data or lower them")
    return per_epoch, updates


def trim_batch(batch, multiple=SEQ_ALIGN):
    """Cut the padding columns every row of a batch shares (keeps a multiple of `multiple` columns).

    Attention masks exclude padding, so the real positions' outputs are unchanged; the work shrinks with
    the longest row instead of max_seq_length.

    Args:
      batch: dict from `data.features.squad.iterate_batches` (int64 [B, L] / [B, 1, 1, L] arrays).

    Returns:
      (new dict with [B, L'] arrays, L').
    """
    mask = batch["attention_mask"]
    longest = int(mask.reshape(mask.shape[0], -1).sum(axis=1).max())
    length = min(mask.shape[-1], -(-longest // multiple) * multiple)
    out = dict(batch)
    for key in ("input_ids", "token_type_ids"):
        out[key] = np.ascontiguousarray(batch[key][:, :length])
    out["attention_mask"] = np.ascontiguousarray(mask[..., :length])
    return out, length


def rank_batches(features, batch_size, rank, world_size, rng, make_batch=None):
    """One epoch of training feeds for one rank: a shared permutation, every world_size-th row.

    Args:
      features: data.features.squad.SquadFeatures.
      batch_size: int, rows per micro-batch.
      rank, world_size: ints; every rank draws the same permutation (same rng state) and takes its slice.
      rng: numpy.random.Generator, advanced by one permutation.
      make_batch: rows -> training feed dict, for another task's features (GLUE); default SQuAD's.

    Yields:
      feed dicts (int64 arrays, trimmed with `trim_batch`) with the task's training feeds.
    """
    if make_batch is None:
        def make_batch(rows):
            return batch_of_rows(features, rows, is_training=True)
    order = rng.permutation(len(features))[rank::world_size][:rows_per_rank(len(features), world_size)]
    for start in range(0, len(order), batch_size):
        rows = np.sort(order[start:start + batch_size])
        yield trim_batch(make_batch(rows))[0]


_AUTO_NAME = re.compile(r"^(linear|embedding|layer_norm|create_parameter)_\d+\.(w|b)_\d+$")


def _reference_checkpoint_hint(path):
    """A hint when a .pdparams that failed to load has Paddle's auto-generated names (NVIDIA's NGC files)."""
    try:
        names = list(paddle.load(path if os.path.isfile(path) else path + ".pdparams", return_numpy=True))
    except Exception:  # noqa: BLE001 -- only a hint: the original error is what matters
        return ""
    if names and sum(bool(_AUTO_NAME.match(n)) for n in names) > len(names) // 2:
        return ("; its parameters have auto-generated names (linear_12.w_0, ...): an NVIDIA reference / NGC "
                "Paddle checkpoint, whose layout cannot be mapped by name and is not supported")
    return ""


def init_parameters(exe, program, path, *, require_qa_head, vocab_size, head_prefix=QA_HEAD_PREFIX,
                    head_name="SQuAD answer head", task="SQuAD"):
    """Initialise `program` from our `.pdparams` (file, prefix or step dir) or an HF checkpoint.

    Args:
      exe: executor; the startup program has run.
      program: the SQuAD program.
      path: str, the --from-pretrained-params / --from-checkpoint value (see `resolve_init_path`).
      require_qa_head: bool; False lets the QA head start from its random init (fine-tuning an encoder).
      vocab_size: int, the vocab file's size (HF word embeddings must match it).
      head_prefix, head_name, task: the task head's parameter prefix and how messages name it and the task
        (GLUE: "classifier", "classification head", "GLUE").

    Returns:
      dict parameter name -> where it came from (summarised in the log, per parameter at DEBUG).

    Raises:
      ValueError: missing path, unreadable file, a missing parameter, a shape mismatch, or no QA head
        where `require_qa_head` (a pretrained encoder given where a fine-tuned model is needed).
    """
    # The QA head may always be absent at load time, so that a missing head alone gets its own message
    # below (a pretrained encoder where a fine-tuned model was needed) instead of "another model".
    allow = (head_prefix,)
    if is_hf_checkpoint(path):
        sources = load_hf_pretrained(exe, program, path, allow_missing_prefixes=allow, vocab_size=vocab_size)
    else:
        try:
            sources = load_pretrained(exe, program, path, allow_missing_prefixes=allow)
        except ValueError as err:
            raise ValueError(f"{err}{_reference_checkpoint_hint(path)}") from None
    fresh = sorted(n for n, s in sources.items() if "NEWLY" in s)
    if require_qa_head and fresh:
        other = [name for name, prefix in TASK_HEAD_PREFIXES.items()
                 if name != task and any(k.startswith(prefix) for k in head_parameters(path))]
        what = f"a model fine-tuned for {other[0]}" if other else "a pretrained BERT"
        raise ValueError(f"'{path}' has no {head_name} ({', '.join(fresh)}): it is {what}, not a fine-tuned "
                         f"{task} model; fine-tune it first (--mode train or train_eval with "
                         f"--from-pretrained-params) or give a fine-tuned {task} model to --from-checkpoint")
    return sources


def head_parameters(path):
    """{parameter name: shape} of the task-head parameters (see TASK_HEAD_PREFIXES) in a checkpoint: our
    .pdparams (file, prefix or directory) or a Hugging Face safetensors checkpoint.

    Raises:
      ValueError: the checkpoint cannot be read.
    """
    shapes = hf_parameter_shapes(path) if is_hf_checkpoint(path) else parameter_shapes(path)
    return {k: v for k, v in shapes.items() if k.startswith(tuple(TASK_HEAD_PREFIXES.values()))}


def _log_update(metrics, epoch, update, loss, lr, opts, updates):
    if update % opts.log_freq == 0 or update == updates:
        metrics.log({"loss": loss, "learning_rate": lr}, (epoch, update))


def train(exe, bundle, features, opts, rank=0, world_size=1, metrics=None, program=None, make_batch=None):
    """Fine-tune: run micro-batches until the planned number of optimizer updates is done.

    Args:
      exe: executor; parameters initialised.
      bundle: program.ProgramBundle from `build_squad(..., is_training=True)` (its lr_scheduler is stepped
        here once per update).
      features: SquadFeatures of the training file.
      opts: TrainOptions.
      rank, world_size: this process's place (each rank trains on its slice of every epoch).
      metrics: utils.report.MetricLogger or None.
      program: what to run instead of bundle.main_program (e.g. a CompiledProgram), optional.
      make_batch: as `rank_batches` (another task's features, e.g. GLUE's), optional.

    Returns:
      dict: updates, micro_batches, sequences (all ranks), losses (mean loss of each update, list of float),
      e2e_train_time (s), training_sequences_per_second, and with benchmark the measured throughput only.
    """
    per_epoch, updates = plan_updates(len(features), opts, world_size)
    rng, k = np.random.default_rng(opts.seed), opts.gradient_merge_steps
    logger.info("training: %d rows, %d micro-batches/epoch/process, %d updates of %d x %d x %d sequences",
                len(features), per_epoch, updates, opts.batch_size, k, world_size)
    losses, epoch = [], [0]

    def epochs():  # --epochs passes (a benchmark runs on until its updates are done)
        for index in itertools.count():
            if index >= opts.epochs and not opts.benchmark:
                return
            epoch[0] = index
            yield from rank_batches(features, opts.batch_size, rank, world_size, rng, make_batch)

    def after_update(step, fetched, lr):
        losses.append(float(np.mean([float(np.asarray(values[0]).reshape(-1)[0]) for values in fetched])))
        if metrics is not None:
            _log_update(metrics, epoch[0], step, losses[-1], lr, opts, updates)

    result = run_updates(exe, program or bundle.main_program, epochs(), start_step=0, total_steps=updates,
                         merge_steps=k, lr_scheduler=bundle.lr_scheduler, world_size=world_size,
                         fetch_list=[bundle.fetches["loss"]], after_update=after_update, progress_desc="squad",
                         benchmark_warmup_steps=opts.benchmark_warmup_steps if opts.benchmark else None)
    return {"updates": len(losses), "micro_batches": result.micro_batches, "sequences": result.sequences,
            "losses": losses, "e2e_train_time": result.elapsed,
            "training_sequences_per_second": result.sequences_per_second, "final_loss": losses[-1]}


def predict_logits(exe, program, fetches, features, batch_size, benchmark=None):
    """Start/end logits of every window, in feature order.

    Args:
      exe: executor; parameters initialised.
      program: a for_test program (fp32 `eval_program` or its `to_bf16_inference` copy).
      fetches: dict with "start_logits" and "end_logits" Variables (names are looked up in `program`).
      features: SquadFeatures.
      batch_size: int.
      benchmark: None, or (warmup_batches, measured_batches): stop after both and time only the latter.

    Returns:
      (start float32 [N, L], end float32 [N, L], stats dict with e2e_inference_time and
      inference_sequences_per_second). With benchmark, the logit arrays cover only the batches run.
    """
    from data.features.squad import iterate_batches

    n, length = len(features), features.max_seq_length
    start_all = np.full((n, length), PAD_LOGIT, np.float32)
    end_all = np.full((n, length), PAD_LOGIT, np.float32)
    names = [fetches["start_logits"].name, fetches["end_logits"].name]
    row, begin = 0, time.time()
    bench_begin, bench_rows = begin, 0
    for index, batch in enumerate(iterate_batches(features, batch_size, is_training=False)):
        if benchmark and index == benchmark[0]:
            bench_begin, bench_rows = time.time(), row
        if benchmark and index == benchmark[0] + benchmark[1]:
            break
        feed, cols = trim_batch({k: v for k, v in batch.items() if k not in PREDICT_ONLY_KEYS})
        start, end = exe.run(program, feed=feed, fetch_list=names)
        rows = len(batch["unique_ids"])
        start_all[row:row + rows, :cols] = np.asarray(start, np.float32)
        end_all[row:row + rows, :cols] = np.asarray(end, np.float32)
        row += rows
    elapsed = time.time() - begin
    stats = {"e2e_inference_time": elapsed, "inference_sequences_per_second": row / elapsed}
    if benchmark:
        stats["inference_sequences_per_second"] = (row - bench_rows) / max(time.time() - bench_begin, 1e-9)
    return start_all, end_all, stats


def save_params(program, directory, model_prefix, model_cfg):
    """Write the program's parameters (no optimizer state) and the architecture, each atomically.

    Files: `<directory>/<model_prefix>.pdparams` (dict name -> float32 array, readable by `paddle.load` and
    `utils.checkpoint.load_pretrained`) and `<directory>/bert_config.json`.

    Returns:
      str, the .pdparams path.
    """
    import pickle

    scope = paddle.static.global_scope()
    state = {p.name: np.array(scope.find_var(p.name).get_tensor()) for p in program.all_parameters()}
    path = os.path.join(directory, model_prefix + ".pdparams")
    os.makedirs(directory, exist_ok=True)
    # paddle.load reads a plain pickle of a dict of arrays; pickling here lets the write be atomic.
    atomic_write_bytes(path, pickle.dumps(state, protocol=4))
    atomic_write_json(os.path.join(directory, CONFIG_FILE_NAME), model_cfg.to_dict())
    logger.info("saved %d fine-tuned parameters to %s", len(state), path)
    return path


def saved_config_next_to(path):
    """The `bert_config.json` written by `save_params` beside a params file or in a directory, or None."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(directory, CONFIG_FILE_NAME)
    return candidate if os.path.isfile(candidate) else None


def single_question_example(question, context, qas_id="question"):
    """A prediction-mode SquadExample for one question about one context (split as SQuAD contexts are).

    Raises:
      ValueError: empty question or context.
    """
    if not question.strip():
        raise ValueError("--question is empty")
    doc_tokens, _ = split_on_whitespace(context)
    if not doc_tokens:
        raise ValueError("the context is empty")
    return SquadExample(qas_id, question, doc_tokens)


def describe_answer(answer, probability, nbest, verbose=False):
    """Text lines for a single-question answer: the answer and its probability (+ the n-best list)."""
    lines = [f"answer: {answer if answer else '(no answer)'}\tprobability: {probability:.4f}"]
    if verbose:
        lines += [f"  {i + 1}. {json.dumps(e['text'])}\tp={e['probability']:.4f}\t"
                  f"start_logit={e['start_logit']:.3f}\tend_logit={e['end_logit']:.3f}"
                  for i, e in enumerate(nbest)]
    return lines
