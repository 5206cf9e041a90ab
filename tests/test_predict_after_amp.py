"""Prediction after any training precision (issue 22, defect 1).

A GPU run fine-tuned under `--amp` has an fp16 eval program (and fused attention under `--fuse-mha`), which
the verifying predictor of the export could not run: run_squad / run_glue trained, saved, then stopped before
F1 / accuracy. Reproduced here on the CPU wheel with the AMP lists patched to believe fp16 kernels exist (the
`gpu_op_support` fixture): the SQuAD program is built for a GPU run under O1 and O2, its parameters are put in
the scope as training leaves them, and the session's predictor must export and verify a fresh fp32 program
holding the fp32 values (O2's master weights), whose outputs equal an independent fp32 program's; the saved
fine-tuned parameters are those fp32 values too (not O2's rounded fp16 copies).
"""
import pickle
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

import program as P
from data.features.squad import FeatureParams
from tasks import finetune
from tasks.squad import SquadAdapter
from test_program import TINY, gpu_op_support, squad_batch, train_cfg  # noqa: F401 (fixture)
from utils.amp_state import init_pure_fp16
from utils.weights import save_params

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(autouse=True)
def static_mode():
    paddle.enable_static()
    yield
    paddle.disable_static()


def _session(tmp_path, device="cpu"):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + [f"w{i}" for i in range(TINY.vocab_size - len(SPECIAL))]) + "\n")
    cfg = SimpleNamespace(
        task="SQuAD", model=SimpleNamespace(config=TINY, name="custom", init_path=str(tmp_path), export_dir=None),
        text=SimpleNamespace(vocab_file=str(vocab), do_lower_case=True, max_seq_length=16),
        settings=SimpleNamespace(features=FeatureParams(16, 8, 4), infer_precision="fp32"),
        run=SimpleNamespace(seed=1), schedule=SimpleNamespace(predict_batch_size=4))
    place = paddle.CPUPlace()
    rt = SimpleNamespace(exe=paddle.static.Executor(place), place=place, device=device,
                         dist=SimpleNamespace(rank=0, world_size=1, is_main=True))
    return finetune.FinetuneSession(cfg, SquadAdapter(cfg), rt)


def _reference_logits(values, feed):
    """Start/end logits of a plain fp32 SQuAD program holding `values`, in a scope of its own."""
    with paddle.static.scope_guard(paddle.static.Scope()):
        bundle = P.build_squad(TINY, P.TrainConfig(), is_training=False)
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(bundle.startup_program)
        scope = paddle.static.global_scope()
        for name, value in values.items():
            scope.find_var(name).get_tensor().set(value, paddle.CPUPlace())
        names = [bundle.eval_fetches[k].name for k in ("start_logits", "end_logits")]
        return exe.run(bundle.eval_program, feed=feed, fetch_list=names)


@pytest.mark.parametrize("pure", [False, True], ids=["O1", "O2"])
def test_prediction_after_fp16_training_exports_a_fp32_program(gpu_op_support, tmp_path, pure):  # noqa: F811
    session = _session(tmp_path)
    bundle = P.build_squad(TINY, train_cfg(amp="fp16", device="gpu", use_pure_fp16=pure, optimizer="AdamW"))
    assert any(op.type == "cast" for op in bundle.eval_program.global_block().ops)  # an fp16 eval program
    with paddle.static.scope_guard(paddle.static.Scope()):
        session.rt.exe.run(bundle.startup_program)
        scope = paddle.static.global_scope()
        trained = {p.name: np.array(scope.find_var(p.name).get_tensor()) for p in bundle.main_program.all_parameters()}
        if pure:  # parameters become fp16, their fp32 masters keep the exact values
            init_pure_fp16(bundle, session.rt.place)
            assert np.array(scope.find_var("qa_outputs.weight").get_tensor()).dtype == np.float16
        predictor = session.predictor(bundle)
        saved = pickle.loads(open(save_params(bundle.main_program, str(tmp_path / "model"), "m", TINY), "rb").read())
        # O2 keeps fp32 masters of what the optimizer updates (all but SQuAD's unused pooler, cast to fp16 once)
        exact = {n for n in trained if scope.find_var(n + "_fp32_master_0") is not None
                 or np.array(scope.find_var(n).get_tensor()).dtype == np.float32}
    assert len(exact) >= len(trained) - 2 and all(saved[n].dtype == np.float32 for n in trained)
    assert all(np.array_equal(saved[n], trained[n]) for n in exact)
    feed = {k: v for k, v in squad_batch(seed=3).items() if k not in ("start_positions", "end_positions")}
    start, end = predictor.run(feed)
    want_start, want_end = _reference_logits(trained, feed)
    np.testing.assert_allclose(start, want_start, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(end, want_end, rtol=1e-5, atol=1e-5)


def test_the_verifying_predictor_runs_on_the_run_device(tmp_path, monkeypatch):
    """A GPU run is checked against a GPU predictor, not a CPU one (TF32 vs CPU at 1e-3 was the old test)."""
    from inference import verified_export

    seen = []
    real = verified_export.make_config

    def recording(*args, **kwargs):
        seen.append(kwargs.get("device", "cpu"))
        return real(*args, **dict(kwargs, device="cpu"))  # this machine runs it on the CPU all the same

    monkeypatch.setattr(verified_export, "make_config", recording)
    monkeypatch.setattr(verified_export, "load_predictor", lambda *a, **k: k["device"])
    session = _session(tmp_path, device="gpu")
    bundle = P.build_squad(TINY, train_cfg(), is_training=False)
    with paddle.static.scope_guard(paddle.static.Scope()):
        session.rt.exe.run(bundle.startup_program)
        session.serving_bundle = lambda: P.build_squad(TINY, P.TrainConfig(), is_training=False)  # CPU-built
        assert session.predictor(bundle) == "gpu"
    assert seen == ["gpu"]
