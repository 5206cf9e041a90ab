"""utils.checkpoint under faults: damaged files, interrupted saves, NaN parameters, fsync order, retention.

Each test reproduces a defect found by fault testing (issue 8) on the tiny two-layer program of
test_checkpoint.py, in its own scope.
"""
import json
import logging
import os
import pickle

import numpy as np
import paddle
import pytest

from test_checkpoint import _build, _progress, _snapshot, _train, exe, fresh_scope, static_mode  # noqa: F401
from utils import checkpoint_io
from utils.checkpoint import CheckpointManager
from utils.weights import load_pretrained
from utils.checkpoint_io import DamagedCheckpoint
from utils.nonfinite import NonFiniteParameters


def _three_checkpoints(tmp_path, exe):
    """Checkpoints of steps 1, 2, 3 and the state at each."""
    prog = _build(exe)
    manager, states = CheckpointManager(tmp_path, keep_last=3), {}
    for step in (1, 2, 3):
        _train(exe, prog, [step])
        manager.save(exe, prog.main, _progress(step, prog))
        states[step] = _snapshot(prog)
    return prog, manager, states


def _restore_fresh(exe, root, **kw):
    with paddle.static.scope_guard(paddle.static.Scope()):
        fresh = _build(exe, seed=99)
        progress = CheckpointManager(root).restore(exe, fresh.main, **kw)
        return progress, _snapshot(fresh)


def _assert_state(state, expected):
    for name in expected:
        assert np.array_equal(state[name], expected[name]), name


# ----------------------------------------------------------------------------------------------------
# Damaged newest checkpoint: warning naming the file, fall back to the previous one


@pytest.mark.parametrize("damage, why", [
    ("truncate_params", "bert_paddle.pdparams has"),
    ("truncate_opt", "bert_paddle.pdopt has"),
    ("flip_byte", "does not match the SHA-256"),
    ("corrupt_progress", "progress.json is unreadable"),
    ("missing_params", "bert_paddle.pdparams is missing"),
])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, exe, caplog, damage, why):
    _, _, states = _three_checkpoints(tmp_path, exe)
    newest = tmp_path / "3"
    params, opt = newest / "bert_paddle.pdparams", newest / "bert_paddle.pdopt"
    if damage == "truncate_params":
        params.write_bytes(params.read_bytes()[:-40])
    elif damage == "truncate_opt":
        opt.write_bytes(opt.read_bytes()[:100])
    elif damage == "flip_byte":
        data = bytearray(params.read_bytes())
        data[-20] ^= 0xFF
        params.write_bytes(bytes(data))
    elif damage == "corrupt_progress":
        (newest / "progress.json").write_text('{"global_step": 3, "files"')
    else:
        params.unlink()
    with caplog.at_level(logging.WARNING, logger="utils.checkpoint"):
        progress, state = _restore_fresh(exe, tmp_path)
    assert progress.global_step == 2
    _assert_state(state, states[2])
    assert why in caplog.text and str(newest) in caplog.text


def test_checkpoint_without_checksums_truncated_falls_back(tmp_path, exe, caplog):
    """Schema-1 checkpoints (no recorded sizes) are caught by the unreadable pickle instead."""
    import json
    _, _, states = _three_checkpoints(tmp_path, exe)
    progress_file = tmp_path / "3" / "progress.json"
    data = json.loads(progress_file.read_text())
    del data["files"]
    progress_file.write_text(json.dumps({**data, "schema_version": 1}))
    params = tmp_path / "3" / "bert_paddle.pdparams"
    params.write_bytes(params.read_bytes()[:-40])
    with caplog.at_level(logging.WARNING, logger="utils.checkpoint"):
        progress, state = _restore_fresh(exe, tmp_path)
    assert progress.global_step == 2 and "cannot read" in caplog.text
    _assert_state(state, states[2])


def test_explicit_damaged_step_and_all_damaged_are_errors(tmp_path, exe):
    _three_checkpoints(tmp_path, exe)
    for step in (1, 2, 3):
        data = bytearray((tmp_path / str(step) / "bert_paddle.pdopt").read_bytes())
        data[-5] ^= 0x01
        (tmp_path / str(step) / "bert_paddle.pdopt").write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint, match="every checkpoint .* is damaged"):
        _restore_fresh(exe, tmp_path)
    with pytest.raises(DamagedCheckpoint, match="SHA-256"):
        _restore_fresh(exe, tmp_path, step=2)


def test_restore_validate_refuses_before_anything_is_loaded(tmp_path, exe):
    _three_checkpoints(tmp_path, exe)

    def refuse(progress, step_dir):
        raise ValueError(f"no: phase {progress.phase} at {step_dir}")

    with paddle.static.scope_guard(paddle.static.Scope()):
        fresh = _build(exe, seed=99)
        before = _snapshot(fresh)
        with pytest.raises(ValueError, match="no: phase 1"):
            CheckpointManager(tmp_path).restore(exe, fresh.main, validate=refuse)
        _assert_state(_snapshot(fresh), before)


# ----------------------------------------------------------------------------------------------------
# Saves: fsync before rename, NaN refused, zero merge buffers left out


def test_every_file_is_fsynced_before_the_rename(tmp_path, exe, monkeypatch):
    prog = _build(exe)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    CheckpointManager(tmp_path).save(exe, prog.main, _progress(4, prog))
    final_rename = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(tmp_path / "4")]
    assert len(final_rename) == 1
    tmp_dir = events[final_rename[0]][1]
    synced_before = {e[1] for e in events[:final_rename[0]] if e[0] == "fsync"}
    for name in ("bert_paddle.pdparams", "bert_paddle.pdopt", "bert_paddle.pdmodel"):
        assert os.path.join(tmp_dir, name) in synced_before, name
    # progress.json is itself written atomically: fsynced under its temporary name, then renamed.
    assert any(p.startswith(os.path.join(tmp_dir, "progress.json")) for p in synced_before)
    assert tmp_dir in synced_before
    assert ("fsync", str(tmp_path)) in events[final_rename[0]:]  # the rename itself made durable


def test_nan_parameters_are_never_checkpointed(tmp_path, exe):
    prog = _build(exe)
    manager = CheckpointManager(tmp_path)
    manager.save(exe, prog.main, _progress(1, prog))
    tensor = paddle.static.global_scope().find_var("l1.w").get_tensor()
    bad = np.array(tensor)
    bad[0, 0] = np.nan
    tensor.set(bad, paddle.CPUPlace())
    with pytest.raises(NonFiniteParameters, match=r"l1\.w.*latest good one is step 1"):
        manager.save(exe, prog.main, _progress(2, prog))
    assert sorted(os.listdir(tmp_path)) == ["1"]


@pytest.mark.parametrize("boundary", [True, False])
def test_gradient_merge_buffers_are_left_out_only_when_zero(tmp_path, exe, boundary):
    prog = _build(exe, "lamb", k_steps=2)
    _train(exe, prog, range(2 if boundary else 3))  # 2 micro-batches = one update boundary
    CheckpointManager(tmp_path).save(exe, prog.main, _progress(1, prog))
    with open(tmp_path / "1" / "bert_paddle.pdopt", "rb") as f:
        saved = pickle.load(f)
    merge_buffers = [n for n in saved if n.endswith("@GRAD@GradientMerge")]
    assert (merge_buffers == []) == boundary
    expected = _snapshot(prog)
    after = _train(exe, prog, [7, 8])
    with paddle.static.scope_guard(paddle.static.Scope()):
        fresh = _build(exe, "lamb", k_steps=2, seed=99)
        progress = CheckpointManager(tmp_path).restore(exe, fresh.main)
        fresh.sched.set_state_dict(progress.lr_state)
        _assert_state(_snapshot(fresh), expected)  # zeros where left out, exact elsewhere
        assert _train(exe, fresh, [7, 8]) == after


# ----------------------------------------------------------------------------------------------------
# Retention and superseding


def test_purge_with_newer_checkpoints_does_not_crash_or_delete_them(tmp_path, exe, caplog):
    """Defect 1: `_purge` joined int steps into a message (TypeError) after replacing a checkpoint."""
    prog, manager, _ = _three_checkpoints(tmp_path, exe)
    with caplog.at_level(logging.WARNING, logger="utils.checkpoint"):
        manager.save(exe, prog.main, _progress(1, prog))
    assert "newer than step 1" in caplog.text and "(2, 3)" in caplog.text
    assert sorted(manager.available_steps()) == [1, 2, 3]


def test_supersede_moves_aside_and_auto_no_longer_sees_them(tmp_path, exe):
    _, manager, states = _three_checkpoints(tmp_path, exe)
    aside = manager.supersede([2, 3], reason="test")
    assert manager.available_steps() == [1]
    assert sorted(os.listdir(aside)) == ["2", "3"] and os.path.basename(aside).startswith("superseded-")
    progress, state = _restore_fresh(exe, tmp_path)
    assert progress.global_step == 1
    _assert_state(state, states[1])
    prog = _build(exe)
    for step in (5, 6, 7, 8):
        manager.save(exe, prog.main, _progress(step, prog))
    assert manager.available_steps() == [6, 7, 8]
    assert sorted(os.listdir(aside)) == ["2", "3"]  # retention never touches superseded checkpoints


def test_incomplete_step_dirs_are_moved_aside_by_purge_with_their_reason(tmp_path, exe, caplog):
    prog, manager, _ = _three_checkpoints(tmp_path, exe)
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "bert_paddle.pdparams").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="utils.checkpoint"):
        manager.save(exe, prog.main, _progress(4, prog))
    assert not (tmp_path / "9").exists() and "has no progress.json" in caplog.text
    kept, = tmp_path.glob("superseded-*/9/bert_paddle.pdparams")
    assert kept.read_bytes() == b"partial" and "moved checkpoint(s) of step 9 aside" in caplog.text


def _damage(step_dir, how):
    """Damage of the kinds `auto` skips cheaply (so a resumed run meets the directory again at that step)."""
    params = step_dir / "bert_paddle.pdparams"
    if how == "missing_progress":
        (step_dir / "progress.json").unlink()
    elif how == "truncated_params":
        params.write_bytes(params.read_bytes()[:-40])
    else:  # a progress.json that names another step
        record = json.loads((step_dir / "progress.json").read_text())
        (step_dir / "progress.json").write_text(json.dumps(dict(record, global_step=7)))


@pytest.mark.parametrize("how", ["missing_progress", "truncated_params", "lying_global_step"])
def test_a_damaged_step_saved_again_is_moved_aside_never_deleted(tmp_path, exe, caplog, how):
    """Issue 20 item 4: a resumed run reaching the step of a damaged directory logged 'replacing existing
    checkpoint' and deleted it; only a SHA mismatch (seen at load time) was moved aside."""
    prog, manager, _ = _three_checkpoints(tmp_path, exe)
    _damage(tmp_path / "3", how)
    before = {p.name: p.read_bytes() for p in (tmp_path / "3").iterdir()}
    assert manager.available_steps() == [1, 2]
    with caplog.at_level(logging.INFO, logger="utils.checkpoint"):
        manager.save(exe, prog.main, _progress(3, prog))
    assert manager.available_steps() == [1, 2, 3]
    kept, = tmp_path.glob("superseded-*/3")
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before
    assert "replacing" not in caplog.text and "removing" not in caplog.text


def test_a_step_directory_replaced_by_the_same_step_is_kept(tmp_path, exe):
    prog, manager, _ = _three_checkpoints(tmp_path, exe)
    before = (tmp_path / "3" / "bert_paddle.pdparams").read_bytes()
    manager.save(exe, prog.main, _progress(3, prog))
    kept, = tmp_path.glob("superseded-*/3/bert_paddle.pdparams")
    assert kept.read_bytes() == before


def test_retention_that_cannot_delete_does_not_claim_it_did(tmp_path, exe, caplog, monkeypatch):
    """Issue 20 item 4: `rmtree(ignore_errors=True)` on an immutable directory logged 'removed'."""
    import shutil

    import utils.checkpoint as ckpt

    prog, manager, _ = _three_checkpoints(tmp_path, exe)

    def refuse(path, *args, **kwargs):
        if os.path.basename(path) == "1":
            raise PermissionError(1, "Operation not permitted", path)
        return shutil.rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt.shutil, "rmtree", refuse)
    with caplog.at_level(logging.INFO, logger="utils.checkpoint"):
        manager.save(exe, prog.main, _progress(4, prog))
    assert (tmp_path / "1" / "progress.json").exists()
    assert f"removed old checkpoint {tmp_path / '1'}" not in caplog.text
    assert f"could not remove old checkpoint {tmp_path / '1'} (Operation not permitted)" in caplog.text
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="utils.checkpoint"):
        manager.save(exe, prog.main, _progress(5, prog))
    assert not (tmp_path / "1").exists() and not (tmp_path / "2").exists()
    assert f"removed old checkpoint {tmp_path / '1'}" in caplog.text


def test_a_reference_checkpoint_dir_is_explained_and_never_removed(tmp_path, exe, caplog):
    """Issue 14 item 10: NVIDIA's reference writes <prefix>_progress.json; such a step dir looked like an
    interrupted save of ours, and retention deleted it."""
    prog, manager, _ = _three_checkpoints(tmp_path, exe)
    ref = tmp_path / "9"
    ref.mkdir()
    (ref / "bert_paddle.pdparams").write_bytes(b"reference tensors")
    (ref / "bert_paddle_progress.json").write_text('{"epoch": 1, "step": 9}')
    with caplog.at_level(logging.WARNING, logger="utils.checkpoint"):
        manager.save(exe, prog.main, _progress(4, prog))
    assert (ref / "bert_paddle.pdparams").read_bytes() == b"reference tensors"
    assert "leaving" in caplog.text and "NVIDIA's reference" in caplog.text
    with pytest.raises(Exception, match="NVIDIA's reference run_pretraining.py"):
        manager.resolve_step(9)


# ----------------------------------------------------------------------------------------------------
# Pure fp16 (O2) checkpoints into fp32 programs


def test_load_pretrained_prefers_fp32_masters_then_upcasts_fp16(tmp_path, exe):
    prog = _build(exe, seed=5)
    state = _snapshot(prog)
    params = {n: state[n].astype(np.float16) for n in ("l1.w", "l1.b", "l2.w", "l2.b")}
    master = np.full_like(state["l1.w"], 0.123456789, dtype=np.float32)  # not representable in fp16
    checkpoint_io.write_state(str(tmp_path / "m"), params, {"l1.w_fp32_master_0": master}, b"")
    with paddle.static.scope_guard(paddle.static.Scope()):
        fresh = _build(exe, seed=6)
        load_pretrained(exe, fresh.main, str(tmp_path / "m.pdparams"))
        now = _snapshot(fresh)
    assert now["l1.w"].dtype == np.float32 and np.array_equal(now["l1.w"], master)
    assert np.array_equal(now["l2.w"], params["l2.w"].astype(np.float32))


def test_resolve_step_verifies_without_loading_and_falls_back(tmp_path, exe, caplog):
    """What rank 0 runs for a multi-process resume: the step every rank will then restore."""
    _three_checkpoints(tmp_path, exe)
    manager = CheckpointManager(tmp_path)
    assert manager.resolve_step() == 3
    data = bytearray((tmp_path / "3" / "bert_paddle.pdopt").read_bytes())
    data[-3] ^= 0x10
    (tmp_path / "3" / "bert_paddle.pdopt").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="utils.checkpoint"):
        assert manager.resolve_step() == 2
    assert "SHA-256" in caplog.text
    with pytest.raises(DamagedCheckpoint):
        manager.resolve_step(3)
    assert manager.resolve_step(1) == 1
    assert CheckpointManager(tmp_path / "none").resolve_step() is None


def test_a_mismatch_of_many_parameters_is_one_readable_line(tmp_path, exe):
    from utils.checkpoint import assign_to_scope
    prog = _build(exe)
    arrays = {f"p{i}": np.zeros((2,), np.float32) for i in range(30)}
    arrays["l1.w"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError) as err:
        assign_to_scope(exe, arrays, "x.pdparams")
    assert str(err.value).count("not initialised") == 5 and err.value.args[0].endswith("and 26 more")
    del prog
