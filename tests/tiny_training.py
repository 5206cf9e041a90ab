"""A few training steps of a 2-layer pretraining program on one fixed batch: what the CPU kernel tests compare
with and without a kernel (`cpu_kernels`), so every kernel is checked on the same program and batch."""
import dataclasses

import numpy as np
import paddle

import program as P
from modeling import BertConfig

TINY = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)


@dataclasses.dataclass
class TinyRun:
    """bundle: the built program; losses: one float per step; params: {name: array} after the last step;
    state: sorted names of every persistable variable (what a checkpoint holds)."""
    bundle: object
    losses: list
    params: dict
    state: list


def train_tiny(steps=3, seed_each_step=None, **train_cfg):
    """Build and train TINY for `steps` steps (LAMB, lr 1e-3, no warm-up, CPU) with `train_cfg` overriding
    TrainConfig fields. `seed_each_step`: None keeps one `paddle.seed(5)` before the start-up program;
    an int calls `paddle.seed(seed_each_step + step)` before each step, as the pretraining loop does."""
    cfg = P.TrainConfig(**{"optimizer": "Lamb", "learning_rate": 1e-3, "total_steps": 10, "warmup_steps": 0,
                           "device": "cpu", "seed": 3, **train_cfg})
    with paddle.utils.unique_name.guard():
        bundle = P.build_pretraining(TINY, cfg)
    rng = np.random.default_rng(0)
    batch, seq = 4, 16
    labels = np.full((batch, seq), -1, np.int64)
    labels[:, 3:6] = rng.integers(5, 60, (batch, 3))
    feed = {"input_ids": rng.integers(5, 60, (batch, seq)), "token_type_ids": np.zeros((batch, seq), np.int64),
            "attention_mask": np.ones((batch, 1, 1, seq), np.int64),
            "next_sentence_labels": rng.integers(0, 2, (batch, 1)), "masked_lm_labels": labels}
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    paddle.seed(5)
    exe.run(bundle.startup_program, scope=scope)
    losses = []
    for step in range(steps):
        if seed_each_step is not None:
            paddle.seed(seed_each_step + step)
        loss = exe.run(bundle.main_program, feed=feed, fetch_list=[bundle.fetches["loss"]], scope=scope)[0]
        losses.append(float(np.asarray(loss).reshape(-1)[0]))
    params = {p.name: np.array(scope.find_var(p.name).get_tensor()) for p in bundle.main_program.all_parameters()}
    state = sorted(v.name for v in bundle.main_program.list_vars() if v.persistable)
    return TinyRun(bundle, losses, params, state)
