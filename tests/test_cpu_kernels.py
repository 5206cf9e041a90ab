"""The fused CPU LAMB kernel (cpu_kernels/) against Paddle's own `lamb` op, its program rewrite, its build
cache and its fall-back.

Second implementation: Paddle's `lamb` op run on the same tensors in the same kind of program. The kernel
promises Paddle's arithmetic: moments and beta powers bit-identical, parameters equal to within a few ulp
(only the order of the two norm sums differs), and a result that does not depend on the thread count.
"""
import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import program as P
import program_rewrites
from tiny_training import TINY, train_tiny
from cpu_kernels import build as kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("static_graph")


@pytest.fixture(scope="module")
def kernel():
    status = kernels.lamb_kernel()
    if status.op_type is None:
        pytest.skip(f"the CPU kernel cannot be built here: {status.reason}")
    return status


def lamb_update(kernel_status, *, size, weight_decay, always_adapt=False, skip=False, steps=1, seed=0):
    """Run `steps` LAMB updates of one [size] parameter whose gradient is fed; returns its state arrays.

    kernel_status None: Paddle's lamb op; else the program is rewritten to the kernel.
    """
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        w = paddle.static.create_parameter([size], "float32", name="w",
                                           default_initializer=paddle.nn.initializer.Assign(
                                               np.random.default_rng(seed).normal(0, 0.02, size).astype("float32")))
        x = paddle.static.data("x", [size], "float32")
        loss = paddle.sum(w * x)  # d loss / d w = x: the fed array is the gradient
        opt = paddle.optimizer.Lamb(learning_rate=1e-3, lamb_weight_decay=weight_decay, always_adapt=always_adapt)
        opt.minimize(loss)
        if skip:  # a true SkipUpdate input, as program_rewrites.skip_nonfinite_updates wires it
            block = main.global_block()
            flag = block.create_var(name="skip_flag", shape=[1], dtype="bool")
            block._insert_op(0, type="fill_constant", outputs={"Out": [flag]},
                             attrs={"shape": [1], "dtype": flag.dtype, "value": 1.0})
            for op in block.ops:
                if op.type == "lamb":
                    op.desc.set_input("SkipUpdate", [flag.name])
            main._sync_with_cpp()
    if kernel_status is not None:
        assert program_rewrites.use_cpu_lamb_kernel(main, kernel_status) == 1
        assert [op.type for op in main.global_block().ops].count("lamb") == 0
    exe, scope = paddle.static.Executor(paddle.CPUPlace()), paddle.static.Scope()
    exe.run(startup, scope=scope)
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        exe.run(main, feed={"x": (rng.standard_normal(size) * 1e-2).astype("float32")}, scope=scope)
    names = [v.name for v in main.list_vars() if v.persistable and "learning_rate" not in v.name]
    return {name: np.array(scope.find_var(name).get_tensor()) for name in names}


@pytest.mark.parametrize("size, weight_decay, always_adapt", [
    (1, 0.01, False),            # one element
    (200_003, 0.01, False),      # several 64 Ki chunks and a ragged tail
    (70_000, 0.0, False),        # no decay, no adaptation: ratio 1, as Paddle skips the norms
    (70_000, 0.0, True),         # no decay but always_adapt: the trust ratio is applied
])
def test_one_update_equals_paddles_lamb(kernel, size, weight_decay, always_adapt):
    ours = lamb_update(kernel, size=size, weight_decay=weight_decay, always_adapt=always_adapt)
    paddles = lamb_update(None, size=size, weight_decay=weight_decay, always_adapt=always_adapt)
    assert ours.keys() == paddles.keys() and len(ours) == 5  # w, 2 moments, 2 beta powers: same names
    for name in ours:
        if name == "w":
            np.testing.assert_allclose(ours[name], paddles[name], rtol=2e-6, atol=1e-9)
            assert not np.array_equal(ours[name], lamb_update(kernel, size=size, weight_decay=weight_decay,
                                                              always_adapt=always_adapt, steps=0)["w"])
        else:
            np.testing.assert_array_equal(ours[name], paddles[name], err_msg=name)


def test_three_updates_stay_with_paddles_lamb(kernel):
    ours = lamb_update(kernel, size=100_000, weight_decay=0.01, steps=3)
    paddles = lamb_update(None, size=100_000, weight_decay=0.01, steps=3)
    np.testing.assert_allclose(ours["w"], paddles["w"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ours["w_beta1_pow_acc_0"], [0.9 ** 4], rtol=1e-6)  # starts at beta1, x3


def test_skip_update_leaves_every_state_untouched(kernel):
    before = lamb_update(kernel, size=1000, weight_decay=0.01, steps=0)
    after = lamb_update(kernel, size=1000, weight_decay=0.01, skip=True, steps=2)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_result_does_not_depend_on_the_thread_count(kernel, tmp_path):
    """Resumes must stay bit-exact when a run restarts with another OMP_NUM_THREADS."""
    script = (
        "import zlib, sys, json, hashlib\n"
        f"sys.path[:0] = [{REPO!r}, {os.path.join(REPO, 'tests')!r}]\n"
        "import utils.preflight, paddle\n"
        "paddle.enable_static()\n"
        "from cpu_kernels.build import lamb_kernel\n"
        "import test_cpu_kernels as t\n"
        "out = t.lamb_update(lamb_kernel(), size=300_001, weight_decay=0.01, steps=2)\n"
        "print(json.dumps({k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in out.items()}))\n")
    digests = []
    for threads in ("1", "2"):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, OMP_NUM_THREADS=threads), timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        digests.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert digests[0] == digests[1]


def _train(cpu_lamb_kernel):
    run = train_tiny(cpu_lamb_kernel=cpu_lamb_kernel, cpu_dropout_kernel=False)
    return run.bundle, run.losses, run.state


def test_pretraining_program_runs_lamb_with_the_kernel_and_keeps_paddles_state(kernel):
    bundle, losses, state = _train(True)
    types = [op.type for block in bundle.main_program.blocks for op in block.ops]
    params = bundle.main_program.all_parameters()
    assert types.count(kernel.op_type) == len(params) and "lamb" not in types
    updates = [op for op in bundle.main_program.global_block().ops if op.type == kernel.op_type]
    assert all(op.input("SkipUpdate@OPTIONAL") for op in updates)  # the non-finite guard is carried over
    assert all(op.attr("op_role") == updates[0].attr("op_role") for op in updates)
    assert {round(op.attr("weight_decay"), 6) for op in updates} == {0.0, 0.01}  # biases, LayerNorm: 0
    stock_bundle, stock_losses, stock_state = _train(False)
    assert "lamb" in [op.type for op in stock_bundle.main_program.global_block().ops]
    assert state == stock_state  # a checkpoint of one loads into the other
    np.testing.assert_allclose(losses, stock_losses, rtol=1e-5)
    assert losses[-1] < losses[0]


def test_gpu_and_master_weight_programs_keep_paddles_op(kernel):
    gpu = P.build_pretraining(TINY, P.TrainConfig(optimizer="Lamb", total_steps=10, device="gpu"))
    assert "lamb" in [op.type for op in gpu.main_program.global_block().ops]
    assert program_rewrites.use_cpu_lamb_kernel(paddle.static.Program(), kernel) == 0  # nothing to swap


def test_disabled_or_unbuildable_kernel_falls_back_with_one_line(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=kernels.__name__)
    monkeypatch.setattr(kernels, "_STATUS", None)
    status = kernels.lamb_kernel({kernels.ENABLE_VAR: "0"})
    assert status.op_type is None and "BERT_PADDLE_CPU_KERNELS=0" in caplog.text

    def no_compiler(environ):
        raise RuntimeError("no C++ compiler found (c++, g++ or cc on PATH)")

    monkeypatch.setattr(kernels, "_STATUS", None)
    monkeypatch.setattr(kernels, "build_library", no_compiler)
    caplog.clear()
    status = kernels.lamb_kernel({})
    assert status.op_type is None and "no C++ compiler" in status.reason
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "Paddle's lamb op" in warnings[0].getMessage()
    cfg = P.TrainConfig(optimizer="Lamb", total_steps=10, device="cpu")
    with paddle.utils.unique_name.guard():
        bundle = P.build_pretraining(TINY, cfg)
    assert "lamb" in [op.type for op in bundle.main_program.global_block().ops]
    monkeypatch.setattr(kernels, "_STATUS", None)  # the module's real status is re-read by later tests


def test_cache_key_follows_source_paddle_and_cpu():
    base = kernels.cache_key("2.6.2+abc", "g++ 12", cpu="EPYC|avx2 fma")
    assert base == kernels.cache_key("2.6.2+abc", "g++ 12", cpu="EPYC|avx2 fma")
    assert len({base, kernels.cache_key("2.6.2+abd", "g++ 12", cpu="EPYC|avx2 fma"),
                kernels.cache_key("2.6.2+abc", "g++ 13", cpu="EPYC|avx2 fma"),
                kernels.cache_key("2.6.2+abc", "g++ 12", cpu="Xeon|avx2 avx512f fma")}) == 4
    assert kernels.cache_root({kernels.CACHE_VAR: "/x/k"}) == "/x/k"
    assert kernels.cache_root({"XDG_CACHE_HOME": "/c"}) == "/c/bert-paddle/kernels"


@pytest.fixture
def fake_compiler(monkeypatch, tmp_path):
    """build_library with `_compile` replaced by one that writes a distinct fake library per call (no C++
    compiler needed); returns the list of build directories it was called with."""
    calls = []

    def compile_(out_dir):
        calls.append(out_dir)
        path = os.path.join(out_dir, kernels.LIBRARY, f"{kernels.LIBRARY}.so")
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"\x7fELF fake library, build %d" % len(calls))
        return path

    monkeypatch.setattr(kernels, "_compile", compile_)
    monkeypatch.setattr(kernels, "_compiler_version", lambda: "g++ (fake) 12")
    return calls


@pytest.mark.parametrize("damage", ["random bytes", "empty", "no recorded hash"])
def test_a_damaged_cached_library_is_rebuilt_with_one_warning(fake_compiler, tmp_path, caplog, damage):
    # Issue 20 item 19: a corrupt cached .so was loaded (and failed) in every later run, never rebuilt.
    env = {kernels.CACHE_VAR: str(tmp_path / "cache")}
    path, seconds = kernels.build_library(env)
    with open(path, "rb") as f:
        first = f.read()
    with open(path + ".sha256") as f:
        assert f.read() == hashlib.sha256(first).hexdigest() + "\n"
    assert kernels.build_library(env) == (path, 0.0) and len(fake_compiler) == 1  # verified: cached
    if damage == "no recorded hash":
        os.remove(path + ".sha256")
    else:
        with open(path, "wb") as f:
            f.write(os.urandom(4096) if damage == "random bytes" else b"")
    caplog.set_level(logging.INFO, logger=kernels.__name__)
    again, seconds = kernels.build_library(env)
    assert again == path and seconds > 0 and len(fake_compiler) == 2
    reason = ("has no recorded SHA-256" if damage == "no recorded hash" else
              "does not match the SHA-256 recorded when it was built (a damaged or replaced file)")
    assert [r.getMessage() for r in caplog.records] == [f"CPU kernel cache: {path} {reason}: rebuilding it"]
    with open(path, "rb") as f:
        rebuilt = f.read()
    assert rebuilt == b"\x7fELF fake library, build 2"
    with open(path + ".sha256") as f:
        assert f.read() == hashlib.sha256(rebuilt).hexdigest() + "\n"
    assert kernels.build_library(env) == (path, 0.0) and len(fake_compiler) == 2


def test_concurrent_first_builds_share_one_library(tmp_path):
    """Two processes that find no library (a multi-process run's first start) build it once, atomically."""
    env = dict(os.environ, **{kernels.CACHE_VAR: str(tmp_path / "cache")})
    procs = [subprocess.Popen([sys.executable, "-m", "cpu_kernels.build"], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    if any(p.returncode != 0 for p in procs) and "not built" in outs[0][0]:
        pytest.skip(f"the CPU kernel cannot be built here: {outs[0][0].strip()}")
    assert [p.returncode for p in procs] == [0, 0], outs
    libraries = sorted((tmp_path / "cache").rglob("*.so"))
    assert len(libraries) == 1 and [o[0].strip() for o in outs] == [str(libraries[0])] * 2
    logs = "".join(o[1] for o in outs)
    assert logs.count("built in") == 1 and logs.count("cached") == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("build-")]  # no leftovers
    # Issue 20 item 19: a library damaged in the cache is rebuilt and loads, instead of failing every run.
    libraries[0].write_bytes(os.urandom(4096))
    proc = subprocess.run([sys.executable, "-m", "cpu_kernels.build"], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip() == str(libraries[0]), proc.stderr
    assert "does not match the SHA-256 recorded when it was built" in proc.stderr and "built in" in proc.stderr
