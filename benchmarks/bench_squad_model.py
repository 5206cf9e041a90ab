"""Benchmark: the SQuAD model's throughput on this machine: training step (AdamW) and prediction in fp32 and bf16.

Owns: timing `program.build_squad`'s programs with random weights and random full-length batches (the
worst case: every window is `--seq-length` tokens, so batch trimming cannot help), after warm-up runs.
Does not own: the model, the programs or the loops (run_squad.py / tasks.squad).

Comparable figures (measured on the project's development machine, 2 threads, bert-base, QA forward at seq 384, batch 8): the NVIDIA
reference Paddle program 0.90 seq/s fp32 and 1.79 seq/s bf16; HF transformers on torch 2.74 / 8.25 seq/s.

Usage (from the repo root):
  OMP_NUM_THREADS=2 python -m benchmarks.bench_squad_model [--bert-model bert-base-uncased] \
      [--seq-length 384] [--batch-size 8] [--steps 3] [--warmup 1] [--skip-train]
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle
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
    args = parser.parse_args(argv)
    init_logging()
    cfg = BertConfig.from_json_file(os.path.join(CONFIG_DIR, f"{args.bert_model}.json"))
    results = run(cfg, args.seq_length, args.batch_size, args.steps, args.warmup, train=not args.skip_train)
    report = {"bert_model": args.bert_model, "seq_length": args.seq_length, "batch_size": args.batch_size,
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              **{f"{k}_sequences_per_second": round(v, 3) for k, v in results.items()}}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
