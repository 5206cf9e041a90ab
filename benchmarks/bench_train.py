"""Benchmark: CPU training seq/s of our pre-training program vs a stock-Paddle BERT and HF transformers on
torch, as model FLOP/s and as a fraction of this machine's GEMM peak; and fp32 (and bf16) inference.

Owns: the baseline (a plain static BERT written here from `paddle.nn.TransformerEncoder` layers with
auto-named parameters: same sizes, same heads -- MLM scored at the predicted positions only, decoder tied
to the word embeddings -- same LAMB settings: weight decay 0.01 except biases and LayerNorm, clip by
global norm 1.0), the HF worker, the model FLOP count, the synthetic batches and the timing. Does not own
what is measured: `program.build_pretraining`, `program.build_squad`, `program.to_bf16_inference`, the
GEMM probe (`benchmarks.bench_gemm`).

1. GEMM probe: `benchmarks.bench_gemm`'s fp32 matmul chain in this process (same MKL, same threads): the
   machine's practical peak for the GEMMs a BERT step is made of.
2. Training: bert-base shape (bert_configs/bert-base-uncased.json, `--layers` may cut the depth), sequence
   length 128, batch 8, fp32, LAMB, dropout on. Three programs, timed alternately one step at a time after
   `--warmup` steps each, so load from other processes falls on all alike: ours as a CPU run builds it
   (fused CPU LAMB kernel), ours with Paddle's own `lamb` op (what that one change buys), the stock-layer
   baseline. Before and after them, in its own process (torch and paddle each bring an OpenMP runtime),
   HF transformers' BertForPreTraining with torch's AdamW on the same shapes and threads (the mean of the
   two runs is compared), when torch + transformers import (`--hf-path DIR` for a
   `pip install --target DIR torch transformers`).
   Model FLOPs per step: 6 x (encoder parameters x tokens + pooler/NSP parameters x sequences + MLM
   transform and decoder parameters x predicted positions) + 12 x layers x batch x seq^2 x hidden for the
   attention scores and context (forward 4·B·L²·H, backward twice that).
3. Inference: the SQuAD predict program (`build_squad(..., is_training=False)`, sequence length 384,
   batch 8) in fp32 through the executor, always; and after `to_bf16_inference` where this CPU and Paddle
   build support bf16 (same parameters, same scope, timed alternately, with the largest logit difference).

OMP_NUM_THREADS is set from `--threads` before paddle is imported (paddle would otherwise use one).

Usage (from the repo root):
  python -m benchmarks.bench_train [--layers 12] [--steps 5] [--warmup 2] [--threads 2] [--hf-path DIR]
  python -m benchmarks.bench_train --quick      # 2 layers, 2 steps: about a minute
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import dataclasses
import json
import logging
import os
import sys
import time

import numpy as np

from benchmarks.torch_worker import run_torch_worker
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
    """Warm up every runner, then time them round-robin one step at a time.

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


# ------------------------------------------------------------------------------------------ benchmarks
def bench_gemm_peak(args):
    """GFLOP/s of the GEMM probe, the best of 10 runs, in this process with this MKL and thread count.

    The best, not the median: it stands for the machine's limit, and other processes can only slow a run.
    """
    from benchmarks import bench_gemm

    probe = bench_gemm.parse_args(["--threads", str(args.threads), "--runs", "10", "--warmup", "2"])
    return bench_gemm.run(probe)["max"]


def bench_training(paddle, program_lib, cfg, args, rng):
    """Ours (as a CPU run builds it), ours with Paddle's lamb op, and the stock-layer baseline, timed
    alternately. Returns {name: seq/s, "loss_<name>": first loss} for "ours", "paddle_lamb", "baseline"."""
    def ours(cpu_lamb_kernel):
        train_cfg = program_lib.TrainConfig(optimizer="Lamb", learning_rate=LR, total_steps=1000,
                                            weight_decay=WEIGHT_DECAY, grad_clip_norm=CLIP, device="cpu",
                                            seed=args.seed, cpu_lamb_kernel=cpu_lamb_kernel)
        bundle = program_lib.build_pretraining(cfg, train_cfg)
        return bundle.main_program, bundle.startup_program, bundle.fetches["loss"]

    built = {"ours": ours(True), "paddle_lamb": ours(False),
             "baseline": build_baseline(paddle, program_lib, cfg, args.seed)}
    feed = pretraining_batch(rng, cfg.vocab_size)
    exe = paddle.static.Executor(paddle.CPUPlace())
    runners = [Runner(exe, main, [loss], feed, paddle.static.Scope(), startup)
               for main, startup, loss in built.values()]
    totals, first = time_alternately(runners, args.warmup, args.steps)
    result = {}
    for name, total, values in zip(built, totals, first):
        loss = float(np.asarray(values[0]).reshape(-1)[0])
        if not np.isfinite(loss):
            raise RuntimeError(f"non-finite first-step loss of {name}: {loss}")
        result[name], result[f"loss_{name}"] = BATCH * args.steps / total, loss
    return result


def hf_worker(spec):
    """Time HF BertForPreTraining + torch AdamW training steps; prints {"seq_per_s", "torch", "loss"} as JSON.

    Same shapes, batches (MLM labels -100 where not predicted) and thread count as the Paddle programs.
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
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return float(loss)

    loss = step()
    for _ in range(spec["warmup"] - 1):
        step()
    start = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({"seq_per_s": BATCH * spec["steps"] / seconds, "torch": torch.__version__,
                      "loss": loss}))


def bench_hf(cfg, args):
    """HF transformers on torch, in a child process; None (with one line saying why) when unavailable."""
    spec = {"threads": args.threads, "seed": args.seed, "config": cfg.to_dict(), "warmup": args.warmup,
            "steps": args.steps}
    return run_torch_worker("benchmarks.bench_train", spec, args.threads, args.hf_path)


def mean_hf(runs):
    """One HF result from the runs before and after ours (seq/s averaged, each run kept), or None."""
    runs = [r for r in runs if r is not None]
    if not runs:
        return None
    return dict(runs[0], seq_per_s=float(np.mean([r["seq_per_s"] for r in runs])),
                runs=[r["seq_per_s"] for r in runs])


def bench_inference(paddle, program_lib, cfg, args, rng):
    """SQuAD prediction: fp32 always; bf16 beside it (alternately, same parameters) where supported.

    Returns:
      {"fp32": seq/s, "bf16": seq/s or None, "bf16_reason": why not or "", "max_abs_diff", "logit_scale"}.
    """
    from utils.runtime import cpu_bf16_support

    bundle = program_lib.build_squad(cfg, program_lib.TrainConfig(device="cpu", seed=args.seed),
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
    totals, first = time_alternately(runners, args.warmup, args.steps)
    seqs = BATCH * args.steps
    result = {"fp32": seqs / totals[0], "bf16": None, "bf16_reason": "" if support.usable else support.reason,
              "max_abs_diff": None, "logit_scale": float(np.max(np.abs(np.asarray(first[0][0]))))}
    if support.usable:
        result["bf16"] = seqs / totals[1]
        result["max_abs_diff"] = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
                                     for a, b in zip(first[0], first[1]))
    return result


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 12; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per program (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (default 2)")
    p.add_argument("--seed", type=int, default=1234, help="seed of weights and batches")
    p.add_argument("--quick", action="store_true", help="2 layers, 2 timed steps, 1 warm-up: about a minute")
    p.add_argument("--skip-inference", action="store_true", help="leave out the inference part")
    p.add_argument("--skip-hf", action="store_true", help="leave out HF transformers on torch")
    p.add_argument("--hf-path", default=None,
                   help="directory holding torch + transformers (pip install --target DIR torch transformers), "
                        "put on the HF worker's path only")
    args = p.parse_args(argv)
    quick = args.quick
    args.layers = args.layers if args.layers is not None else (2 if quick else 12)
    args.steps = args.steps if args.steps is not None else (2 if quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    for name in ("layers", "steps", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 1:
        p.error(f"--warmup must be >= 1 (the first step builds the kernels), got {args.warmup}")
    if args.hf_path and not os.path.isdir(args.hf_path):
        p.error(f"--hf-path {args.hf_path}: not a directory")
    return args


def report(args, cfg, peak, train, hf, infer):
    """Print the result table (stdout)."""
    flops = training_flops(cfg)
    print(f"bert-base shape, {args.layers} layer(s), {args.threads} thread(s), batch {BATCH}, "
          f"{args.steps} timed step(s) after {args.warmup} warm-up")
    print(f"GEMM probe (benchmarks.bench_gemm, this process, best of 10): {peak:.1f} GFLOP/s; model FLOPs per training "
          f"step {flops / 1e9:.1f} G")
    rows = [("ours (as a CPU run builds it)", train["ours"], train["loss_ours"]),
            ("ours with Paddle's lamb op", train["paddle_lamb"], train["loss_paddle_lamb"]),
            ("stock-layer Paddle baseline", train["baseline"], train["loss_baseline"])]
    if hf is not None:
        runs = " / ".join(f"{r:.2f}" for r in hf["runs"])
        rows.append((f"HF transformers, torch {hf['torch']}, AdamW (runs {runs})", hf["seq_per_s"], hf["loss"]))
    print(f"training, seq {TRAIN_SEQ}, fp32:")
    for name, rate, loss in rows:
        achieved = rate / BATCH * flops / 1e9
        print(f"  {name:<56} {rate:6.2f} seq/s  {achieved:6.1f} GFLOP/s = {achieved / peak:5.1%} of the probe"
              f"   ours/this {train['ours'] / rate:5.2f}x   (first loss {loss:.3f})")
    if infer is not None:
        line = f"SQuAD inference, seq {SQUAD_SEQ}, executor: fp32 {infer['fp32']:.2f} seq/s"
        if infer["bf16"] is None:
            line += f"   bf16 not measured: {infer['bf16_reason']}"
        else:
            line += (f"   bf16 {infer['bf16']:.2f} seq/s ({infer['bf16'] / infer['fp32']:.2f}x), max |logit "
                     f"diff| {infer['max_abs_diff']:.4f} (largest |logit| {infer['logit_scale']:.3f})")
        print(line)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--hf-worker"]:
        return hf_worker(json.loads(argv[1]))
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # must happen before paddle is imported
    import paddle  # noqa: E402  -- deferred on purpose, see above

    import modeling
    import program as program_lib

    init_logging()
    paddle.enable_static()
    paddle.seed(args.seed)
    cfg = dataclasses.replace(modeling.BertConfig.from_json_file(BERT_BASE), num_hidden_layers=args.layers)
    rng = np.random.default_rng(args.seed)
    peak = bench_gemm_peak(args)
    # HF runs in its own process, so it cannot be interleaved step by step with ours: it runs once before
    # and once after, and the mean of the two is reported, so a change of load during the run falls on
    # both sides alike.
    hf_runs = [] if args.skip_hf else [bench_hf(cfg, args)]
    train = bench_training(paddle, program_lib, cfg, args, rng)
    if hf_runs and hf_runs[0] is not None:
        hf_runs.append(bench_hf(cfg, args))
    hf = mean_hf(hf_runs)
    infer = None if args.skip_inference else bench_inference(paddle, program_lib, cfg, args, rng)
    report(args, cfg, peak, train, hf, infer)
    return {"gemm_gflops": peak, "training": train, "hf": hf, "inference": infer,
            "flops_per_step": training_flops(cfg)}


if __name__ == "__main__":
    main(sys.argv[1:])
