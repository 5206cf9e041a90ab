"""Benchmark: SQuAD prediction throughput and latency, Paddle Inference (fp32 / bf16 / int8) against today's
executor path, and optionally HF transformers on torch, over batch sizes x sequence lengths.

Owns: the sweep (like the TF seed's finetune_inference_benchmark.sh): for every batch size x sequence
length x route, warm-up runs, then timed runs of random full-length windows (every token real, so
bucketing cannot help: the model's own speed), throughput (sequences/s), latency p50/p90/p99 and the
running process's peak RSS (`RSS_NOTE` says whose); the CPU line (`benchmarks.machine`) first; a
markdown table with each route's speed-up over the baseline row of the same shape (the eval program in
`paddle.static.Executor`, which run_squad used before `inference.predictor`), a DLLogger report and a
plot. Weights are random: speed does not depend on them (accuracy is measured by inference.quantize and
the end-to-end run in the README).
Does not own: the model, export or predictor (`inference.*`).

Routes: baseline (executor, fp32), fp32 / bf16 / int8 (QAPredictor; bf16 only where
utils.runtime.cpu_bf16_support says it runs, otherwise one line says why), hf-torch and hf-torch-bf16 (HF
transformers in fp32, and under `torch.autocast("cpu", bfloat16)` where the CPU has native bf16; one
subprocess, when `torch` and `transformers` import; run with the same thread count).

Usage (from the repo root):
  OMP_NUM_THREADS=2 python -m benchmarks.bench_inference --output-dir results/bench_inference \
      [--bert-model bert-base-uncased] [--num-hidden-layers 4] [--batch-sizes 1,8,32] [--seq-lengths 128,384] \
      [--routes baseline,fp32,bf16,int8,hf-torch,hf-torch-bf16] [--warmup 2] [--iterations 10] [--max-seconds 30] \
      [--hf-path DIR]   # torch + transformers installed apart: pip install --target DIR torch==2.13.0+cpu transformers
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.machine import has_native_bf16, machine_line, peak_rss_mb
from benchmarks.torch_worker import run_torch_worker
from utils.cli import ArgumentParser

logger = logging.getLogger("bench_inference")

ROUTES = ("baseline", "fp32", "bf16", "int8", "hf-torch", "hf-torch-bf16")
HF_ROUTES = ("hf-torch", "hf-torch-bf16")  # torch fp32, and torch under autocast(bfloat16)
RSS_NOTE = ("peak RSS: the peak of the process that ran the row, at the end of that row's runs. The Paddle routes "
            "share one process (export first, then each route over every shape, in the order baseline, fp32, "
            "bf16, int8), so a Paddle row's figure includes everything that process ran before it; the hf-torch "
            "routes share a process of their own (fp32 first).")
CALIBRATION_BATCHES = 4


@dataclasses.dataclass
class Row:
    route: str
    batch_size: int
    seq_length: int
    iterations: int
    sequences_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    speedup: float = None
    peak_rss_mb: float = None  # the running process's peak so far, after this row (see RSS_NOTE)


def random_feed(vocab_size, batch_size, seq_length, seed=0):
    """Full-length windows of random ids ([CLS]-free, which does not change the cost), segment B from 1/4 on."""
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1000, vocab_size, (batch_size, seq_length)).astype(np.int64),
            "token_type_ids": (np.arange(seq_length)[None, :] >= seq_length // 4).repeat(batch_size, 0)
            .astype(np.int64),
            "attention_mask": np.ones((batch_size, 1, 1, seq_length), np.int64)}


def time_runs(run, warmup, iterations, max_seconds):
    """Latencies (s) of `iterations` calls of run() after `warmup` calls; stops early after max_seconds
    of timed runs (at least 3 runs)."""
    for _ in range(warmup):
        run()
    latencies, begin = [], time.perf_counter()
    while len(latencies) < iterations:
        start = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - start)
        if len(latencies) >= 3 and time.perf_counter() - begin > max_seconds:
            break
    return latencies


def summarise(route, batch_size, seq_length, latencies):
    ms = np.asarray(latencies) * 1000.0
    return Row(route, batch_size, seq_length, len(latencies), batch_size / float(np.mean(latencies)),
               *(float(np.percentile(ms, q)) for q in (50, 90, 99)))


def _export_random_model(cfg, seq_length, directory, with_int8):
    """A random-weight SQuAD model exported (and verified) into `directory`; int8 calibrated on random windows."""
    import paddle

    import program
    from inference import model_dir as layout
    from inference.verified_export import write_export

    paddle.enable_static()
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    bundle = program.build_squad(cfg, program.TrainConfig(seed=1), is_training=False)
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        vocab = os.path.join(directory, "src-vocab.txt")
        with open(vocab, "w", encoding="utf-8") as f:
            f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                              [f"w{i}" for i in range(cfg.vocab_size - 5)]) + "\n")
        settings = layout.ExportSettings("benchmark", True, seq_length, 128, 64)
        write_export(exe, bundle, directory, model_cfg=cfg, vocab_file=vocab, settings=settings,
                     source={"path": "random weights"})
        os.unlink(vocab)
        if with_int8:
            from inference.quantize import quantize

            quantize(directory, batches=[random_feed(cfg.vocab_size, 8, seq_length, seed=s)
                                         for s in range(CALIBRATION_BATCHES)])
            layout.write_manifest(directory, source={"path": "random weights"})
    return exe, bundle, scope


def paddle_rows(cfg, args, routes):
    """Rows of the baseline and Paddle Inference routes."""
    import paddle

    from inference.predictor import QAPredictor

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        exe, bundle, scope = _export_random_model(cfg, max(args.seq_lengths), tmp, "int8" in routes)
        names = [bundle.eval_fetches[k].name for k in ("start_logits", "end_logits")]
        for route in routes:
            if route == "baseline":
                def make_run(feed):
                    def run():
                        with paddle.static.scope_guard(scope):
                            exe.run(bundle.eval_program, feed=feed, fetch_list=names)
                    return run
            else:
                predictor = QAPredictor.load(tmp, precision=route, threads=args.threads)

                def make_run(feed, predictor=predictor):
                    return lambda: predictor.run(feed)
            for seq in args.seq_lengths:
                for batch in args.batch_sizes:
                    latencies = time_runs(make_run(random_feed(cfg.vocab_size, batch, seq)), args.warmup,
                                          args.iterations, args.max_seconds)
                    rows.append(dataclasses.replace(summarise(route, batch, seq, latencies),
                                                    peak_rss_mb=peak_rss_mb()))
                    logger.info("%-8s batch %2d seq %3d: %7.2f seq/s  p50 %8.1f ms", route, batch, seq,
                                rows[-1].sequences_per_second, rows[-1].p50_ms)
    return rows


def hf_worker(spec):
    """Time HF BertForQuestionAnswering on torch (run in its own process: torch and paddle each bring an
    OpenMP runtime). Prints the rows as JSON."""
    import torch
    from transformers import BertConfig as HFConfig, BertForQuestionAnswering

    torch.set_num_threads(spec["threads"])
    c = spec["config"]
    model = BertForQuestionAnswering(HFConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
        max_position_embeddings=c["max_position_embeddings"], type_vocab_size=c["type_vocab_size"])).eval()
    rows = []
    for route in spec["routes"]:
        bf16 = route == "hf-torch-bf16"
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for seq in spec["seq_lengths"]:
                for batch in spec["batch_sizes"]:
                    feed = random_feed(c["vocab_size"], batch, seq)
                    inputs = {"input_ids": torch.from_numpy(feed["input_ids"]),
                              "token_type_ids": torch.from_numpy(feed["token_type_ids"]),
                              "attention_mask": torch.from_numpy(feed["attention_mask"][:, 0, 0, :])}
                    latencies = time_runs(lambda: model(**inputs), spec["warmup"], spec["iterations"],
                                          spec["max_seconds"])
                    rows.append(dataclasses.asdict(dataclasses.replace(
                        summarise(route, batch, seq, latencies), peak_rss_mb=peak_rss_mb())))
    print(json.dumps({"rows": rows, "torch": torch.__version__}))


def hf_rows(cfg, args, routes):
    """Rows of HF transformers on torch for `routes` (of HF_ROUTES; both run in one worker process, fp32
    first), or [] with one line saying why not."""
    spec = {"routes": list(routes), "threads": args.threads, "config": cfg.to_dict(),
            "seq_lengths": args.seq_lengths,
            "batch_sizes": args.batch_sizes, "warmup": args.warmup, "iterations": args.iterations,
            "max_seconds": args.max_seconds}
    result = run_torch_worker("benchmarks.bench_inference", spec, args.threads, args.hf_path)
    if result is None:
        return []
    logger.info("hf-torch: torch %s", result["torch"])
    return [Row(**r) for r in result["rows"]]


def add_speedups(rows):
    base = {(r.batch_size, r.seq_length): r.sequences_per_second for r in rows if r.route == "baseline"}
    for r in rows:
        if (r.batch_size, r.seq_length) in base:
            r.speedup = r.sequences_per_second / base[(r.batch_size, r.seq_length)]


def table(rows):
    lines = ["| route | batch | seq | seq/s | p50 ms | p90 ms | p99 ms | runs | x baseline | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.seq_length, r.batch_size, ROUTES.index(r.route))):
        speedup = f"{r.speedup:.2f}" if r.speedup is not None else "-"
        rss = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        lines.append(f"| {r.route} | {r.batch_size} | {r.seq_length} | {r.sequences_per_second:.2f} | "
                     f"{r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.p99_ms:.1f} | {r.iterations} | {speedup} | {rss} |")
    return "\n".join(lines)


def plot(rows, path, title):
    """Throughput against batch size, one panel per sequence length, one line per route (PNG, atomic)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.fs import atomic_write_bytes

    seqs = sorted({r.seq_length for r in rows})
    fig, axes = plt.subplots(1, len(seqs), figsize=(5 * len(seqs), 4), squeeze=False)
    for ax, seq in zip(axes[0], seqs):
        for route in ROUTES:
            pts = sorted((r.batch_size, r.sequences_per_second) for r in rows if r.route == route and r.seq_length == seq)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=route)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("sequences / s")
        ax.set_title(f"seq {seq}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _ints(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser():
    from tasks.flags import bert_model_choices

    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=None, help="write table.md, report.json, plot.png here")
    parser.add_argument("--bert-model", default="bert-base-uncased", choices=bert_model_choices()[:-1],
                        help="architecture timed (random weights)")
    parser.add_argument("--num-hidden-layers", type=int, default=None, help="override the config's layers")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 8, 32], help="comma-separated batch sizes")
    parser.add_argument("--seq-lengths", type=_ints, default=[128, 384], help="comma-separated sequence lengths")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated subset of {','.join(ROUTES)}")
    parser.add_argument("--threads", type=int, default=None, help="default OMP_NUM_THREADS")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per shape")
    parser.add_argument("--iterations", type=int, default=10, help="timed runs per shape (at most)")
    parser.add_argument("--max-seconds", type=float, default=30.0,
                        help="stop timing a shape after this long (at least 3 runs)")
    parser.add_argument("--hf-path", default=None,
                        help="directory holding torch + transformers (pip install --target DIR), put on the "
                             "hf-torch worker's PYTHONPATH only")
    parser.add_argument("--hf-worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hf-worker"]:  # before build_parser, which imports paddle (via tasks.flags)
        return hf_worker(json.loads(argv[1]))
    args = build_parser().parse_args(argv)
    from modeling import BertConfig
    from inference.predictor import default_threads
    from tasks.flags import CONFIG_DIR
    from utils.logger import init_logging
    from utils.report import build_metric_logger
    from utils.runtime import cpu_bf16_support, cpu_flags

    init_logging()
    cpu = machine_line()
    print(cpu, flush=True)
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = [r for r in routes if r not in ROUTES]
    if unknown:
        raise ValueError(f"--routes: unknown {', '.join(unknown)}; choose from {', '.join(ROUTES)}")
    args.threads = args.threads or default_threads()
    if "bf16" in routes and not cpu_bf16_support().usable:
        logger.warning("bf16 skipped: %s", cpu_bf16_support().reason)
        routes.remove("bf16")
    cfg = BertConfig.from_json_file(os.path.join(CONFIG_DIR, f"{args.bert_model}.json"))
    if args.num_hidden_layers:
        cfg = dataclasses.replace(cfg, num_hidden_layers=args.num_hidden_layers)
    if max(args.seq_lengths) > cfg.max_position_embeddings:
        raise ValueError(f"--seq-lengths exceed the model's max_position_embeddings ({cfg.max_position_embeddings})")
    if "hf-torch-bf16" in routes and not has_native_bf16(cpu_flags()):
        logger.warning("hf-torch-bf16 skipped: this CPU has no avx512_bf16 or amx_bf16 (torch would emulate bf16)")
        routes.remove("hf-torch-bf16")
    rows = paddle_rows(cfg, args, [r for r in routes if r not in HF_ROUTES])
    if any(r in HF_ROUTES for r in routes):
        rows += hf_rows(cfg, args, [r for r in HF_ROUTES if r in routes])
    add_speedups(rows)
    title = (f"{args.bert_model}, {cfg.num_hidden_layers} layers, {args.threads} threads, random full-length "
             "windows")
    text = f"{title}\n\n{table(rows)}\n\n{RSS_NOTE}\n"
    print(text)
    if args.output_dir:
        from utils.fs import atomic_write_text

        os.makedirs(args.output_dir, exist_ok=True)
        atomic_write_text(os.path.join(args.output_dir, "table.md"), f"{cpu}\n{text}")
        metrics = build_metric_logger(0, os.path.join(args.output_dir, "report.json"), logger=logger)
        try:
            metrics.log_parameters({"bert_model": args.bert_model, "num_hidden_layers": cfg.num_hidden_layers,
                                    "threads": args.threads, "routes": ",".join(routes)})
            for i, r in enumerate(rows):
                metrics.log({k: v for k, v in dataclasses.asdict(r).items() if v is not None}, i)
        finally:
            metrics.close()
        plot(rows, os.path.join(args.output_dir, "plot.png"), title)
        logger.info("wrote table.md, report.json and plot.png to %s", args.output_dir)
    return rows


def cli(argv=None):
    from utils.cli import run_cli

    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
