"""Benchmark: CPU training seq/s of our pre-training program vs a stock-Paddle BERT, and bf16 vs fp32 inference.

Owns: the baseline (a plain static BERT written here from `paddle.nn.TransformerEncoder` layers with
auto-named parameters: same sizes, same heads -- MLM scored at the predicted positions only, decoder tied
to the word embeddings -- same LAMB settings: weight decay 0.01 except biases and LayerNorm, clip by
global norm 1.0), the synthetic batches, and the timing. Does not own what is measured:
`program.build_pretraining`, `program.build_squad`, `program.to_bf16_inference`.

1. Training: bert-base shape (bert_configs/bert-base-uncased.json, `--layers` may cut the depth), sequence
   length 128, batch 8, fp32, LAMB, dropout on. After `--warmup` steps each, the two programs are timed
   alternately, one step at a time, so load from other processes falls on both alike.
2. Inference: the SQuAD predict program (`build_squad(..., is_training=False)`, sequence length 384,
   batch 8) in fp32 and after `to_bf16_inference` (same parameters, same scope), timed alternately;
   also the largest absolute difference of the start/end logits between the two.

OMP_NUM_THREADS is set from `--threads` before paddle is imported (paddle would otherwise use one).

Usage (from the repo root):
  python -m benchmarks.bench_train [--layers 12] [--steps 5] [--warmup 2] [--threads 2]
  python -m benchmarks.bench_train --quick      # 2 layers, 2 steps: under a minute
"""
import zlib  # noqa: F401  -- before paddle: libpaddle's own zlib symbols crash later zlib users
import utils.preflight  # noqa: F401  -- OMP threads default, MKL path; must stay before paddle

import dataclasses
import logging
import os
import sys
import time

import numpy as np

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


# ------------------------------------------------------------------------------------------ benchmarks
def bench_training(paddle, program_lib, cfg, args, rng):
    """Ours vs the stock-layer baseline, training. Returns a dict of the measured figures."""
    train_cfg = program_lib.TrainConfig(optimizer="Lamb", learning_rate=LR, total_steps=1000,
                                        weight_decay=WEIGHT_DECAY, grad_clip_norm=CLIP, device="cpu",
                                        seed=args.seed)
    bundle = program_lib.build_pretraining(cfg, train_cfg)
    base_main, base_startup, base_loss = build_baseline(paddle, program_lib, cfg, args.seed)
    feed = pretraining_batch(rng, cfg.vocab_size)
    exe = paddle.static.Executor(paddle.CPUPlace())
    ours = Runner(exe, bundle.main_program, [bundle.fetches["loss"]], feed, paddle.static.Scope(),
                  bundle.startup_program)
    base = Runner(exe, base_main, [base_loss], feed, paddle.static.Scope(), base_startup)
    (t_ours, t_base), first = time_alternately([ours, base], args.warmup, args.steps)
    losses = [float(np.asarray(values[0]).reshape(-1)[0]) for values in first]
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite first-step loss: ours {losses[0]}, baseline {losses[1]}")
    seqs = BATCH * args.steps
    return {"ours": seqs / t_ours, "baseline": seqs / t_base, "loss_ours": losses[0],
            "loss_baseline": losses[1]}


def bench_bf16_inference(paddle, program_lib, cfg, args, rng):
    """fp32 vs bf16 SQuAD prediction on the same parameters. Returns a dict, or None without bf16."""
    if not paddle.base.core.supports_bfloat16():
        logger.warning("this CPU/Paddle build has no bf16 support: skipping the inference benchmark")
        return None
    bundle = program_lib.build_squad(cfg, program_lib.TrainConfig(device="cpu", seed=args.seed),
                                     is_training=False)
    bf16_program = program_lib.to_bf16_inference(bundle.eval_program)
    fetches = [bundle.eval_fetches["start_logits"], bundle.eval_fetches["end_logits"]]
    feed = squad_batch(rng, cfg.vocab_size)
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()  # one set of fp32 parameters serves both programs
    fp32 = Runner(exe, bundle.eval_program, fetches, feed, scope, bundle.startup_program)
    bf16 = Runner(exe, bf16_program, [v.name for v in fetches], feed, scope)
    (t_fp32, t_bf16), first = time_alternately([fp32, bf16], args.warmup, args.steps)
    diff = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
               for a, b in zip(first[0], first[1]))
    seqs = BATCH * args.steps
    return {"fp32": seqs / t_fp32, "bf16": seqs / t_bf16, "max_abs_diff": diff,
            "logit_scale": float(np.max(np.abs(np.asarray(first[0][0]))))}


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=None, help="encoder layers (default 12; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per program (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; 1 with --quick)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (default 2)")
    p.add_argument("--seed", type=int, default=1234, help="seed of weights and batches")
    p.add_argument("--quick", action="store_true", help="2 layers, 2 timed steps, 1 warm-up: < 60 s")
    p.add_argument("--skip-inference", action="store_true", help="only the training comparison")
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
    return args


def report(args, train, infer):
    """Print the result table (stdout)."""
    print(f"bert-base shape, {args.layers} layer(s), {args.threads} thread(s), batch {BATCH}, "
          f"{args.steps} timed step(s) after {args.warmup} warm-up")
    print(f"training, seq {TRAIN_SEQ}, fp32, LAMB:  ours {train['ours']:.2f} seq/s   stock-layer "
          f"baseline {train['baseline']:.2f} seq/s   ratio {train['ours'] / train['baseline']:.2f}x   "
          f"(first losses {train['loss_ours']:.3f} / {train['loss_baseline']:.3f})")
    if infer is not None:
        print(f"SQuAD inference, seq {SQUAD_SEQ}:  fp32 {infer['fp32']:.2f} seq/s   bf16 "
              f"{infer['bf16']:.2f} seq/s   ratio {infer['bf16'] / infer['fp32']:.2f}x   max |logit "
              f"diff| {infer['max_abs_diff']:.4f} (largest |logit| {infer['logit_scale']:.3f})")


def main(argv=None):
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
    train = bench_training(paddle, program_lib, cfg, args, rng)
    infer = None if args.skip_inference else bench_bf16_inference(paddle, program_lib, cfg, args, rng)
    report(args, train, infer)
    return {"training": train, "inference": infer}


if __name__ == "__main__":
    main(sys.argv[1:])
