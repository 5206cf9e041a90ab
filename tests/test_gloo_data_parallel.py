"""gloo_data_parallel: 2 CPU ranks (gloo, paddle.distributed.launch) train exactly like 1 rank.

Each rank gets half of a global batch; the one-process run gets the whole batch. Dropout is off and both
halves have the same number of masked tokens, so the loss over the global batch is the mean of the ranks'
losses and the averaged gradients are the one-process gradients (up to float summation order).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO

SCRIPT = textwrap.dedent('''
    import utils.preflight  # noqa: F401
    import os, sys
    import numpy as np
    import paddle
    import program as P
    from modeling import BertConfig
    from utils.runtime import init_runtime

    rt = init_runtime("cpu", seed=7)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    train = P.TrainConfig(optimizer="Lamb", learning_rate=1e-2, total_steps=10,
                          gradient_merge_steps=int(sys.argv[2]), **rt.train_config_kwargs())
    bundle = P.build_pretraining(cfg, train)
    rt.exe.run(bundle.startup_program)
    rng = np.random.default_rng(0)
    B, L = 8, 16
    feed = {"input_ids": rng.integers(5, 60, (B, L)), "token_type_ids": np.zeros((B, L), "int64"),
            "attention_mask": np.ones((B, 1, 1, L), "int64"),
            "next_sentence_labels": rng.integers(0, 2, (B, 1)),
            "masked_lm_labels": np.full((B, L), -1, "int64")}
    feed["masked_lm_labels"][:, 3] = rng.integers(5, 60, B)   # 2 masked tokens in every row
    feed["masked_lm_labels"][:, 9] = rng.integers(5, 60, B)
    feed = {k: np.asarray(v, "int64") for k, v in feed.items()}
    world, rank = rt.dist.world_size, rt.dist.rank
    per = B // world
    fetch = [bundle.fetches["loss"]]  # this rank's loss; the test averages the ranks
    losses = []
    for step in range(4):
        micro = {k: v[rank * per:(rank + 1) * per] for k, v in feed.items()}
        losses.append(float(np.asarray(rt.exe.run(bundle.main_program, feed=micro, fetch_list=fetch)[0])))
    scope = paddle.static.global_scope()
    params = {p.name: np.array(scope.find_var(p.name).get_tensor())
              for p in bundle.main_program.all_parameters()}
    np.savez(os.path.join(sys.argv[1], f"rank{rank}_of{world}.npz"), losses=np.array(losses), **params)
''')


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for key in [k for k in env if k.startswith("PADDLE_")]:
        del env[key]
    return env


@pytest.mark.parametrize("merge_steps", [1, 2])
def test_two_gloo_ranks_equal_one_process_with_the_global_batch(tmp_path, merge_steps):
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    run = dict(cwd=tmp_path,  # the launcher writes http.log into its cwd
                env=_env(), capture_output=True, text=True, timeout=300)
    single = subprocess.run([sys.executable, str(script), str(tmp_path), str(merge_steps)], **run)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                            "--log_dir", str(tmp_path / "log"), str(script), str(tmp_path),
                            str(merge_steps)], **run)
    logs = "".join(p.read_text() for p in (tmp_path / "log").glob("workerlog.*"))
    assert multi.returncode == 0, logs[-3000:]
    one = np.load(tmp_path / "rank0_of1.npz")
    ranks = [np.load(tmp_path / f"rank{r}_of2.npz") for r in range(2)]
    names = [n for n in one.files if n != "losses"]
    assert len(names) > 10
    for name in names:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)  # ranks agree
        np.testing.assert_allclose(ranks[0][name], one[name], rtol=2e-5, atol=2e-6, err_msg=name)
    # The mean of the ranks' losses is the one-process loss of the same global batch.
    np.testing.assert_allclose((ranks[0]["losses"] + ranks[1]["losses"]) / 2, one["losses"], rtol=1e-5)
    # And training moved the parameters (a no-op update would make the comparison vacuous).
    assert not np.allclose(one["losses"][0], one["losses"][-1])
