"""Benchmark: the SQuAD model's throughput on this machine: training step (AdamW) and prediction in fp32 and bf16.

Owns: timing `program.build_squad`'s programs with random weights and random full-length batches (the
worst case: every window is `--seq-length` tokens, so batch trimming cannot help), after warm-up runs.
Does not own: the model, the programs or the loops (run_squad.py / tasks.squad).

Comparable figures (measured on the project's development machine, 2 threads, bert-base, QA forward at seq 384, batch 8): the NVIDIA
reference Paddle program 0.90 seq/s fp32 and 1.79 seq/s bf16; HF transformers on torch 2.74 / 8.25 seq/s.

Usage (from the repo root):
  OMP_NUM_THREADS=2 python -m benchmarks.bench_squad_model [--bert-model bert-base-uncased] \
      [--seq-length 384] [--batch-size 8] [--steps 3] [--warmup 1] [--skip-train]
  # AdamW vs LAMB step, alternately (e.g. the MiniLM shape: 6 layers x 384, seq 256, batch 16):
  python -m benchmarks.bench_squad_model --bert-config CONFIG --seq-length 256 --batch-size 16 --compare-optimizers
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle
import dataclasses
import json
import logging
import os
import time

import numpy as np

from utils.cli import ArgumentParser
from utils.logger import init_logging

logger = logging.getLogger("bench_squad_model")


def _batch(rng, cfg, batch_size, length, training):
    feed = {"input_ids": rng.integers(1000, cfg.vocab_size, (batch_size, length)).astype(np.int64),
            "token_type_ids": (np.arange(length)[None, :] >= length // 4).repeat(batch_size, 0).astype(np.int64),
            "attention_mask": np.ones((batch_size, 1, 1, length), np.int64)}
    if training:
        feed["start_positions"] = rng.integers(0, length, (batch_size, 1)).astype(np.int64)
        feed["end_positions"] = np.minimum(feed["start_positions"] + 3, length - 1)
    return feed


def _time(exe, program, feed, fetch, steps, warmup):
    """Median seconds of `steps` runs after `warmup` runs."""
    for _ in range(warmup):
        exe.run(program, feed=feed, fetch_list=fetch)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        exe.run(program, feed=feed, fetch_list=fetch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run(cfg, seq_length, batch_size, steps, warmup, train=True):
    """{"train", "predict_fp32", "predict_bf16"} sequences per second (bf16 only on CPUs with bf16)."""
    import paddle

    import program

    paddle.enable_static()
    rng, results = np.random.default_rng(0), {}
    bundle = program.build_squad(cfg, program.TrainConfig(optimizer="AdamW", total_steps=1000,
                                                          learning_rate=1e-5))
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(bundle.startup_program)
        if train:
            seconds = _time(exe, bundle.main_program, _batch(rng, cfg, batch_size, seq_length, True),
                            [bundle.fetches["loss"]], steps, warmup)
            results["train"] = batch_size / seconds
        feed = _batch(rng, cfg, batch_size, seq_length, False)
        fetch = [bundle.eval_fetches["start_logits"].name, bundle.eval_fetches["end_logits"].name]
        results["predict_fp32"] = batch_size / _time(exe, bundle.eval_program, feed, fetch, steps, warmup)
        if paddle.base.core.supports_bfloat16():
            bf16 = program.to_bf16_inference(bundle.eval_program)
            results["predict_bf16"] = batch_size / _time(exe, bf16, feed, fetch, steps, warmup)
    return results


def compare_optimizers(cfg, seq_length, batch_size, steps, warmup):
    """The SQuAD training step with AdamW and with LAMB, same model and batch, timed alternately one step
    at a time (benchmarks.bench_train's runner), so load from other processes falls on both alike.

    Returns:
      {"AdamW": seq/s, "Lamb": seq/s}.
    """
    import paddle

    import program
    from benchmarks.bench_train import Runner, time_alternately

    paddle.enable_static()
    feed = _batch(np.random.default_rng(0), cfg, batch_size, seq_length, True)
    exe = paddle.static.Executor(paddle.CPUPlace())
    names, runners = ("AdamW", "Lamb"), []
    for name in names:
        bundle = program.build_squad(cfg, program.TrainConfig(optimizer=name, total_steps=1000, learning_rate=1e-5))
        runners.append(Runner(exe, bundle.main_program, [bundle.fetches["loss"]], feed, paddle.static.Scope(),
                              bundle.startup_program))
    totals, _ = time_alternately(runners, warmup, steps)
    return {name: batch_size * steps / total for name, total in zip(names, totals)}


def main(argv=None):
    from tasks.flags import CONFIG_DIR
    from modeling import BertConfig

    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bert-model", default="bert-base-uncased", help="a config in bert_configs/")
    parser.add_argument("--seq-length", type=int, default=384, help="window length")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch")
    parser.add_argument("--steps", type=int, default=3, help="timed runs (median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    parser.add_argument("--skip-train", action="store_true", help="time prediction only")
    parser.add_argument("--bert-config", default=None, help="a BERT config JSON file (instead of --bert-model)")
    parser.add_argument("--layers", type=int, default=None, help="cut the encoder to this many layers")
    parser.add_argument("--compare-optimizers", action="store_true",
                        help="time the training step with AdamW and with LAMB alternately instead")
    args = parser.parse_args(argv)
    init_logging()
    cfg = BertConfig.from_json_file(args.bert_config or os.path.join(CONFIG_DIR, f"{args.bert_model}.json"))
    if args.layers:
        cfg = dataclasses.replace(cfg, num_hidden_layers=args.layers)
    if args.compare_optimizers:
        rates = compare_optimizers(cfg, args.seq_length, args.batch_size, args.steps, args.warmup)
        print(f"SQuAD training step, {cfg.num_hidden_layers} layers x {cfg.hidden_size}, seq {args.seq_length}, "
              f"batch {args.batch_size}: AdamW {rates['AdamW']:.2f} seq/s, LAMB {rates['Lamb']:.2f} seq/s, "
              f"AdamW/LAMB {rates['AdamW'] / rates['Lamb']:.2f}x")
        return rates
    results = run(cfg, args.seq_length, args.batch_size, args.steps, args.warmup, train=not args.skip_train)
    report = {"bert_model": args.bert_model, "seq_length": args.seq_length, "batch_size": args.batch_size,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              **{f"{k}_sequences_per_second": round(v, 3) for k, v in results.items()}}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
