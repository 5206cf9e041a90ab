"""Pure fp16 (O2) checkpoints, run on CPU (issue 15 item 1): resume and the phase 1 -> phase 2 hand-off.

An O2 checkpoint holds fp16 parameters and their fp32 master weights; after the startup program the scope
holds fp32 parameters. Resume must therefore run `amp_init` before restoring (the order
`tasks.pretraining` uses), and `load_pretrained` must take the fp32 masters for an fp32 program.
The O2 program is built as for a GPU (`gpu_op_support`) and run on the CPU wheel.
"""
import numpy as np
import paddle
import pytest

import program as P
from test_program import TINY, gpu_op_support, pretraining_batch, train_cfg  # noqa: F401 (fixture)
from utils.amp_state import MASTER_SUFFIX, init_pure_fp16
from utils.checkpoint import CheckpointManager, Progress
from utils.weights import load_pretrained

pytestmark = pytest.mark.usefixtures("static_graph")
PARAM = "bert.encoder.layer.0.attention.self.query.weight"


def _o2_bundle():
    with paddle.utils.unique_name.guard():
        return P.build_pretraining(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=True))


def _progress(step):
    return Progress(phase=1, global_step=step, epoch=0, loader_state={}, lr_state={"last_epoch": step}, seeds={},
                    config_fingerprint="f", world_size=1, global_batch_size=4)


def _state(scope, bundle):
    return {v.name: np.array(scope.find_var(v.name).get_tensor()) for v in bundle.main_program.list_vars()
            if v.persistable and scope.find_var(v.name) is not None
            and scope.find_var(v.name).get_tensor()._is_initialized()}


def _trained_o2_state(exe, bundle, place):
    """Startup + amp_init, then every float persistable set to new values, as training would leave it
    (fp16 kernels do not run on the CPU wheel, so the update itself is simulated)."""
    exe.run(bundle.startup_program)
    init_pure_fp16(bundle, place)
    scope, rng = paddle.static.global_scope(), np.random.default_rng(0)
    for name, value in _state(scope, bundle).items():
        if np.issubdtype(value.dtype, np.floating):
            scope.find_var(name).get_tensor().set(rng.standard_normal(value.shape).astype(value.dtype), place)
    return _state(scope, bundle)


class _Loader:
    def load_state_dict(self, state):
        self.state = state


def _session(bundle, exe, place, root):
    """A PretrainSession reduced to what `_initialise` reads (building a real one needs a GPU build)."""
    from types import SimpleNamespace
    from tasks.pretraining import PretrainSession
    session = object.__new__(PretrainSession)
    session.cfg = SimpleNamespace(phase=1, run=SimpleNamespace(benchmark=False),
                                  checkpointing=SimpleNamespace(from_phase1_final_params=None,
                                                                from_pretrained_params=None))
    session.rt = SimpleNamespace(exe=exe, place=place)
    session.bundle, session.train_cfg = bundle, SimpleNamespace(use_pure_fp16=True)
    session.manager = CheckpointManager(root)
    session.source = (session.manager, "auto")
    session.fingerprint, session.world, session.global_batch, session.loader = "f", 1, 4, _Loader()
    session.settings, session.vocab_sha256 = {}, None
    return session


def test_o2_checkpoint_resumes_exactly_with_amp_init_first(gpu_op_support, tmp_path):
    place = paddle.CPUPlace()
    exe = paddle.static.Executor(place)
    bundle = _o2_bundle()
    with paddle.static.scope_guard(paddle.static.Scope()):
        expected = _trained_o2_state(exe, bundle, place)
        CheckpointManager(tmp_path).save(exe, bundle.main_program, _progress(2))
    assert expected[PARAM].dtype == np.float16 and expected[PARAM + MASTER_SUFFIX].dtype == np.float32
    with paddle.static.scope_guard(paddle.static.Scope()):  # the old order: restore into fp32 parameters
        exe.run(bundle.startup_program)
        with pytest.raises(ValueError, match="program has float32.* has float16"):
            CheckpointManager(tmp_path).restore(exe, bundle.main_program)
    with paddle.static.scope_guard(paddle.static.Scope()):
        restored = _session(bundle, exe, place, tmp_path)._initialise()
        resumed = _state(paddle.static.global_scope(), bundle)
    assert restored.global_step == 2
    for name, value in expected.items():
        assert resumed[name].dtype == value.dtype and np.array_equal(resumed[name], value), name


def test_o2_final_params_start_an_fp32_phase_from_the_master_weights(gpu_op_support, tmp_path):
    place = paddle.CPUPlace()
    exe = paddle.static.Executor(place)
    bundle = _o2_bundle()
    with paddle.static.scope_guard(paddle.static.Scope()):
        o2 = _trained_o2_state(exe, bundle, place)
        path = CheckpointManager(tmp_path).save(exe, bundle.main_program, _progress(3))
    with paddle.utils.unique_name.guard():
        fp32 = P.build_pretraining(TINY, train_cfg())
    with paddle.static.scope_guard(paddle.static.Scope()):
        exe.run(fp32.startup_program)
        load_pretrained(exe, fp32.main_program, path)
        loaded = np.array(paddle.static.global_scope().find_var(PARAM).get_tensor())
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, o2[PARAM + MASTER_SUFFIX])  # not the rounded fp16 copy
    assert not np.array_equal(loaded, o2[PARAM].astype(np.float32))
