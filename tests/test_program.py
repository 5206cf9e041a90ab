"""Tests for program.py: feeds, bundle contents, parameter count, fp32 training on CPU, gradient
merge, AMP program structure, fleet on one CPU process, SQuAD bundles and bf16 inference.

Mixed-precision *training* cannot run on the CPU wheel (fp16 ops stay fp32, bf16 training crashes in oneDNN), so AMP programs are checked by their ops.
A CPU wheel's AMP pass also refuses to emit fp16/bf16 ops (it asks the op registry whether the GPU
kernels exist); `gpu_op_support` stands in for a CUDA build's registry so we can inspect the
program a GPU run would get.
"""
import logging

import numpy as np
import paddle
import pytest

import program as P
from lr_scheduler import lr_at
from modeling import BertConfig

TINY = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32)
# Hand count for TINY (vocab padded to 64):
#   embeddings 64*16 + 32*16 + 2*16 + LN 2*16                      = 1600
#   per layer  4*(16*16+16) + 2 LN*2*16 + (16*32+32) + (32*16+16)  = 2224, x2 = 4448
#   pooler 16*16+16 = 272; MLM transform 272 + LN 32 + bias 64 = 368; NSP 16*2+2 = 34
TINY_PRETRAINING_PARAMS = 1600 + 4448 + 272 + 368 + 34
OPTIMIZER_OPS = {"lamb", "adamw", "adam", "distributed_fused_lamb", "sgd", "momentum", "bert_lamb_cpu"}


def cpu_lamb_type():
    """The op type a CPU program's LAMB updates have: the fused kernel when it builds here, else Paddle's."""
    from cpu_kernels.build import lamb_kernel
    return lamb_kernel().op_type or "lamb"


pytestmark = pytest.mark.usefixtures("static_graph")


@pytest.fixture
def gpu_op_support(monkeypatch):
    import paddle.static.amp.fp16_lists as fp16_lists
    monkeypatch.setattr(fp16_lists, "_get_sys_unsupported_list", lambda dtype: ("GPU", set(), set()))


@pytest.fixture(scope="module")
def fleet_initialised():
    from paddle.distributed import fleet
    fleet.init(is_collective=True)
    return fleet


def train_cfg(**kwargs):
    return P.TrainConfig(**dict(dict(total_steps=8, learning_rate=1e-2, warmup_steps=2), **kwargs))


def pretraining_batch(seed=0, batch=4, length=16):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((batch, length)) < 0.25,
                      rng.integers(0, TINY.vocab_size, (batch, length)), -1)
    labels[:, 1] = 5
    keep = np.ones((batch, length), np.int64)
    keep[0, -4:] = 0
    return {"input_ids": rng.integers(0, TINY.vocab_size, (batch, length)),
            "token_type_ids": np.zeros((batch, length), np.int64),
            "attention_mask": keep[:, None, None, :],
            "next_sentence_labels": rng.integers(0, 2, (batch, 1)), "masked_lm_labels": labels}


def squad_batch(seed=0, batch=3, length=16):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, TINY.vocab_size, (batch, length)),
            "token_type_ids": (np.arange(length) >= 6).astype(np.int64)[None].repeat(batch, 0),
            "attention_mask": np.ones((batch, 1, 1, length), np.int64),
            "start_positions": rng.integers(6, length, (batch, 1)),
            "end_positions": rng.integers(6, length, (batch, 1))}


def all_ops(program):
    return [op for block in program.blocks for op in block.ops]


def op_types(program):
    return {op.type for op in all_ops(program)}


def matmul_dtypes(program):
    block = program.global_block()
    return {block.var(name).dtype for op in block.ops if op.type == "matmul_v2"
            for name in op.output_arg_names}


def param(scope, name):
    return np.array(scope.find_var(name).get_tensor())


# ---------------------------------------------------------------- feeds and bundle
def test_feed_specs_are_the_loader_contract():
    assert [(s.name, s.shape, s.dtype) for s in P.FEED_SPECS["pretraining"]] == [
        ("input_ids", (-1, -1), "int64"), ("token_type_ids", (-1, -1), "int64"),
        ("attention_mask", (-1, 1, 1, -1), "int64"), ("next_sentence_labels", (-1, 1), "int64"),
        ("masked_lm_labels", (-1, -1), "int64")]
    assert [s.name for s in P.FEED_SPECS["squad"]] == [
        "input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"]
    main = paddle.static.Program()
    with paddle.static.program_guard(main, paddle.static.Program()):
        feeds = P.create_feeds("squad")
    assert [tuple(v.shape) for v in feeds.values()] == [s.shape for s in P.FEED_SPECS["squad"]]
    assert {v.dtype for v in feeds.values()} == {paddle.int64}
    assert [(s.name, s.dtype) for s in P.FEED_SPECS["glue_regression"]][-1] == ("labels", "float32")
    with pytest.raises(ValueError, match="unknown feed kind 'ner'"):
        P.create_feeds("ner")


def test_fp32_pretraining_bundle():
    bundle = P.build_pretraining(TINY, train_cfg())
    names = tuple(s.name for s in P.FEED_SPECS["pretraining"])
    assert bundle.feed_names == bundle.eval_feed_names == names
    assert set(bundle.fetches) == {"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc", "lr"}
    assert set(bundle.eval_fetches) == {"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"}
    params = bundle.main_program.all_parameters()
    assert sum(int(np.prod(p.shape)) for p in params) == TINY_PRETRAINING_PARAMS
    train_ops = [op.type for op in all_ops(bundle.main_program)]
    assert train_ops.count(cpu_lamb_type()) == len(params)
    eval_ops = op_types(bundle.eval_program)
    assert not eval_ops & OPTIMIZER_OPS and not any(t.endswith("_grad") for t in eval_ops)
    dropouts = [op for op in all_ops(bundle.eval_program) if op.type == "dropout"]
    assert dropouts and all(op.attr("is_test") for op in dropouts)
    assert bundle.attention_impl == "plain" and bundle.optimizer is not None
    assert isinstance(bundle.build_strategy, paddle.static.BuildStrategy)


def test_fp32_training_runs_loss_falls_and_lr_follows_schedule():
    cfg = train_cfg(learning_rate=0.1)  # LAMB moves each tensor by ~lr of its norm per step
    bundle = P.build_pretraining(TINY, cfg)
    feed = pretraining_batch()
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    losses = []
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        for step in range(cfg.total_steps):
            loss, lr = exe.run(bundle.main_program, feed=feed,
                               fetch_list=[bundle.fetches["loss"], bundle.fetches["lr"]])
            assert float(lr) == pytest.approx(lr_at(step, **cfg.lr_kwargs()), rel=1e-6)
            bundle.lr_scheduler.step()
            losses.append(float(loss))
        before = param(scope, "cls.seq_relationship.weight")
        exe.run(bundle.eval_program, feed=feed, fetch_list=list(bundle.eval_fetches.values()))
        np.testing.assert_array_equal(param(scope, "cls.seq_relationship.weight"), before)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0], losses


def first_losses(seed, dropout_seed, steps=3):
    """Losses of `steps` runs at learning rate 0: only dropout changes between them."""
    bundle = P.build_pretraining(TINY, train_cfg(seed=seed, learning_rate=0.0, warmup_steps=0))
    exe = paddle.static.Executor(paddle.CPUPlace())
    paddle.seed(dropout_seed)
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(bundle.startup_program)
        return [float(exe.run(bundle.main_program, feed=pretraining_batch(),
                              fetch_list=[bundle.fetches["loss"]])[0]) for _ in range(steps)]


def test_init_depends_on_seed_only_and_dropout_changes_every_step():
    reference = first_losses(seed=3, dropout_seed=11)
    assert first_losses(seed=3, dropout_seed=11) == reference  # reproducible
    assert len(set(reference)) == len(reference)  # a fresh dropout mask at every step
    assert first_losses(seed=4, dropout_seed=11) != reference  # init follows the seed
    bundle = P.build_pretraining(TINY, train_cfg())
    ops = all_ops(bundle.main_program)
    # Paddle's dropout unseeded, or the CPU kernel fed by the per-step draw of the global generator.
    dropouts = [op for op in ops if op.type in ("dropout", "bert_dropout_cpu")]
    assert dropouts and not any(op.type == "dropout" and op.attr("fix_seed") for op in dropouts)
    seeds = {op.output("Out")[0] for op in ops if op.type == "randint"}
    assert all(op.input("Seed")[0] in seeds for op in dropouts if op.type == "bert_dropout_cpu")


def test_gradient_merge_updates_every_k_micro_batches():
    bundle = P.build_pretraining(TINY, train_cfg(gradient_merge_steps=2, warmup_steps=0))
    types = [op.type for op in bundle.main_program.global_block().ops]
    lamb = cpu_lamb_type()  # the CPU kernel swap reaches into the merge block too
    assert "conditional_block" in types and lamb not in types  # optimizer runs inside the block
    assert lamb in op_types(bundle.main_program)
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    changed = []
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        for i in range(4):
            before = param(scope, "bert.pooler.dense.weight")
            exe.run(bundle.main_program, feed=pretraining_batch(seed=i))
            changed.append(not np.array_equal(before, param(scope, "bert.pooler.dense.weight")))
    assert changed == [False, True, False, True]


# ---------------------------------------------------------------- mixed precision (program structure)
def check_amp_program(bundle, low_dtype, dynamic_scaling):
    types = [op.type for op in all_ops(bundle.main_program)]
    assert "cast" in types
    # Both check the gradients and skip a step with inf/nan (fp16 through its loss scaler, bf16 through
    # program_rewrites.skip_nonfinite_updates, which tests the clip's global norm); only fp16 adapts a loss scale.
    assert ("check_finite_and_unscale" if dynamic_scaling else "isfinite_v2") in types
    assert ("update_loss_scaling" in types) == dynamic_scaling
    updates = [op for op in all_ops(bundle.main_program) if op.type in OPTIMIZER_OPS]
    assert updates and all(op.input("SkipUpdate") for op in updates)
    assert matmul_dtypes(bundle.main_program) == {low_dtype}
    assert "loss_scaling" in bundle.fetches
    # The eval clone runs in the training precision (flash_attn has no fp32 kernel; O2 parameters are
    # fp16) and has no optimizer.
    assert matmul_dtypes(bundle.eval_program) == {low_dtype}
    assert not op_types(bundle.eval_program) & OPTIMIZER_OPS


def test_amp_fp16_program(gpu_op_support):
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu"))
    check_amp_program(bundle, paddle.float16, dynamic_scaling=True)


def test_amp_bf16_program(gpu_op_support):
    bundle = P.build_pretraining(TINY, train_cfg(amp="bf16", device="gpu"))
    check_amp_program(bundle, paddle.bfloat16, dynamic_scaling=False)


def test_pure_fp16_program_has_fp16_params_and_master_weights(gpu_op_support):
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", use_pure_fp16=True, device="gpu"))
    check_amp_program(bundle, paddle.float16, dynamic_scaling=True)
    dtypes = {p.name: p.dtype for p in bundle.main_program.all_parameters()}
    assert dtypes["bert.encoder.layer.0.attention.self.query.weight"] == paddle.float16
    lambs = [op for op in all_ops(bundle.main_program) if op.type == "lamb"]
    assert lambs and all(op.input("MasterParam") for op in lambs
                         if dtypes[op.input("Param")[0]] == paddle.float16)


def test_amp_with_fleet_and_gradient_merge(gpu_op_support, fleet_initialised):
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu", use_fleet=True,
                                                 gradient_merge_steps=4))
    check_amp_program(bundle, paddle.float16, dynamic_scaling=True)
    assert "conditional_block" in op_types(bundle.main_program)


def test_amp_without_low_precision_kernels_is_an_error_not_fp32():
    if paddle.is_compiled_with_cuda():
        pytest.skip("CUDA build: the AMP pass does emit fp16 ops")
    with pytest.raises(RuntimeError, match="kept every matmul in fp32"):
        P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu"))


def test_dist_strategy_matches_reference_settings():
    strategy = P.build_dist_strategy(train_cfg(amp="fp16", device="gpu", use_pure_fp16=True,
                                               scale_loss=1024.0))
    amp = strategy.amp_configs
    assert strategy.amp and amp["use_pure_fp16"] and amp["use_dynamic_loss_scaling"]
    assert set(amp["custom_white_list"]) == {"softmax", "layer_norm", "gelu"}
    assert set(amp["custom_black_list"]) == {"lookup_table", "lookup_table_v2",  # embeddings and loss
                                             "softmax_with_cross_entropy", "reduce_mean", "mean"}
    assert (amp["init_loss_scaling"], amp["incr_every_n_steps"], amp["decr_every_n_nan_or_inf"],
            amp["incr_ratio"], amp["decr_ratio"]) == (1024.0, 2000, 1, 2.0, 0.5)
    assert not strategy.gradient_merge and strategy.fuse_all_reduce_ops
    merged = P.build_dist_strategy(train_cfg(amp="fp16", device="gpu", gradient_merge_steps=8))
    assert merged.gradient_merge and merged.gradient_merge_configs == {"k_steps": 8, "avg": True}
    assert not merged.amp_configs["use_pure_fp16"]
    plain = P.build_dist_strategy(train_cfg(amp="bf16", device="gpu"))
    assert not plain.amp and not plain.gradient_merge


@pytest.mark.parametrize("kwargs, message", [
    (dict(amp="fp16"), "--amp \\(float16\\) training needs --device gpu"),
    (dict(use_pure_fp16=True), "--use-pure-fp16 needs --amp with --amp-dtype float16"),
    (dict(amp="bf16", device="gpu", use_dynamic_loss_scaling=True), "bfloat16 needs no loss scaling: drop --use-dynamic-loss-scaling"),
    (dict(gradient_merge_steps=0), "--gradient-merge-steps must be an integer >= 1"),
    (dict(attention_impl="xformers"), "attention_impl must be None or one of"),
    (dict(warmup_steps=20), r"warmup_steps \(20\) must not exceed total_steps \(8\)"),
    (dict(optimizer="Adagrad"), "optimizer 'Adagrad' is not one of"),
    (dict(amp="fp32"), "amp must be one of"),
])
def test_train_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_cfg(**kwargs)


# ---------------------------------------------------------------- fleet, attention choice
def test_fleet_single_cpu_process_builds_and_steps(fleet_initialised):
    bundle = P.build_pretraining(TINY, train_cfg(use_fleet=True, warmup_steps=0))
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        before = param(scope, "bert.pooler.dense.weight")
        (loss,) = exe.run(bundle.main_program, feed=pretraining_batch(),
                          fetch_list=[bundle.fetches["loss"]])
        assert np.isfinite(loss) and not np.array_equal(before, param(scope, "bert.pooler.dense.weight"))


def test_fuse_mha_on_cpu_builds_plain_attention(caplog):
    with caplog.at_level(logging.INFO, logger="modeling"):
        bundle = P.build_pretraining(TINY, train_cfg(fuse_mha=True))
    assert bundle.attention_impl == "plain" and "softmax" in op_types(bundle.main_program)
    assert "fused attention kernels are GPU-only" in caplog.text


# ---------------------------------------------------------------- SQuAD and bf16 inference
def test_squad_training_bundle():
    cfg = train_cfg(optimizer="AdamW", learning_rate=5e-3, total_steps=6, warmup_steps=0)
    bundle = P.build_squad(TINY, cfg)
    assert bundle.feed_names == tuple(s.name for s in P.FEED_SPECS["squad"])
    assert bundle.eval_feed_names == ("input_ids", "token_type_ids", "attention_mask")
    assert {"loss", "lr", "start_logits", "end_logits"} <= set(bundle.fetches)
    assert "adamw" in op_types(bundle.main_program)
    assert not op_types(bundle.eval_program) & (OPTIMIZER_OPS | {"softmax_with_cross_entropy"})
    feed = squad_batch()
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(bundle.startup_program)
        losses = []
        for _ in range(cfg.total_steps):
            (loss,) = exe.run(bundle.main_program, feed=feed, fetch_list=[bundle.fetches["loss"]])
            losses.append(float(loss))
            bundle.lr_scheduler.step()
        start, end = exe.run(bundle.eval_program, feed={k: feed[k] for k in bundle.eval_feed_names},
                             fetch_list=[bundle.eval_fetches["start_logits"],
                                         bundle.eval_fetches["end_logits"]])
    assert start.shape == end.shape == (3, 16)
    assert losses[-1] < losses[0]


def test_squad_predict_only_bundle():
    bundle = P.build_squad(TINY, train_cfg(), is_training=False)
    assert bundle.optimizer is None and bundle.lr_scheduler is None and bundle.build_strategy is None
    assert bundle.main_program is bundle.eval_program
    assert set(bundle.fetches) == {"start_logits", "end_logits"}
    assert not any(t.endswith("_grad") for t in op_types(bundle.main_program))


def test_bf16_inference_matches_fp32_on_cpu():
    if not paddle.base.core.supports_bfloat16():
        pytest.skip("this CPU has no bf16 support")
    bundle = P.build_squad(TINY, train_cfg(), is_training=False)
    ops_before = [op.type for op in bundle.eval_program.global_block().ops]
    bf16 = P.to_bf16_inference(bundle.eval_program)
    assert [op.type for op in bundle.eval_program.global_block().ops] == ops_before  # not modified
    assert matmul_dtypes(bf16) == {paddle.bfloat16}
    norms = [op for op in bf16.global_block().ops if op.type == "layer_norm"]
    assert {bf16.global_block().var(op.input("X")[0]).dtype for op in norms} == {paddle.float32}
    feed = {k: v for k, v in squad_batch().items() if k in bundle.eval_feed_names}
    fetch = [v.name for v in bundle.eval_fetches.values()]
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(bundle.startup_program)
        ref = exe.run(bundle.eval_program, feed=feed, fetch_list=fetch)
        low = exe.run(bf16, feed=feed, fetch_list=fetch)
    for a, b in zip(ref, low):
        scale = np.abs(a).max()
        assert np.abs(a - b.astype(np.float32)).max() < 0.05 * scale  # bf16 keeps ~3 digits
        assert not np.array_equal(a, b)  # it really ran in bf16


def test_pure_fp16_master_weights_hold_the_loaded_values_not_the_initializer(gpu_op_support):
    from utils.amp_state import MASTER_SUFFIX, init_pure_fp16
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", use_pure_fp16=True, device="gpu"))
    place = paddle.CPUPlace()
    scope = paddle.static.Scope()
    exe = paddle.static.Executor(place)
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        name = "bert.encoder.layer.0.attention.self.query.weight"
        loaded = np.full(param(scope, name).shape, 0.25, "float32")  # as load_pretrained would set it
        scope.find_var(name).get_tensor().set(loaded, place)
        assert init_pure_fp16(bundle, place, scope) > 10
        assert param(scope, name).dtype == np.float16
        np.testing.assert_array_equal(param(scope, name), loaded.astype(np.float16))
        np.testing.assert_array_equal(param(scope, name + MASTER_SUFFIX), loaded)
