"""Tests for optimizer.py: the weight-decay rule on the real parameter names, and Paddle's LAMB /
AdamW steps against numpy implementations written here from the papers."""

import numpy as np
import paddle
import pytest

import modeling
from optimizer import build_optimizer, exclude_from_weight_decay

NAMES = ["toy.dense.weight", "toy.dense.bias", "toy.LayerNorm.weight", "toy.LayerNorm.bias"]
HPARAMS = dict(weight_decay=0.1, beta1=0.9, beta2=0.999, epsilon=1e-6)


pytestmark = pytest.mark.usefixtures("static_graph")


def test_exclusion_rule_on_real_model_names():
    cfg = modeling.BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=32)
    main = paddle.static.Program()
    with paddle.static.program_guard(main, paddle.static.Program()):
        modeling.BertForPretraining(cfg)
    names = [p.name for p in main.all_parameters()]
    decayed = sorted(n for n in names if not exclude_from_weight_decay(n))
    # 3 embeddings, 6 dense weights per layer, pooler, MLM transform, NSP classifier.
    assert len(names) == 46 and len(decayed) == 3 + 6 * 2 + 3
    assert all(n.endswith(".weight") and "LayerNorm" not in n for n in decayed)
    for name in ("bert.embeddings.LayerNorm.weight", "bert.encoder.layer.1.output.LayerNorm.bias",
                 "cls.predictions.bias", "bert.encoder.layer.0.attention.self.query.bias"):
        assert exclude_from_weight_decay(name)
    for name in ("bert.embeddings.word_embeddings.weight", "cls.seq_relationship.weight",
                 "bert.encoder.layer.0.attention.self.query.weight"):
        assert not exclude_from_weight_decay(name)


def toy_programs(optimizer_name, lr, grad_clip_norm, seed=3):
    """Two programs over the same named parameters: gradients only, and gradients + optimizer."""
    programs = []
    for with_optimizer in (False, True):
        main, startup = paddle.static.Program(), paddle.static.Program()
        main.random_seed = startup.random_seed = seed
        with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
            x = paddle.static.data("x", [-1, 4], "float32")
            init = paddle.nn.initializer.Normal(0.0, 0.5)
            dense = paddle.nn.Linear(4, 3, weight_attr=paddle.ParamAttr(name=NAMES[0]),
                                     bias_attr=paddle.ParamAttr(name=NAMES[1], initializer=init))
            norm = paddle.nn.LayerNorm(3, weight_attr=paddle.ParamAttr(
                name=NAMES[2], initializer=paddle.nn.initializer.Normal(1.0, 0.3)),
                bias_attr=paddle.ParamAttr(name=NAMES[3], initializer=init))
            weights = paddle.to_tensor(np.array([1.0, -2.0, 3.0], np.float32))
            loss = paddle.mean(paddle.multiply(norm(dense(x)), weights)) * 5.0
            if with_optimizer:
                build_optimizer(optimizer_name, lr, grad_clip_norm=grad_clip_norm,
                                **HPARAMS).minimize(loss)
            else:
                paddle.static.append_backward(loss)
        programs.append((main, startup))
    return programs


def np_lamb_step(w, g, m, v, t, lr, decay, clip):
    """One LAMB update (You et al. 2019) after global-norm clipping; excluded params use decay 0
    and no trust ratio (Paddle's default always_adapt=False)."""
    norm = np.sqrt(sum((gi ** 2).sum() for gi in g.values()))
    scale = clip / max(norm, clip)
    out = {}
    for n in w:
        gi = g[n] * scale
        m[n] = HPARAMS["beta1"] * m[n] + (1 - HPARAMS["beta1"]) * gi
        v[n] = HPARAMS["beta2"] * v[n] + (1 - HPARAMS["beta2"]) * gi * gi
        m_hat, v_hat = m[n] / (1 - HPARAMS["beta1"] ** t), v[n] / (1 - HPARAMS["beta2"] ** t)
        excluded = n.endswith(".bias") or ".LayerNorm." in n
        r = m_hat / (np.sqrt(v_hat) + HPARAMS["epsilon"]) + (0.0 if excluded else decay) * w[n]
        w_norm, r_norm = np.linalg.norm(w[n]), np.linalg.norm(r)
        trust = w_norm / r_norm if (not excluded and w_norm > 0 and r_norm > 0) else 1.0
        out[n] = w[n] - lr * trust * r
    return out


def read(scope, names):
    return {n: np.array(scope.find_var(n).get_tensor()).astype(np.float64) for n in names}


def test_lamb_steps_match_numpy_with_clipping():
    (grad_prog, _), (train_prog, startup) = toy_programs("Lamb", 0.05, grad_clip_norm=0.5)
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    m, v = {n: 0.0 for n in NAMES}, {n: 0.0 for n in NAMES}
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        for t in (1, 2, 3):
            w = read(scope, NAMES)
            grads = exe.run(grad_prog, feed={"x": x}, fetch_list=[n + "@GRAD" for n in NAMES])
            grads = {n: gr.astype(np.float64) for n, gr in zip(NAMES, grads)}
            assert np.sqrt(sum((gr ** 2).sum() for gr in grads.values())) > 0.5  # clipping is active
            expected = np_lamb_step(w, grads, m, v, t, 0.05, HPARAMS["weight_decay"], 0.5)
            exe.run(train_prog, feed={"x": x})
            got = read(scope, NAMES)
            for n in NAMES:
                np.testing.assert_allclose(got[n], expected[n], rtol=1e-5, atol=1e-6, err_msg=n)


@pytest.mark.parametrize("name", ["Lamb", "AdamW"])
def test_weight_decay_only_on_decayed_params(name):
    # A zero gradient leaves only decoupled weight decay: AdamW scales w by (1 - lr*wd); LAMB's
    # update is r = wd*w with trust ratio ||w||/||r|| = 1/wd, so w -> w*(1 - lr). Excluded params
    # (bias, LayerNorm) must not move.
    lr = 0.1
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [-1, 4], "float32")
        dense = paddle.nn.Linear(4, 3, weight_attr=paddle.ParamAttr(name="toy.dense.weight"),
                                 bias_attr=paddle.ParamAttr(
                                     name="toy.dense.bias",
                                     initializer=paddle.nn.initializer.Constant(0.5)))
        loss = paddle.mean(dense(x)) * 0.0
        build_optimizer(name, lr, grad_clip_norm=None, **HPARAMS).minimize(loss)
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        before = read(scope, ["toy.dense.weight", "toy.dense.bias"])
        exe.run(main, feed={"x": np.ones((2, 4), np.float32)})
        after = read(scope, ["toy.dense.weight", "toy.dense.bias"])
    factor = 1 - lr * HPARAMS["weight_decay"] if name == "AdamW" else 1 - lr
    np.testing.assert_allclose(after["toy.dense.weight"], before["toy.dense.weight"] * factor, rtol=1e-5)
    np.testing.assert_array_equal(after["toy.dense.bias"], before["toy.dense.bias"])


def test_distributed_fused_lamb_is_refused_with_the_reason_and_lamb():
    # Removed on purpose (issue 15 item 8), not silently replaced by Lamb as before.
    with pytest.raises(ValueError, match=r"DistributedFusedLamb is not supported: .*rank 0.*--optimizer Lamb"):
        build_optimizer("DistributedFusedLamb", 0.01, **HPARAMS)


@pytest.mark.parametrize("change, message", [
    (dict(name="SGD"), "optimizer 'SGD' is not one of"),
    (dict(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    (dict(epsilon=0.0), "epsilon must be > 0"),
    (dict(grad_clip_norm=0.0), "grad_clip_norm must be > 0 or None"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
])
def test_invalid_hyperparameters(change, message):
    kwargs = dict(HPARAMS, name="Lamb")
    kwargs.update(change)
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        build_optimizer(name, 0.01, **kwargs)
