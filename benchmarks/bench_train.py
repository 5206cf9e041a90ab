"""Benchmark: CPU training seq/s of our pre-training program vs a stock-Paddle BERT and HF transformers on
torch (fp32, and bf16 autocast where the CPU has bf16), as model FLOP/s and as a fraction of this machine's
GEMM peak, with each side's peak memory and CPU seconds; and fp32 (and bf16) inference.

Owns: the baseline (a plain static BERT written here from `paddle.nn.TransformerEncoder` layers with
auto-named parameters: same sizes, same heads -- MLM scored at the predicted positions only, decoder tied
to the word embeddings -- same LAMB settings: weight decay 0.01 except biases and LayerNorm, clip by
global norm 1.0), the workers (this module is its own child: `--worker` for a Paddle side, `--hf-worker`
for a torch side), the model FLOP count, the synthetic batches and the timing. Does not own what is
measured (`program.build_pretraining`, `program.build_squad`, `program.to_bf16_inference`, the GEMM probe
`benchmarks.bench_gemm`), how a child is run (`benchmarks.child`), the order of rounds
(`benchmarks.rounds`) or the CPU line (`benchmarks.machine`).

0. The CPU line, first: model, vendor, the ISA extensions that decide BERT's kernels, and the MKL choice.
1. GEMM probe: `benchmarks.bench_gemm`'s fp32 matmul chain in the parent process (same MKL, same threads
   and environment as the children): the machine's practical peak for the GEMMs a BERT step is made of.
2. Training: bert-base shape (bert_configs/bert-base-uncased.json, `--layers` may cut the depth), sequence
   length 128, batch 8, LAMB (Paddle) or AdamW (torch), dropout on. Five sides, each timed in a fresh
   child process (`--steps` steps after `--warmup`), the whole processes taken in turn -- ours, torch,
   ours with Paddle's lamb op, torch bf16, baseline; again for every one of `--rounds` -- so load from
   other processes falls on all alike; each side's median and spread are reported. Why processes: three
   12-layer programs with their optimizer states (about 5 GB each) in one process slowed each other
   (measured: ours 1.20 seq/s beside the others, 1.46 alone), and torch and paddle each bring an OpenMP
   runtime. The sides: ours as a CPU run builds it (the `cpu_kernels` ops: fused LAMB, dropout, bias-add
   and LayerNorm gradients); ours with Paddle's own ops instead (what those kernels buy); the stock-layer
   baseline; HF transformers' BertForPreTraining with torch's AdamW in fp32; the same under `torch.autocast("cpu", bfloat16)` (fp32 master weights, what
   `--bf16 --use_cpu` runs), only where the CPU has avx512_bf16 or amx_bf16 (one line says so otherwise).
   torch + transformers come from the child's path (`--hf-path DIR` for a `pip install --target DIR torch
   transformers`). Each child reports its peak RSS and its user and system CPU seconds per timed step
   (system time is where an OpenMP runtime's spin-waiting shows). The children inherit this process's
   environment (KMP_*, FLAGS_*, MKL_* as the user set them) with OMP_NUM_THREADS from `--threads`.
   Model FLOPs per step: 6 x (encoder parameters x tokens + pooler/NSP parameters x sequences + MLM
   transform and decoder parameters x predicted positions) + 12 x layers x batch x seq^2 x hidden for the
   attention scores and context (forward 4·B·L²·H, backward twice that).
3. Inference, in one more child: the SQuAD predict program (`build_squad(..., is_training=False)`, sequence
   length 384, batch 8) in fp32 through the executor, always; and after `to_bf16_inference` where this
   CPU and Paddle build support bf16 (same parameters, same scope, timed alternately, with the largest
   logit difference).

Usage (from the repo root):
  python -m benchmarks.bench_train [--layers 12] [--steps 5] [--warmup 2] [--rounds 3] [--threads 2] \
      [--hf-path DIR]
  python -m benchmarks.bench_train --quick      # 2 layers, 2 rounds of 2 steps
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import dataclasses
import json
import logging
import os
import statistics
import sys
import time

import numpy as np

from benchmarks.child import run_child
from benchmarks.machine import cpu_seconds, has_native_bf16, machine_line, peak_rss_mb
from benchmarks.rounds import median_spread, run_rounds
from benchmarks.torch_worker import torch_env
from utils.cli import ArgumentParser
from utils.logger import init_logging

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT_BASE = os.path.join(REPO, "bert_configs", "bert-base-uncased.json")
TRAIN_SEQ, SQUAD_SEQ, BATCH = 128, 384, 8
MAX_PREDICTIONS = 20
LR, WEIGHT_DECAY, CLIP = 1e-4, 0.01, 1.0


# ------------------------------------------------------------------------------------------ batches
def pretraining_batch(rng, vocab_size, batch=BATCH, seq=TRAIN_SEQ):
    """A synthetic pre-training feed dict (int64): full-length rows, 20 predicted positions per row.

    Returns:
      dict with input_ids [B, L], token_type_ids [B, L], attention_mask [B, 1, 1, L],
      next_sentence_labels [B, 1], masked_lm_labels [B, L] (-1 where not predicted).
    """
    input_ids = rng.integers(5, vocab_size, size=(batch, seq), dtype=np.int64)
    token_type_ids = np.zeros((batch, seq), np.int64)
    token_type_ids[:, seq // 2:] = 1
    labels = np.full((batch, seq), -1, np.int64)
    for row in range(batch):
        positions = rng.choice(np.arange(1, seq - 1), size=MAX_PREDICTIONS, replace=False)
        labels[row, positions] = input_ids[row, positions]
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": np.ones((batch, 1, 1, seq), np.int64),
            "next_sentence_labels": rng.integers(0, 2, size=(batch, 1), dtype=np.int64),
            "masked_lm_labels": labels}


def squad_batch(rng, vocab_size, batch=BATCH, seq=SQUAD_SEQ):
    """A synthetic SQuAD predict feed dict (int64): input_ids, token_type_ids, attention_mask."""
    feed = pretraining_batch(rng, vocab_size, batch, seq)
    return {k: feed[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


# ------------------------------------------------------------------------------------------ baseline
def _baseline_loss(paddle, cfg, feeds):
    """Stock-layer BERT forward + MLM/NSP loss; returns the float32 scalar loss."""
    nn, F = paddle.nn, paddle.nn.functional
    H = cfg.hidden_size
    word = nn.Embedding(cfg.vocab_size, H)
    position = nn.Embedding(cfg.max_position_embeddings, H)
    token_type = nn.Embedding(cfg.type_vocab_size, H)
    ids = feeds["input_ids"]
    positions = paddle.unsqueeze(paddle.arange(paddle.shape(ids)[1], dtype="int64"), 0)
    emb = word(ids) + position(positions) + token_type(feeds["token_type_ids"])
    emb = F.dropout(nn.LayerNorm(H, epsilon=cfg.layer_norm_eps)(emb), cfg.hidden_dropout_prob)
    layer = nn.TransformerEncoderLayer(H, cfg.num_attention_heads, cfg.intermediate_size,
                                       dropout=cfg.hidden_dropout_prob, activation="gelu",
                                       attn_dropout=cfg.attention_probs_dropout_prob, act_dropout=0.0)
    encoder = nn.TransformerEncoder(layer, cfg.num_hidden_layers)
    bias = (1.0 - paddle.cast(feeds["attention_mask"], "float32")) * -10000.0
    sequence = encoder(emb, src_mask=bias)
    pooled = paddle.tanh(nn.Linear(H, H)(sequence[:, 0]))
    flat_labels = paddle.reshape(feeds["masked_lm_labels"], [-1])
    index = paddle.nonzero(flat_labels != -1)
    hidden = paddle.gather_nd(paddle.reshape(sequence, [-1, H]), index)
    hidden = nn.LayerNorm(H, epsilon=cfg.layer_norm_eps)(F.gelu(nn.Linear(H, H)(hidden)))
    decoder_bias = paddle.create_parameter([cfg.vocab_size], "float32", is_bias=True)
    mlm_logits = paddle.matmul(hidden, word.weight, transpose_y=True) + decoder_bias
    mlm_labels = paddle.unsqueeze(paddle.masked_select(flat_labels, flat_labels != -1), -1)
    mlm = paddle.mean(F.softmax_with_cross_entropy(mlm_logits, mlm_labels))
    nsp_logits = nn.Linear(H, 2)(pooled)
    return mlm + paddle.mean(F.softmax_with_cross_entropy(nsp_logits, feeds["next_sentence_labels"]))


def build_baseline(paddle, program_lib, cfg, seed):
    """The stock-layer training program. Returns (main, startup, loss variable)."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    startup.random_seed = seed
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        feeds = program_lib.create_feeds("pretraining")
        loss = _baseline_loss(paddle, cfg, feeds)
        # Auto names: biases end in ".b_0", LayerNorm parameters start with "layer_norm".
        opt = paddle.optimizer.Lamb(
            learning_rate=LR, lamb_weight_decay=WEIGHT_DECAY, beta1=0.9, beta2=0.999, epsilon=1e-6,
            exclude_from_weight_decay_fn=lambda p: p.name.endswith(".b_0") or p.name.startswith(
                "layer_norm"),
            grad_clip=paddle.nn.ClipGradByGlobalNorm(CLIP))
        opt.minimize(loss)
    return main, startup, loss


# ------------------------------------------------------------------------------------------ timing
class Runner:
    """One program with its own scope: `step()` runs it once and returns (seconds, fetched values)."""

    def __init__(self, exe, program, fetch_list, feed, scope, startup=None):
        self.exe, self.program, self.fetch_list, self.feed, self.scope = exe, program, fetch_list, feed, scope
        if startup is not None:
            exe.run(startup, scope=scope)

    def step(self):
        start = time.perf_counter()
        values = self.exe.run(self.program, feed=self.feed, fetch_list=self.fetch_list, scope=self.scope)
        return time.perf_counter() - start, values


def time_alternately(runners, warmup, steps):
    """Warm up every runner, then time them round-robin one step at a time (programs that share one
    process because they share parameters, as fp32 and bf16 inference do).

    Returns:
      (list of total seconds per runner over `steps` steps, list of the first warm-up fetches).
    """
    first = []
    for runner in runners:
        first.append(runner.step()[1])
        for _ in range(max(warmup - 1, 0)):
            runner.step()
    totals = [0.0] * len(runners)
    for _ in range(steps):
        for i, runner in enumerate(runners):
            totals[i] += runner.step()[0]
    return totals, first


def measure_training(step, warmup, steps):
    """Time `steps` training steps after `warmup` untimed ones, with this process's CPU time and memory.

    Args:
      step: callable() -> float, runs one training step and returns its loss.

    Returns:
      dict: seq_per_s, loss (of the first step, which must be finite), user_s_per_step and sys_s_per_step
      (CPU seconds of all threads over the timed steps), peak_rss_mb (this process's, at the end).

    Raises:
      RuntimeError: the first loss is not finite (a broken program is not a benchmark result).
    """
    loss = step()
    if not np.isfinite(loss):
        raise RuntimeError(f"non-finite first-step loss: {loss}")
    for _ in range(warmup - 1):
        step()
    user, system = cpu_seconds()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    user_end, system_end = cpu_seconds()
    return {"seq_per_s": BATCH * steps / seconds, "loss": loss, "user_s_per_step": (user_end - user) / steps,
            "sys_s_per_step": (system_end - system) / steps, "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------ FLOPs
def training_flops(cfg, batch=BATCH, seq=TRAIN_SEQ, predictions=MAX_PREDICTIONS):
    """Model floating-point operations of one training step (forward + backward), fp32 multiply-adds x 2.

    Every weight matrix costs 2 FLOPs per parameter per row it is applied to forward and twice that
    backward (input and weight gradients): 6 x parameters x rows. Rows are tokens for the encoder,
    sequences for the pooler and NSP head, predicted positions for the MLM transform and the tied
    decoder. Attention's two batched matmuls (scores Q.K^T and context P.V) cost 4·B·L²·H forward per
    layer, 12·B·L²·H with backward. Embedding lookups, norms and activations are not counted (they are
    not FLOPs a GEMM peak bounds).
    """
    H, inner, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    per_layer = 4 * (H * H + H) + (H * inner + inner) + (inner * H + H) + 2 * 2 * H
    encoder = cfg.num_hidden_layers * per_layer
    pooler_nsp = (H * H + H) + (H * 2 + 2)
    mlm = (H * H + H) + 2 * H + H * V + V
    tokens, positions = batch * seq, batch * predictions
    dense = 6 * (encoder * tokens + pooler_nsp * batch + mlm * positions)
    attention = 12 * cfg.num_hidden_layers * batch * seq * seq * H
    return dense + attention


# ------------------------------------------------------------------------------------------ workers
PADDLE_SIDES = ("ours", "paddle_lamb", "baseline")
TORCH_SIDES = ("torch", "torch_bf16")
# Each round runs the sides in this order, Paddle and torch in turn.
SIDE_ORDER = ("ours", "torch", "paddle_lamb", "torch_bf16", "baseline")
LABELS = {"ours": "ours (as a CPU run builds it)", "paddle_lamb": "ours with Paddle's own ops (no cpu_kernels)",
          "baseline": "stock-layer Paddle baseline", "torch": "HF transformers, torch {torch}, AdamW, fp32",
          "torch_bf16": "HF transformers, torch {torch}, AdamW, bf16 autocast"}


def bench_gemm_peak(args):
    """GFLOP/s of the GEMM probe, the best of 10 runs, in this process with this MKL and thread count.

    The best, not the median: it stands for the machine's limit, and other processes can only slow a run.
    """
    from benchmarks import bench_gemm

    probe = bench_gemm.parse_args(["--threads", str(args.threads), "--runs", "10", "--warmup", "2"])
    return bench_gemm.run(probe)["max"]


def build_side(paddle, program_lib, cfg, side, seed):
    """The training program of one Paddle side. Returns (main, startup, loss variable)."""
    if side == "baseline":
        return build_baseline(paddle, program_lib, cfg, seed)
    train_cfg = program_lib.TrainConfig(optimizer="Lamb", learning_rate=LR, total_steps=1000,
                                        weight_decay=WEIGHT_DECAY, grad_clip_norm=CLIP, device="cpu",
                                        seed=seed, cpu_lamb_kernel=side == "ours",
                                        cpu_dropout_kernel=side == "ours", cpu_training_kernels=side == "ours")
    bundle = program_lib.build_pretraining(cfg, train_cfg)
    return bundle.main_program, bundle.startup_program, bundle.fetches["loss"]


def paddle_worker(spec):
    """One Paddle side in this (child) process: a training side ("ours", "paddle_lamb", "baseline") as
    `measure_training`, or "inference" as `bench_inference`. Prints the result as one JSON line."""
    import paddle

    import modeling
    import program as program_lib

    paddle.enable_static()
    paddle.seed(spec["seed"])
    cfg = modeling.BertConfig.from_dict(spec["config"])
    rng = np.random.default_rng(spec["seed"])
    if spec["side"] == "inference":
        result = bench_inference(paddle, program_lib, cfg, spec, rng)
    else:
        main_program, startup, loss = build_side(paddle, program_lib, cfg, spec["side"], spec["seed"])
        runner = Runner(paddle.static.Executor(paddle.CPUPlace()), main_program, [loss],
                        pretraining_batch(rng, cfg.vocab_size), paddle.static.Scope(), startup)
        result = measure_training(lambda: float(np.asarray(runner.step()[1][0]).reshape(-1)[0]),
                                  spec["warmup"], spec["steps"])
    print(json.dumps(result))


def hf_worker(spec):
    """HF BertForPreTraining + torch AdamW training steps in this (child) process, fp32 or -- spec["bf16"] --
    under bf16 autocast; prints `measure_training`'s dict plus "torch" (its version) as one JSON line.

    Same shapes, batches (MLM labels -100 where not predicted) and thread count as the Paddle programs.
    bf16 is what `--bf16 --use_cpu` gives an HF Trainer user: `torch.autocast("cpu", torch.bfloat16)` around
    forward and loss, so matmuls run in bf16 while the weights, gradients and AdamW stay fp32.
    """
    import torch
    from transformers import BertConfig as HFConfig, BertForPreTraining

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    c = spec["config"]
    model = BertForPreTraining(HFConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
        max_position_embeddings=c["max_position_embeddings"], type_vocab_size=c["type_vocab_size"],
        hidden_dropout_prob=c["hidden_dropout_prob"],
        attention_probs_dropout_prob=c["attention_probs_dropout_prob"])).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    feed = pretraining_batch(np.random.default_rng(spec["seed"]), c["vocab_size"])
    labels = np.where(feed["masked_lm_labels"] >= 0, feed["masked_lm_labels"], -100)
    inputs = {"input_ids": torch.from_numpy(feed["input_ids"]),
              "token_type_ids": torch.from_numpy(feed["token_type_ids"]),
              "attention_mask": torch.from_numpy(feed["attention_mask"][:, 0, 0, :]),
              "labels": torch.from_numpy(labels),
              "next_sentence_label": torch.from_numpy(feed["next_sentence_labels"][:, 0])}

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(spec["bf16"])):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return float(loss)

    result = measure_training(step, spec["warmup"], spec["steps"])
    print(json.dumps(dict(result, torch=torch.__version__)))


# ------------------------------------------------------------------------------------------ the parent
def side_spec(side, cfg, args):
    """What the child of `side` is told: sizes, seed, thread count, steps."""
    return {"side": side, "config": cfg.to_dict(), "seed": args.seed, "threads": args.threads,
            "warmup": args.warmup, "steps": args.steps, "bf16": side == "torch_bf16"}


def run_side(side, cfg, args):
    """Run one side in a fresh child process; (result, "") or (None, reason), as `benchmarks.child`."""
    if side in TORCH_SIDES:
        return run_child("benchmarks.bench_train", "--hf-worker", side_spec(side, cfg, args),
                         torch_env(args.threads, args.hf_path))
    return run_child("benchmarks.bench_train", "--worker", side_spec(side, cfg, args),
                     {"OMP_NUM_THREADS": str(args.threads)})


def plan_sides(args, flags):
    """The sides this run times, in round order, and a line for each side left out and why.

    Args:
      flags: this CPU's flags (`utils.runtime.cpu_flags()`, None when unknown).
    """
    sides, skipped = list(SIDE_ORDER), {}
    if args.skip_hf:
        for side in TORCH_SIDES:
            skipped[side] = "--skip-hf"
    elif not has_native_bf16(flags):
        skipped["torch_bf16"] = ("this CPU has neither avx512_bf16 nor amx_bf16 (torch would emulate bf16 in "
                                 "fp32: not what a bf16 user gets)")
    return [s for s in sides if s not in skipped], skipped


def summarise_side(runs):
    """One side's rounds as one row: seq/s median/spread, first loss, peak RSS (the largest of the runs),
    user/system CPU seconds per step (medians), torch version where there is one."""
    row = {"seq_per_s": median_spread([r["seq_per_s"] for r in runs]), "loss": runs[0]["loss"],
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "user_s_per_step": statistics.median([r["user_s_per_step"] for r in runs]),
           "sys_s_per_step": statistics.median([r["sys_s_per_step"] for r in runs]),
           "runs": [r["seq_per_s"] for r in runs]}
    if "torch" in runs[0]:
        row["torch"] = runs[0]["torch"]
    return row


def bench_inference(paddle, program_lib, cfg, spec, rng):
    """SQuAD prediction: fp32 always; bf16 beside it (alternately, same parameters) where supported.

    Both programs share one scope (one set of parameters), hence one process: its peak RSS is theirs together.

    Returns:
      {"fp32": seq/s, "bf16": seq/s or None, "bf16_reason": why not or "", "max_abs_diff", "logit_scale",
       "peak_rss_mb"}.
    """
    from utils.runtime import cpu_bf16_support

    bundle = program_lib.build_squad(cfg, program_lib.TrainConfig(device="cpu", seed=spec["seed"]),
                                     is_training=False)
    fetches = [bundle.eval_fetches["start_logits"], bundle.eval_fetches["end_logits"]]
    feed = squad_batch(rng, cfg.vocab_size)
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()  # one set of fp32 parameters serves both programs
    runners = [Runner(exe, bundle.eval_program, fetches, feed, scope, bundle.startup_program)]
    support = cpu_bf16_support()
    if support.usable:
        bf16_program = program_lib.to_bf16_inference(bundle.eval_program)
        runners.append(Runner(exe, bf16_program, [v.name for v in fetches], feed, scope))
    totals, first = time_alternately(runners, spec["warmup"], spec["steps"])
    seqs = BATCH * spec["steps"]
    result = {"fp32": seqs / totals[0], "bf16": None, "bf16_reason": "" if support.usable else support.reason,
              "max_abs_diff": None, "logit_scale": float(np.max(np.abs(np.asarray(first[0][0]))))}
    if support.usable:
        result["bf16"] = seqs / totals[1]
        result["max_abs_diff"] = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
                                     for a, b in zip(first[0], first[1]))
    return dict(result, peak_rss_mb=peak_rss_mb())


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 12; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per side per round (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first, in every child (default 2; 1 with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="times each side runs, as a fresh process, in turn with the others; the median is "
                        "reported (default 3; 2 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (default 2)")
    p.add_argument("--seed", type=int, default=1234, help="seed of weights and batches")
    p.add_argument("--quick", action="store_true", help="2 layers, 2 rounds of 2 timed steps after 1 warm-up")
    p.add_argument("--skip-inference", action="store_true", help="leave out the inference part")
    p.add_argument("--skip-hf", action="store_true", help="leave out HF transformers on torch (fp32 and bf16)")
    p.add_argument("--hf-path", default=None,
                   help="directory holding torch + transformers (pip install --target DIR torch transformers), "
                        "put on the HF workers' path only")
    args = p.parse_args(argv)
    quick = args.quick
    args.layers = args.layers if args.layers is not None else (2 if quick else 12)
    args.steps = args.steps if args.steps is not None else (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.rounds = args.rounds if args.rounds is not None else (2 if quick else 3)
    for name in ("layers", "steps", "threads", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 1:
        p.error(f"--warmup must be >= 1 (the first step builds the kernels), got {args.warmup}")
    if args.hf_path and not os.path.isdir(args.hf_path):
        p.error(f"--hf-path {args.hf_path}: not a directory")
    return args


def side_line(label, row, ours, flops, peak):
    """One side's row of the training table."""
    rate = row["seq_per_s"]
    achieved = rate["median"] / BATCH * flops / 1e9
    runs = " / ".join(f"{r:.2f}" for r in row["runs"])
    return (f"  {label:<56} {rate['median']:6.2f} seq/s (runs {runs}; spread {rate['spread']:4.0%})"
            f"  {achieved:6.1f} GFLOP/s = {achieved / peak:5.1%} of the probe"
            f"  ours/this {ours / rate['median']:5.2f}x  peak RSS {row['peak_rss_mb']:6.0f} MB"
            f"  CPU s/step user {row['user_s_per_step']:.2f} sys {row['sys_s_per_step']:.2f}"
            f"  (first loss {row['loss']:.3f})")


def report(args, cfg, peak, train, skipped, infer):
    """Print the result table (stdout); the CPU line is printed before any measurement, by main."""
    flops = training_flops(cfg)
    print(f"bert-base shape, {args.layers} layer(s), {args.threads} thread(s), batch {BATCH}, "
          f"{args.rounds} round(s) of every side, each a fresh process timing {args.steps} step(s) after "
          f"{args.warmup} warm-up")
    print(f"GEMM probe (benchmarks.bench_gemm, fp32, the parent process, best of 10): {peak:.1f} GFLOP/s; "
          f"model FLOPs per training step {flops / 1e9:.1f} G")
    print(f"training, seq {TRAIN_SEQ} (median over rounds; peak RSS and CPU seconds are the child's own):")
    ours = train["ours"]["seq_per_s"]["median"] if "ours" in train else float("nan")
    for side in SIDE_ORDER:
        label = LABELS[side].format(torch=train.get(side, {}).get("torch", "?"))
        if side in train:
            print(side_line(label, train[side], ours, flops, peak))
        if side in skipped:
            print(f"  {label:<56} not measured{' in every round' if side in train else ''}: {skipped[side]}")
    if infer is not None:
        line = f"SQuAD inference, seq {SQUAD_SEQ}, executor, one child: fp32 {infer['fp32']:.2f} seq/s"
        if infer["bf16"] is None:
            line += f"   bf16 not measured: {infer['bf16_reason']}"
        else:
            line += (f"   bf16 {infer['bf16']:.2f} seq/s ({infer['bf16'] / infer['fp32']:.2f}x), max |logit "
                     f"diff| {infer['max_abs_diff']:.4f} (largest |logit| {infer['logit_scale']:.3f})")
        print(line + f"   peak RSS {infer['peak_rss_mb']:.0f} MB (both programs, one scope)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hf-worker"]:
        return hf_worker(json.loads(argv[1]))
    if argv[:1] == ["--worker"]:
        return paddle_worker(json.loads(argv[1]))
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # must happen before paddle is imported
    import paddle  # noqa: E402  -- deferred on purpose, see above

    import modeling
    from utils.runtime import cpu_flags

    init_logging()
    print(machine_line(), flush=True)
    paddle.enable_static()
    cfg = dataclasses.replace(modeling.BertConfig.from_json_file(BERT_BASE), num_hidden_layers=args.layers)
    peak = bench_gemm_peak(args)
    sides, skipped = plan_sides(args, cpu_flags())
    # Whole processes, in turn: a side's figure is the median of its rounds, and load from elsewhere that
    # comes and goes falls on every side alike.
    runs, failures = run_rounds(sides, lambda side, _round: run_side(side, cfg, args), args.rounds,
                                requires={"torch_bf16": "torch"})
    skipped.update(failures)
    train = {side: summarise_side(side_runs) for side, side_runs in runs.items()}
    infer = None
    if not args.skip_inference:
        infer, reason = run_side("inference", cfg, args)
        if infer is None:
            logger.warning("inference not measured: %s", reason)
    report(args, cfg, peak, train, skipped, infer)
    return {"gemm_gflops": peak, "training": train, "skipped": skipped, "inference": infer,
            "flops_per_step": training_flops(cfg)}


if __name__ == "__main__":
    main(sys.argv[1:])
