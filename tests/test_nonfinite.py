"""Non-finite loss in fp32: the update is skipped inside the program, counted on the host, and a run that
keeps producing NaN stops with a clear error (program_rewrites.skip_nonfinite_updates, utils.nonfinite)."""
import numpy as np
import paddle
import pytest

import optimizer as optimizer_lib
import program_rewrites
from utils.nonfinite import NonFiniteGuard, TrainingDiverged


def _program(name, k_steps, guard, cpu_kernel=False):
    main, startup = paddle.static.Program(), paddle.static.Program()
    main.random_seed = startup.random_seed = 3
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 4], "float32")
        out = paddle.static.nn.fc(x, 3, weight_attr=paddle.ParamAttr(name="w"),
                                  bias_attr=paddle.ParamAttr(name="b"))
        loss = paddle.mean(out * out)
        opt = optimizer_lib.build_optimizer(name, 0.1, weight_decay=0.01, beta1=0.9, beta2=0.999,
                                            epsilon=1e-6)
        if k_steps > 1:
            opt = paddle.incubate.optimizer.GradientMergeOptimizer(opt, k_steps=k_steps)
        opt.minimize(loss)
        guarded = program_rewrites.skip_nonfinite_updates(main) if guard else 0
        if cpu_kernel:  # what a CPU training program does after the guard (program._minimize)
            from cpu_kernels.build import lamb_kernel
            if lamb_kernel().op_type is None:
                pytest.skip(f"the CPU LAMB kernel cannot be built here: {lamb_kernel().reason}")
            assert program_rewrites.use_cpu_lamb_kernel(main) == 2
    return main, startup, loss, guarded


def _persistables(main, scope):
    return {v.name: np.array(scope.find_var(v.name).get_tensor()) for v in main.list_vars()
            if v.persistable and scope.find_var(v.name) is not None
            and scope.find_var(v.name).get_tensor()._is_initialized()}


def _run(main, startup, loss, feeds):
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    states, losses = [], []
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        for feed in feeds:
            losses.append(float(exe.run(main, feed={"x": feed}, fetch_list=[loss])[0]))
            states.append(_persistables(main, scope))
    return states, losses


GOOD = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
BAD = GOOD.copy()
BAD[0, 1] = np.nan


@pytest.mark.parametrize("name, cpu_kernel", [("Lamb", False), ("AdamW", False), ("Lamb", True)])
@pytest.mark.parametrize("k_steps", [1, 2])
def test_a_nan_batch_leaves_parameters_and_moments_untouched(static_graph, name, cpu_kernel, k_steps):
    main, startup, loss, guarded = _program(name, k_steps, guard=True, cpu_kernel=cpu_kernel)
    assert guarded == 2  # w and b
    feeds = [GOOD] * k_steps + [BAD] * k_steps + [GOOD] * k_steps
    states, losses = _run(main, startup, loss, feeds)
    before, after_bad, after_good = states[k_steps - 1], states[2 * k_steps - 1], states[-1]
    assert np.isnan(losses[k_steps])
    for name_ in before:  # the whole update (parameters, moments, beta powers) was skipped
        assert np.array_equal(before[name_], after_bad[name_], equal_nan=False), name_
    assert not np.array_equal(after_good["w"], after_bad["w"]) and np.isfinite(after_good["w"]).all()


def test_without_the_guard_a_nan_batch_destroys_the_parameters(static_graph):
    """The baseline the guard exists for (Paddle's optimizers do not check by themselves)."""
    main, startup, loss, _ = _program("Lamb", 1, guard=False)
    states, _ = _run(main, startup, loss, [GOOD, BAD])
    assert np.isnan(states[-1]["w"]).all()


def test_the_guard_changes_nothing_on_finite_batches(static_graph):
    feeds = [GOOD, GOOD * 0.5, GOOD * 2.0]
    guarded = _run(*_program("Lamb", 1, guard=True)[:3], feeds)
    plain = _run(*_program("Lamb", 1, guard=False)[:3], feeds)
    assert guarded[1] == plain[1]
    for name in plain[0][-1]:
        assert np.array_equal(guarded[0][-1][name], plain[0][-1][name]), name


def test_programs_with_a_loss_scaler_are_left_alone(static_graph):
    from paddle.static.amp.amp_nn import check_finite_and_unscale
    main, startup, loss, _ = _program("Lamb", 1, guard=False)
    with paddle.static.program_guard(main, startup):
        check_finite_and_unscale([paddle.full([2], 1.0)], paddle.full([1], 1.0))  # what fp16 AMP adds
    assert program_rewrites.skip_nonfinite_updates(main) == 0
    assert not [op for op in main.global_block().ops if op.type == "lamb" and op.input("SkipUpdate")]


def test_guard_warns_about_new_skips_and_stops_at_the_consecutive_limit(caplog):
    import logging
    guard = NonFiniteGuard(3)
    with caplog.at_level(logging.WARNING, logger="utils.nonfinite"):
        guard.observe(10, total=0, consecutive=0)
        assert caplog.text == ""
        guard.observe(20, total=2, consecutive=0)  # two skipped, recovered since
        assert "step 20: 2 update(s) skipped" in caplog.text and "0 in a row" in caplog.text
        caplog.clear()
        guard.observe(25, total=2, consecutive=0)  # nothing new: no warning
        assert caplog.text == ""
        with pytest.raises(TrainingDiverged, match="3 consecutive updates up to step 30"):
            guard.observe(30, total=5, consecutive=3)
    with pytest.raises(ValueError, match="--max-nonfinite-steps"):
        NonFiniteGuard(0)


def _counted(name, k_steps, feeds, cpu_kernel=False):
    """Run the guarded program with skipped-update counters; returns (total, consecutive) after each update."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 4], "float32")
        loss = paddle.mean(paddle.static.nn.fc(x, 3) ** 2)
        opt = optimizer_lib.build_optimizer(name, 0.1, weight_decay=0.0, beta1=0.9, beta2=0.999, epsilon=1e-6)
        if k_steps > 1:
            opt = paddle.incubate.optimizer.GradientMergeOptimizer(opt, k_steps=k_steps)
        opt.minimize(loss)
        program_rewrites.skip_nonfinite_updates(main)
        if cpu_kernel:
            assert program_rewrites.use_cpu_lamb_kernel(main) == 2
        names = program_rewrites.count_nonfinite_updates(main, startup)
    exe, scope, seen = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope(), []
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        for feed in feeds:
            for _ in range(k_steps):
                exe.run(main, feed={"x": feed}, fetch_list=[])
            seen.append(tuple(int(np.array(scope.find_var(n).get_tensor())[0]) for n in names))
    return seen


@pytest.mark.parametrize("k_steps", [1, 2])
@pytest.mark.parametrize("name, cpu_kernel", [("AdamW", False), ("Lamb", True)])
def test_skipped_updates_are_counted_on_the_device(static_graph, k_steps, name, cpu_kernel):
    if cpu_kernel:
        from cpu_kernels.build import lamb_kernel
        if lamb_kernel().op_type is None:
            pytest.skip(f"the CPU LAMB kernel cannot be built here: {lamb_kernel().reason}")
    seen = _counted(name, k_steps, [GOOD, BAD, BAD, GOOD, BAD], cpu_kernel=cpu_kernel)
    assert seen == [(0, 0), (1, 1), (2, 2), (2, 0), (3, 1)]


def _types(main):
    return [op.type for block in main.blocks for op in block.ops]


@pytest.mark.parametrize("k_steps", [1, 2])
def test_with_clipping_the_flag_is_the_global_norm_and_catches_inf_too(static_graph, k_steps):
    """Clip by global norm already sums every gradient's square: its norm is NaN/inf exactly when a
    gradient is, so no extra pass over the gradients is added (check_finite_and_unscale is absent)."""
    main, startup, loss, guarded = _program("Lamb", k_steps, guard=True)
    types = _types(main)
    assert guarded == 2 and "isfinite_v2" in types and "check_finite_and_unscale" not in types
    inf = GOOD.copy()
    inf[1, 2] = np.float32(3e38)  # the square overflows: an inf gradient, not a NaN
    states, losses = _run(main, startup, loss, [GOOD] * k_steps + [inf] * k_steps + [GOOD] * k_steps)
    before, after_bad = states[k_steps - 1], states[2 * k_steps - 1]
    for name_ in before:
        assert np.array_equal(before[name_], after_bad[name_]), name_
    assert np.isfinite(states[-1]["w"]).all() and not np.array_equal(states[-1]["w"], after_bad["w"])


def test_without_clipping_the_gradients_are_checked_one_by_one(static_graph):
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 4], "float32")
        loss = paddle.mean(paddle.static.nn.fc(x, 3) ** 2)
        optimizer_lib.build_optimizer("AdamW", 0.1, weight_decay=0.01, beta1=0.9, beta2=0.999, epsilon=1e-6,
                                      grad_clip_norm=None).minimize(loss)
        assert program_rewrites.skip_nonfinite_updates(main) == 2
    types = _types(main)
    assert "check_finite_and_unscale" in types and "isfinite_v2" not in types
    states, losses = _run(main, startup, loss, [GOOD, BAD])
    for name_ in states[0]:
        assert np.array_equal(states[0][name_], states[1][name_]), name_
