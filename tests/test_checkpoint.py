"""utils.checkpoint: exact resume, atomic saves, retention by disk scan, compatibility and pretrained init.

Uses a tiny static program (two fc layers with named parameters, Adam or LAMB, optional gradient merge)
on CPU; every test runs in its own scope so programs and tensors never leak between tests.
"""
import dataclasses
import json
import logging
import os
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from utils.checkpoint import (INIT_FROM_CKPT, SCHEMA_VERSION, CheckpointManager, Progress, check_compatible,
                              fingerprint_config, phase_dir)
from utils.hf_import import NEWLY_INITIALIZED
from utils.weights import load_pretrained


@pytest.fixture(scope="module", autouse=True)
def static_mode():
    paddle.enable_static()
    yield
    paddle.disable_static()


@pytest.fixture(autouse=True)
def fresh_scope():
    with paddle.static.scope_guard(paddle.static.Scope()):
        yield


@pytest.fixture
def exe():
    return paddle.static.Executor(paddle.CPUPlace())


def _fc(x, size, name, act=None):
    return paddle.static.nn.fc(x, size, activation=act, weight_attr=paddle.ParamAttr(name=f"{name}.w"),
                               bias_attr=paddle.ParamAttr(name=f"{name}.b"))


def _build(exe, optimizer="adam", hidden=8, k_steps=1, head=None, seed=1):
    """Build and initialise the tiny program; returns its parts. `head` adds an extra named fc layer."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    main.random_seed = startup.random_seed = seed
    with paddle.utils.unique_name.guard(), paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [None, 4], "float32")
        y = paddle.static.data("y", [None, 1], "float32")
        out = _fc(_fc(x, hidden, "l1", act="relu"), 1, "l2")
        if head:
            out = out + paddle.mean(_fc(out, 2, head), axis=1, keepdim=True)
        loss = paddle.mean(paddle.square(out - y))
        # A warm-up schedule, so a resume that forgot the LR state would change the numbers.
        sched = paddle.optimizer.lr.LinearWarmup(0.05, 4, 0.0, 0.05)
        opt = (paddle.optimizer.Adam(sched) if optimizer == "adam" else paddle.optimizer.Lamb(sched))
        if k_steps > 1:
            opt = paddle.incubate.optimizer.GradientMergeOptimizer(opt, k_steps=k_steps)
        opt.minimize(loss)
    exe.run(startup)
    return SimpleNamespace(main=main, loss=loss, sched=sched)


def _batch(step):
    rng = np.random.default_rng(1000 + step)
    return {"x": rng.standard_normal((4, 4)).astype("float32"), "y": rng.standard_normal((4, 1)).astype("float32")}


def _train(exe, prog, steps):
    losses = []
    for step in steps:
        losses.append(exe.run(prog.main, feed=_batch(step), fetch_list=[prog.loss])[0])
        prog.sched.step()
    return losses


def _snapshot(prog):
    scope = paddle.static.global_scope()
    return {v.name: np.array(scope.find_var(v.name).get_tensor()) for v in prog.main.list_vars() if v.persistable
            and scope.find_var(v.name) is not None and scope.find_var(v.name).get_tensor()._is_initialized()}


def _progress(step, prog=None, **kw):
    fields = dict(phase=1, global_step=step, epoch=0, loader_state={"batches": step},
                  lr_state=prog.sched.state_dict() if prog else {}, seeds={"base": 7},
                  config_fingerprint="f" * 64, world_size=1, global_batch_size=4)
    fields.update(kw)
    return Progress(**fields)


# ----------------------------------------------------------------------------------------------------
# Exact resume


@pytest.mark.parametrize("optimizer,k_steps,before", [("adam", 1, 2), ("lamb", 2, 3)])
def test_round_trip_is_bit_identical(tmp_path, exe, optimizer, k_steps, before):
    # LAMB + gradient merge saves mid-accumulation (step 3 of k=2), so the merge buffers must come back.
    after = range(before, before + 2)
    prog = _build(exe, optimizer, k_steps=k_steps, seed=1)
    _train(exe, prog, range(before))
    manager = CheckpointManager(tmp_path)
    saved = _progress(before, prog)
    manager.save(exe, prog.main, saved)
    at_save = _snapshot(prog)
    losses_a = _train(exe, prog, after)
    state_a = _snapshot(prog)

    with paddle.static.scope_guard(paddle.static.Scope()):
        fresh = _build(exe, optimizer, k_steps=k_steps, seed=99)
        assert not np.array_equal(_snapshot(fresh)["l1.w"], at_save["l1.w"])  # restore must do the work
        progress = CheckpointManager(tmp_path).restore(exe, fresh.main)
        assert dataclasses.replace(progress, files={}) == saved and progress.lr_state["last_epoch"] == before
        assert sorted(progress.files) == ["bert_paddle.pdmodel", "bert_paddle.pdopt", "bert_paddle.pdparams"]
        fresh.sched.set_state_dict(progress.lr_state)
        losses_b = _train(exe, fresh, after)
        state_b = _snapshot(fresh)

    assert losses_a == losses_b
    expected = {"l1.w", "l1.w_moment1_0", "l1.w_moment2_0", "l1.w_beta1_pow_acc_0", "learning_rate_0"}
    if k_steps > 1:
        expected |= {"l1.w@GRAD@GradientMerge", "gradient_merge_step"}
        assert at_save["l1.w@GRAD@GradientMerge"].any()  # saved mid-accumulation, buffer not zero
    assert expected <= set(state_a) and set(state_a) == set(state_b)
    for name in state_a:
        assert state_a[name].dtype == state_b[name].dtype and np.array_equal(state_a[name], state_b[name]), name
    assert not np.array_equal(state_a["l1.w"], at_save["l1.w"])  # training moved on after the save


def test_files_on_disk_and_progress_is_valid(tmp_path, exe):
    prog = _build(exe)
    path = CheckpointManager(tmp_path, model_prefix="m").save(exe, prog.main, _progress(5, prog))
    assert path == str(tmp_path / "5")
    assert sorted(os.listdir(path)) == ["m.pdmodel", "m.pdopt", "m.pdparams", "progress.json"]
    assert Progress.from_json((tmp_path / "5" / "progress.json").read_text()).global_step == 5


# ----------------------------------------------------------------------------------------------------
# Interrupted saves, retention, step selection


def test_interrupted_save_is_ignored_and_cleaned(tmp_path, exe):
    prog = _build(exe)
    manager = CheckpointManager(tmp_path)
    manager.save(exe, prog.main, _progress(2, prog))
    (tmp_path / "4.tmp-abc").mkdir()                       # crash before the rename
    (tmp_path / "4.tmp-abc" / "bert_paddle.pdparams").write_bytes(b"partial")
    (tmp_path / "3").mkdir()                               # a step dir without progress.json
    (tmp_path / "3" / "bert_paddle.pdparams").write_bytes(b"partial")
    (tmp_path / "6").mkdir()                               # truncated progress.json
    (tmp_path / "6" / "bert_paddle.pdparams").write_bytes(b"partial")
    (tmp_path / "6" / "progress.json").write_text('{"global_step": 6, "pha')
    assert manager.latest_complete_step() == 2
    assert CheckpointManager(tmp_path).restore(exe, prog.main).global_step == 2
    with pytest.raises(ValueError, match=r"step 3 .*available steps: \[2\]"):
        manager.restore(exe, prog.main, step=3)

    manager.save(exe, prog.main, _progress(5, prog))
    # The killed save's temporary directory is deleted; the damaged step directories are moved aside.
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith("superseded-")) == ["2", "5"]
    aside = sorted(p.relative_to(tmp_path).parts[1] for p in tmp_path.glob("superseded-*/*"))
    assert aside == ["3", "6"]
    assert next(tmp_path.glob("superseded-*/6/progress.json")).read_text() == '{"global_step": 6, "pha'


def test_keep_last_purges_by_disk_scan_across_managers(tmp_path, exe):
    prog = _build(exe)
    first, second = CheckpointManager(tmp_path, keep_last=2), CheckpointManager(tmp_path, keep_last=2)
    first.save(exe, prog.main, _progress(1, prog))
    first.save(exe, prog.main, _progress(2, prog))
    second.save(exe, prog.main, _progress(3, prog))       # a per-process list would keep 1, 2, 3
    assert second.available_steps() == [2, 3]
    first.save(exe, prog.main, _progress(4, prog))
    assert first.available_steps() == [3, 4]
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_save_replaces_same_step_and_other_ranks_write_nothing(tmp_path, exe):
    prog = _build(exe)
    manager = CheckpointManager(tmp_path)
    manager.save(exe, prog.main, _progress(3, prog, epoch=0))
    manager.save(exe, prog.main, _progress(3, prog, epoch=1))
    assert [n for n in os.listdir(tmp_path) if not n.startswith("superseded-")] == ["3"]
    assert manager.restore(exe, prog.main, step=3).epoch == 1
    old, = tmp_path.glob("superseded-*/3")  # the replaced checkpoint is kept, whole
    assert json.loads((old / "progress.json").read_text())["epoch"] == 0
    other = CheckpointManager(tmp_path / "rank1", rank=1)
    assert other.save(exe, prog.main, _progress(3, prog)) is None
    assert not (tmp_path / "rank1").exists()


def test_maybe_save_uses_global_steps_whether_or_not_resumed(tmp_path, exe):
    prog = _build(exe)
    fresh = CheckpointManager(tmp_path / "fresh", keep_last=10)
    for step in range(1, 9):
        fresh.maybe_save(exe, prog.main, _progress(step, prog), every_n_steps=3, is_last=step == 8)
    assert fresh.available_steps() == [3, 6, 8]
    resumed = CheckpointManager(tmp_path / "resumed", keep_last=10)
    for step in range(5, 9):                              # as if resumed from step 4
        resumed.maybe_save(exe, prog.main, _progress(step, prog), every_n_steps=3, is_last=step == 8)
    assert resumed.available_steps() == [6, 8]
    with pytest.raises(ValueError, match="every_n_steps"):
        fresh.maybe_save(exe, prog.main, _progress(9, prog), every_n_steps=0)


def test_restore_auto_on_empty_and_bad_steps(tmp_path, exe):
    prog = _build(exe)
    manager = CheckpointManager(tmp_path / "nothing")
    assert manager.restore(exe, prog.main) is None
    assert manager.latest_complete_step() is None
    with pytest.raises(ValueError, match="available steps: none"):
        manager.restore(exe, prog.main, step=7)
    with pytest.raises(ValueError, match="'auto' or an int"):
        manager.restore(exe, prog.main, step="latest")


@pytest.mark.parametrize("keep_last", [0, 1, 2.0, True])
def test_keep_last_below_two_is_rejected(tmp_path, keep_last):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=keep_last)


def test_restore_into_a_different_program_names_the_problem(tmp_path, exe):
    prog = _build(exe)
    manager = CheckpointManager(tmp_path)
    manager.save(exe, prog.main, _progress(1, prog))
    with paddle.static.scope_guard(paddle.static.Scope()):
        wider = _build(exe, hidden=16)
        before = _snapshot(wider)
        with pytest.raises(ValueError, match=r"l1\.w: program has float32\[4, 16\], .* has float32\[4, 8\]"):
            manager.restore(exe, wider.main)
        # Validation happens before any write: nothing was half-loaded.
        after = _snapshot(wider)
        assert all(np.array_equal(before[n], after[n]) for n in before)
    with paddle.static.scope_guard(paddle.static.Scope()):
        bigger = _build(exe, head="extra")
        with pytest.raises(ValueError, match=r"lacks 10 persistable.*extra\.w"):
            manager.restore(exe, bigger.main)


def test_restore_refuses_unknown_schema(tmp_path, exe):
    prog = _build(exe)
    manager = CheckpointManager(tmp_path)
    manager.save(exe, prog.main, _progress(1, prog))
    path = tmp_path / "1" / "progress.json"
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    assert manager.latest_complete_step() == 1            # counted, so resume fails loudly instead of
    with pytest.raises(ValueError, match="schema_version"):  # silently picking an older checkpoint
        manager.restore(exe, prog.main)


# ----------------------------------------------------------------------------------------------------
# Progress and compatibility


def test_progress_json_round_trip_and_validation():
    progress = _progress(12, loader_state={"epoch": np.int64(2), "batches": 5}, lr_state={"last_lr": 0.1},
                         extra={"loss": 1.5})
    back = Progress.from_json(progress.to_json())
    assert back.loader_state == {"epoch": 2, "batches": 5} and back.global_step == 12 and back.extra["loss"] == 1.5
    assert type(back.loader_state["epoch"]) is int
    data = json.loads(progress.to_json())
    with pytest.raises(ValueError, match=f"schema_version {SCHEMA_VERSION + 1}"):
        Progress.from_json(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    # Checkpoints written before sizes and checksums were recorded (schema 1) still resume, unverified.
    v2 = {k: v for k, v in data.items() if k not in ("settings", "vocab_sha256", "record_sha256")}
    v1 = {k: v for k, v in v2.items() if k != "files"}
    assert Progress.from_json(json.dumps({**v1, "schema_version": 1})).files == {}
    data = {**v2, "schema_version": 2}  # a record without its own checksum: the edits below are not damage
    with pytest.raises(ValueError, match=r"unknown \['lr'\]"):
        Progress.from_json(json.dumps({**data, "lr": 1}))
    with pytest.raises(ValueError, match=r"missing \['seeds'\]"):
        Progress.from_json(json.dumps({k: v for k, v in data.items() if k != "seeds"}))
    with pytest.raises(ValueError, match="global_step"):
        _progress(-1)
    with pytest.raises(ValueError, match="not JSON serialisable"):
        _progress(1, extra={"x": object()}).to_json()


def test_check_compatible_names_every_change():
    progress = _progress(10)
    check_compatible(progress, config_fingerprint="f" * 64, world_size=1, global_batch_size=4)
    with pytest.raises(ValueError, match="architecture"):
        check_compatible(progress, config_fingerprint="e" * 64, world_size=1, global_batch_size=4)
    with pytest.raises(ValueError, match=r"world size changed \(1 in the checkpoint, 2 now\)"):
        check_compatible(progress, config_fingerprint="f" * 64, world_size=2, global_batch_size=4)
    with pytest.raises(ValueError, match=r"global batch size changed \(4 in the checkpoint, 8 now\)"):
        check_compatible(progress, config_fingerprint="f" * 64, world_size=1, global_batch_size=8)
    with pytest.raises(ValueError, match="architecture.*world size.*global batch"):
        check_compatible(progress, config_fingerprint="e" * 64, world_size=2, global_batch_size=8)


def test_fingerprint_and_phase_dir():
    a = fingerprint_config({"hidden_size": 8, "num_layers": 2})
    assert a == fingerprint_config({"num_layers": 2, "hidden_size": 8})
    assert a != fingerprint_config({"hidden_size": 16, "num_layers": 2})
    assert len(a) == 64
    assert phase_dir("out", "bert", 2) == os.path.join("out", "bert", "phase2")
    with pytest.raises(ValueError, match="phase"):
        phase_dir("out", "bert", 0)


# ----------------------------------------------------------------------------------------------------
# Pretrained initialisation


def _pretrained(tmp_path, exe):
    prog = _build(exe, seed=5)
    path = CheckpointManager(tmp_path).save(exe, prog.main, _progress(1, prog))
    return path, _snapshot(prog)


def test_load_pretrained_by_name_with_new_head(tmp_path, exe, caplog):
    path, saved = _pretrained(tmp_path, exe)
    with paddle.static.scope_guard(paddle.static.Scope()):
        squad = _build(exe, head="qa", seed=6)
        start = _snapshot(squad)
        with caplog.at_level(logging.DEBUG, logger="utils.checkpoint"):
            sources = load_pretrained(exe, squad.main, path, allow_missing_prefixes=("qa.",))
        now = _snapshot(squad)
    assert sources == {"l1.w": INIT_FROM_CKPT, "l1.b": INIT_FROM_CKPT, "l2.w": INIT_FROM_CKPT,
                       "l2.b": INIT_FROM_CKPT, "qa.w": NEWLY_INITIALIZED, "qa.b": NEWLY_INITIALIZED}
    assert np.array_equal(now["l1.w"], saved["l1.w"]) and np.array_equal(now["qa.w"], start["qa.w"])
    # Optimizer state is not taken from a pretrained file: moments keep their startup zeros.
    assert not now["l1.w_moment1_0"].any()
    assert "l1.w [4, 8] *INIT_FROM_CKPT*" in caplog.text and "qa.w [1, 2] NEWLY INITIALIZED" in caplog.text
    # Issue 14: one INFO line per load (names of the new ones), the per-parameter list at DEBUG only.
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [m for m in info if m.startswith(f"parameters: 4 of 6 from {path}")
            and m.endswith("; newly initialised: qa.b, qa.w")]
    assert not [m for m in info if "INIT_FROM_CKPT" in m or "NEWLY" in m]


def test_load_pretrained_ignore_prefixes_and_file_path(tmp_path, exe):
    path, saved = _pretrained(tmp_path, exe)
    with paddle.static.scope_guard(paddle.static.Scope()):
        prog = _build(exe, seed=6)
        start = _snapshot(prog)
        sources = load_pretrained(exe, prog.main, os.path.join(path, "bert_paddle.pdparams"),
                                  ignore_prefixes=["l2."])
        now = _snapshot(prog)
    assert sources["l2.w"] == NEWLY_INITIALIZED and sources["l1.w"] == INIT_FROM_CKPT
    assert np.array_equal(now["l2.w"], start["l2.w"]) and np.array_equal(now["l1.w"], saved["l1.w"])


def test_load_pretrained_errors(tmp_path, exe):
    path, _ = _pretrained(tmp_path, exe)
    with paddle.static.scope_guard(paddle.static.Scope()):
        squad = _build(exe, head="qa")
        with pytest.raises(ValueError, match=r"lacks parameter\(s\) qa\.w, qa\.b"):
            load_pretrained(exe, squad.main, path)
        with pytest.raises(ValueError, match="does not exist; refusing"):
            load_pretrained(exe, squad.main, str(tmp_path / "nope"))
        with pytest.raises(ValueError, match="exactly one .pdparams"):
            load_pretrained(exe, squad.main, str(tmp_path))
        with pytest.raises(ValueError, match="list/tuple"):
            load_pretrained(exe, squad.main, path, allow_missing_prefixes="qa.")
        with pytest.raises(ValueError, match="no parameter of the program was loaded"):
            load_pretrained(exe, squad.main, path, ignore_prefixes=("l",), allow_missing_prefixes=("qa.",))
    with paddle.static.scope_guard(paddle.static.Scope()):
        wider = _build(exe, hidden=16)
        with pytest.raises(ValueError, match=r"l1\.w: program has float32\[4, 16\], .* has float32\[4, 8\]"):
            load_pretrained(exe, wider.main, path)
