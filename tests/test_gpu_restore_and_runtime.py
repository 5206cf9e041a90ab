"""Issue 22, items 2-4: restore keeps each tensor's place, O2 sums the global norm in fp32, Hopper with a
CUDA 11 Paddle is refused at start-up.

No GPU can run here. Item 2 is shown with an executor whose place is not the tensors' (a stand-in for a
GPU executor over CPU-resident counters) and a stand-in tensor recording the place it is written to;
item 3 on the built O2 program's ops (`gpu_op_support`) and on a CPU run of the clip itself; item 4 by
injecting the GPU's compute capability and the build's CUDA version.
"""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from test_checkpoint import _batch, _build, _train
from test_program import TINY, all_ops, fleet_initialised, gpu_op_support, train_cfg  # noqa: F401 (fixtures)
from utils.checkpoint import CheckpointManager, Progress, assign_to_scope, tensor_place

pytestmark = pytest.mark.usefixtures("static_graph")

# What a GPU executor's place would be; any object that is not the tensors' place shows the difference.
GPU_EXECUTOR_PLACE = "CUDAPlace(0) of a GPU executor"


# ---------------------------------------------------------------- item 2: restore keeps each tensor's place
class CpuResidentTensor:
    """A scope tensor living on the CPU (as Paddle keeps the gradient-merge counter and LAMB's beta powers
    under a GPU executor) that records the place every `set` writes it to."""

    def __init__(self, value):
        self.value, self.places = np.asarray(value), []

    def _is_initialized(self):
        return True

    def _place(self):
        place = paddle.base.core.Place()
        place.set_place(paddle.CPUPlace())
        return place

    def __array__(self, dtype=None):
        return self.value if dtype is None else self.value.astype(dtype)

    def set(self, value, place):
        self.value = np.asarray(value)
        self.places.append(place)


def test_assign_to_scope_writes_each_tensor_to_the_place_it_already_has(monkeypatch):
    import utils.checkpoint as checkpoint
    tensors = {"lamb_beta1_pow": CpuResidentTensor(np.float32([0.9])),
               "gradient_merge_step": CpuResidentTensor(np.int32([3]))}
    monkeypatch.setattr(checkpoint, "_scope_tensor", tensors.get)
    assign_to_scope(SimpleNamespace(place=GPU_EXECUTOR_PLACE),
                    {"lamb_beta1_pow": np.float32([0.81]), "gradient_merge_step": np.int32([1])}, "ckpt")
    for tensor in tensors.values():
        assert len(tensor.places) == 1 and isinstance(tensor.places[0], paddle.CPUPlace)
    assert tensors["lamb_beta1_pow"].value == pytest.approx([0.81])


def test_a_tensor_without_a_place_yet_goes_to_the_executors_place():
    assert tensor_place(paddle.base.core.LoDTensor(), GPU_EXECUTOR_PLACE) == GPU_EXECUTOR_PLACE


def test_restore_under_another_executor_place_keeps_every_tensor_where_it_was(tmp_path):
    """A real save/restore round trip (LAMB + gradient merge) with an executor whose place differs from the
    tensors': every persistable comes back with its saved value and stays on the CPU."""
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        prog = _build(exe, optimizer="lamb", k_steps=2)
        _train(exe, prog, range(4))
        manager = CheckpointManager(str(tmp_path), keep_last=2)
        progress = Progress(phase=1, global_step=2, epoch=0, loader_state={}, lr_state=prog.sched.state_dict(),
                            seeds={}, config_fingerprint="f", world_size=1, global_batch_size=8)
        manager.save(exe, prog.main, progress)
        names = [v.name for v in prog.main.list_vars() if v.persistable and v.name not in ("feed", "fetch")]
        saved = {n: np.array(paddle.static.global_scope().find_var(n).get_tensor()) for n in names}
    with paddle.static.scope_guard(paddle.static.Scope()):
        prog = _build(exe, optimizer="lamb", k_steps=2, seed=5)
        manager.restore(SimpleNamespace(place=GPU_EXECUTOR_PLACE), prog.main)
        scope = paddle.static.global_scope()
        assert any("beta1_pow" in n for n in names) and any("gradient_merge" in n for n in names)
        for name in names:
            tensor = scope.find_var(name).get_tensor()
            np.testing.assert_array_equal(np.array(tensor), saved[name], err_msg=name)
            assert tensor._place().is_cpu_place(), name
        exe.run(prog.main, feed=_batch(4), fetch_list=[prog.loss])  # and the program still runs


# ---------------------------------------------------------------- item 3: O2 sums the global norm in fp32
def clip_ops(program):
    return [op for op in all_ops(program) if "gradient_clip" in (op.attr("op_namescope") or "")]


def dtype_of(program, name):
    return program.global_block()._var_recursive(name).dtype


@pytest.mark.parametrize("fleet", [False, True])
def test_o2_squares_every_gradient_in_fp32(gpu_op_support, fleet_initialised, fleet):
    import program as P
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=True, use_fleet=fleet))
    program, ops = bundle.main_program, clip_ops(bundle.main_program)
    squares = [op for op in ops if op.type == "squared_l2_norm"]
    params = program.all_parameters()
    assert len(squares) == len(params)
    assert {dtype_of(program, n) for op in squares for n in op.input("X") + op.output("Out")} == {paddle.float32}
    # Each fp16 gradient is cast to fp32 before it is squared (the model itself stays fp16).
    fp16_grads = {p.name + "@GRAD" for p in params if p.dtype == paddle.float16}
    assert len(fp16_grads) > len(params) // 2
    cast_from = {op.output("Out")[0]: op.input("X")[0] for op in ops if op.type == "cast"}
    assert {cast_from[op.input("X")[0]] for op in squares if op.input("X")[0] in cast_from} == fp16_grads
    norm = [op for op in ops if op.type == "sqrt"]
    assert len(norm) == 1 and dtype_of(program, norm[0].input("X")[0]) == paddle.float32
    assert not paddle.nn.clip._clip_by_global_norm_using_mp_type()  # Paddle's switch is back off


def test_o1_clip_is_paddles_own(gpu_op_support):
    import program as P
    bundle = P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu"))
    ops = clip_ops(bundle.main_program)
    assert "cast" not in {op.type for op in ops}  # fp32 gradients: nothing to cast
    assert {dtype_of(bundle.main_program, n) for op in ops if op.type == "squared_l2_norm"
            for n in op.input("X")} == {paddle.float32}


def test_o2_clip_of_a_global_norm_above_256_is_finite():
    """fp16 gradients of global norm 600 (squares 4 x 90000, above fp16's 65504): the norm and the
    clipped gradients are finite, computed on the CPU (which has the fp32 kernels this clip uses)."""
    from optimizer import build_optimizer
    opt = build_optimizer("Lamb", 1e-3, weight_decay=0.01, beta1=0.9, beta2=0.999, epsilon=1e-6,
                          grad_clip_norm=1.0, multi_precision=True)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        param = paddle.static.create_parameter([4], "float16", name="w")
        grad = paddle.static.data("w@GRAD", [4], "float16")
        (_, clipped), = opt._grad_clip([(param, grad)])
        norm = [op for op in main.global_block().ops if op.type == "sqrt"][0].output("Out")[0]
    exe = paddle.static.Executor(paddle.CPUPlace())
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(startup)
        got_norm, got = exe.run(main, feed={"w@GRAD": np.full(4, 300, np.float16)}, fetch_list=[norm, clipped])
    assert got_norm == pytest.approx([600.0])  # sqrt(4 * 300^2)
    assert got.dtype == np.float16 and got.tolist() == [0.5] * 4  # 300 * (1.0 / 600)


# ---------------------------------------------------------------- item 4: Hopper with a CUDA 11 Paddle
H100 = ("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.mark.parametrize("name, capability, build_cuda, refused", [
    (*H100, "11.8", True),                       # the PyPI paddlepaddle-gpu==2.6.2 wheel
    ("NVIDIA H200", (9, 0), "11.2", True),
    (*H100, "12.0", False),                      # the Dockerfile's image / NGC
    ("NVIDIA A100-SXM4-80GB", (8, 0), "11.8", False),
    (*H100, "False", False),                     # unreadable: nothing to say
])
def test_gpu_build_rule(name, capability, build_cuda, refused):
    from utils.runtime import GpuInfo
    problem = GpuInfo(name, capability, build_cuda).build_problem()
    assert (problem is not None) == refused
    if refused:
        assert name in problem and "compute capability 9.0" in problem and f"CUDA {build_cuda}" in problem
        assert "sm_90" in problem and "Dockerfile" in problem and "--device cpu" in problem


@pytest.mark.parametrize("requested", ["gpu", "auto"])
def test_hopper_with_a_cuda11_build_is_refused_at_start_up_in_one_line(monkeypatch, requested):
    from utils import runtime
    monkeypatch.setattr(runtime, "gpu_available", lambda: True)
    monkeypatch.setattr(runtime.GpuInfo, "query", classmethod(lambda cls: cls(*H100, "11.8")))
    with pytest.raises(ValueError) as err:
        runtime.resolve_device(requested)
    message = str(err.value)
    assert message.startswith(f"--device {requested}: NVIDIA H100 80GB HBM3 (compute capability 9.0)")
    assert "\n" not in message and "bash scripts/docker/build.sh" in message


def test_hopper_with_a_cuda12_build_runs_on_the_gpu(monkeypatch, caplog):
    from utils import runtime
    monkeypatch.setattr(runtime, "gpu_available", lambda: True)
    monkeypatch.setattr(runtime.GpuInfo, "query", classmethod(lambda cls: cls(*H100, "12.0")))
    monkeypatch.setattr(runtime, "_device_logged", False)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 8)
    with caplog.at_level("INFO", logger="utils.runtime"):
        assert runtime.resolve_device("auto") == "gpu"
    assert "device: gpu (8 visible; NVIDIA H100 80GB HBM3, compute capability 9.0; Paddle built with CUDA 12.0)" \
        in caplog.text
