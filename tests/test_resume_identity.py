"""A resume is exactly the same training, or it is refused (issue 20, items 5-9).

One short run `T` (--max-steps 10 --steps-this-run 4: checkpoints 2 and 4) on dynamically masked shards made
by the project's own CLIs; each test resumes a copy of it the way a careless or hostile user would: other
optimizer settings, a vocab with two lines swapped, a hand-edited progress.json, shards whose rows were
permuted, an absurd warm-up. Runs are subprocesses (as a user runs them); the cheap checks are in-process.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, shared_path

PY = sys.executable
TINY = ["--bert-model", "bert-tiny", "--max-seq-length", "128", "--max-predictions-per-seq", "20",
        "--device", "cpu", "--num-workers", "0", "--sequence-length-alignment", "8", "--batch-size", "4",
        "--learning-rate", "1e-3", "--warmup-proportion", "0.2", "--log-freq", "1",
        "--num-steps-per-checkpoint", "2"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    for key in [k for k in env if k.startswith(("PADDLE_", "FLAGS_selected"))]:
        del env[key]
    return env


def _run(args, check=True):
    proc = subprocess.run([PY, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _errors(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(shard dir, vocab file): 2 balanced shards of seq-128 pairs, masked at load time (dynamic masking)."""
    root = tmp_path_factory.mktemp("resume_data")
    _run(["-m", "data.prep.sample_corpus", "--output-dir", str(root / "source"), "--num-files", "2",
          "--max-bytes", "300000"])
    _run(["-m", "data.prep.build_vocab", "--input", str(root / "source"), "--output", str(root / "vocab.txt"),
          "--vocab-size", "2000", "--do-lower-case"])
    _run(["-m", "data.prep.preprocess_bert_pretrain", "--source", str(root / "source"), "--sink",
          str(root / "p128"), "--vocab-file", str(root / "vocab.txt"), "--do-lower-case",
          "--target-seq-length", "128", "--bin-size", "64", "--num-workers", "1", "--seed", "3"])
    _run(["-m", "data.prep.balance_dask_output", "--indir", str(root / "p128"), "--num-shards", "2"])
    return str(root / "p128"), str(root / "vocab.txt")


def _args(data, vocab, out, *extra):
    return ["run_pretraining.py", "--phase1", "--input-dir", data, "--vocab-file", vocab, "--output-dir", str(out),
            "--max-steps", "10", *TINY, *extra]


@pytest.fixture(scope="module")
def run_t(shards, tmp_path_factory):
    """The output directory of T: 4 of 10 steps done, checkpoints of steps 2 and 4."""
    out = tmp_path_factory.mktemp("T") / "out"
    _run(_args(*shards, out, "--steps-this-run", "4"))
    assert sorted(os.listdir(out / "bert-tiny" / "phase1")) == ["2", "4", "report.json", "results.json"]
    return out


def _copy(run_t, tmp_path):
    """A copy of T to resume (resuming T itself would change it for the other tests)."""
    out = tmp_path / "out"
    shutil.copytree(run_t, out)
    return out


def _resume(shards, out, *extra, data=None, vocab=None):
    return _args(data or shards[0], vocab or shards[1], out, "--from-checkpoint", str(out / "bert-tiny" / "phase1"),
                 "--last-step-of-checkpoint", "auto", *extra)


def _swapped_vocab(vocab, path):
    """The vocab with two of its word lines swapped: same size, same tokens, other ids."""
    lines = open(vocab, encoding="utf-8").read().splitlines()
    lines[200], lines[201] = lines[201], lines[200]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------------
# Item 5: a resume may change only what does not change the math


@pytest.mark.parametrize("flag, value, message", [
    ("--optimizer", "AdamW", "--optimizer: 'Lamb' in the checkpoint, 'AdamW' now"),
    ("--weight-decay", "0.5", "--weight-decay: 0.01 in the checkpoint, 0.5 now"),
    ("--max-predictions-per-seq", "10", "--max-predictions-per-seq: 20 in the checkpoint, 10 now"),
])
def test_resume_with_a_changed_math_setting_is_refused_in_one_line(shards, run_t, tmp_path, flag, value, message):
    out = _copy(run_t, tmp_path)
    args = _resume(shards, out, flag, value)  # the last occurrence of a flag wins (over TINY's)
    before = sorted(os.listdir(out / "bert-tiny" / "phase1"))
    proc = _run(args, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(_errors(proc)) == 1 and message in _errors(proc)[0], proc.stderr[-3000:]
    assert sorted(os.listdir(out / "bert-tiny" / "phase1")) == before  # nothing moved aside or written


def test_a_cpu_resume_that_switches_the_dropout_kernel_is_refused(shards, run_t, tmp_path):
    """The CPU dropout kernel and Paddle's op draw other masks from the same seed: switching between them
    (BERT_PADDLE_CPU_KERNELS=0) would continue another training."""
    out = _copy(run_t, tmp_path)
    proc = subprocess.run([PY, *_resume(shards, out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**_env(), "BERT_PADDLE_CPU_KERNELS": "0"})
    assert proc.returncode == 2 and len(_errors(proc)) == 1, proc.stderr[-3000:]
    assert "CPU dropout masks: 'bert_dropout_cpu' in the checkpoint, 'dropout' now" in _errors(proc)[0]


def test_resume_may_change_how_it_runs_and_logs(shards, run_t, tmp_path):
    out = _copy(run_t, tmp_path)
    proc = _run(_resume(shards, out, "--log-freq", "3", "--num-workers", "1", "--num-steps-per-checkpoint", "3",
                        "--keep-checkpoints", "4"))
    assert "restored step 4" in proc.stderr and "phase 1 done at step 10" in proc.stderr


# ------------------------------------------------------------------------------------------------------
# Item 6: the vocab is part of the run's identity


def test_resume_with_a_permuted_vocab_of_the_same_size_is_refused_naming_both_hashes(shards, run_t, tmp_path):
    import hashlib
    out = _copy(run_t, tmp_path)
    swapped = _swapped_vocab(shards[1], tmp_path / "swapped.txt")
    proc = _run(_resume(shards, out, vocab=swapped), check=False)
    old = hashlib.sha256(open(shards[1], "rb").read()).hexdigest()
    new = hashlib.sha256(open(swapped, "rb").read()).hexdigest()
    assert proc.returncode == 2 and len(_errors(proc)) == 1, proc.stderr[-3000:]
    assert f"--vocab-file: SHA-256 {old} in the checkpoint, {new} now" in _errors(proc)[0]


def test_initialising_from_a_checkpoint_with_another_vocab_is_refused(shards, run_t, tmp_path):
    """Fine-tuning (run_squad, run_glue and inference.export all take their config from
    tasks.finetune.model_config) and phase 2 refuse a vocab other than the one pretraining recorded."""
    from tasks import finetune_config as finetune

    step = str(run_t / "bert-tiny" / "phase1" / "4")
    swapped = _swapped_vocab(shards[1], tmp_path / "swapped.txt")
    finetune.model_config("bert-tiny", None, shards[1], step)  # the checkpoint's own vocab is fine
    with pytest.raises(ValueError, match=r"--vocab-file .* has SHA-256 [0-9a-f]{64}, but the checkpoint .* was "
                                         r"trained with a vocab of SHA-256 [0-9a-f]{64}"):
        finetune.model_config("bert-tiny", None, swapped, step)
    import run_pretraining
    args = ["--phase2", "--input-dir", shards[0], "--vocab-file", swapped, "--output-dir", str(tmp_path / "p2"),
            "--max-steps", "2", "--from-phase1-final-params", step, *TINY]
    assert run_pretraining.cli(args) == 2
    assert not (tmp_path / "p2").exists()


# ------------------------------------------------------------------------------------------------------
# Item 7: progress.json is checksummed and cross-checked


def test_an_edited_progress_record_is_damage_and_auto_falls_back(shards, run_t, tmp_path):
    out = _copy(run_t, tmp_path)
    path = out / "bert-tiny" / "phase1" / "4" / "progress.json"
    record = json.loads(path.read_text())
    record["lr_state"]["last_epoch"] = 9  # valid JSON, an LR of step 9 at step 4
    path.write_text(json.dumps(record, indent=2))
    proc = _run(_resume(shards, out))
    assert "checkpoint of step 4 is damaged" in proc.stderr and "record_sha256 does not match" in proc.stderr
    assert "restored step 2" in proc.stderr and "phase 1 done at step 10" in proc.stderr


def _as_schema_2(record):
    """What this project wrote before settings, vocab hash, record checksum and data contents were recorded."""
    old = {k: v for k, v in record.items() if k not in ("settings", "vocab_sha256", "record_sha256")}
    old["loader_state"] = dict(old["loader_state"], fingerprint={
        k: v for k, v in old["loader_state"]["fingerprint"].items() if k != "content_sha256"})
    return dict(old, schema_version=2)


def test_an_old_record_contradicting_its_step_is_damaged(run_t):
    from utils.checkpoint import Progress
    from utils.checkpoint_io import DamagedCheckpoint

    record = _as_schema_2(json.loads((run_t / "bert-tiny" / "phase1" / "4" / "progress.json").read_text()))
    assert Progress.from_json(json.dumps(record)).global_step == 4  # an old, consistent record still reads
    edited = json.loads(json.dumps(record))
    edited["lr_state"]["last_epoch"] = 9
    with pytest.raises(DamagedCheckpoint, match="lr_state.last_epoch is 9 but global_step is 4"):
        Progress.from_json(json.dumps(edited))
    edited = json.loads(json.dumps(record))
    edited["loader_state"]["batches_consumed"] = 50
    with pytest.raises(DamagedCheckpoint, match="consumed 50 batches .* but global_step 4 x 1 micro-batches"):
        Progress.from_json(json.dumps(edited))


def test_a_checkpoint_of_an_older_version_resumes_with_one_warning(shards, run_t, tmp_path):
    out = _copy(run_t, tmp_path)
    for step in ("2", "4"):
        path = out / "bert-tiny" / "phase1" / step / "progress.json"
        path.write_text(json.dumps(_as_schema_2(json.loads(path.read_text()))))
    proc = _run(_resume(shards, out))
    assert "restored step 4" in proc.stderr and "phase 1 done at step 10" in proc.stderr
    older = [line for line in proc.stderr.splitlines() if "written by an older version" in line]
    assert len(older) == 1 and "checksum" in older[0] and "settings" in older[0] and "vocab" in older[0]


# ------------------------------------------------------------------------------------------------------
# Item 8: exact resume means exact data


def _permute_rows(path):
    """Rewrite one Parquet file with its rows reversed: same name, same row count, other contents."""
    table = pq.read_table(path)
    pq.write_table(table.take(np.arange(table.num_rows)[::-1]), path, compression="snappy")


def _copy_data(shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shards[0], data)
    return data, sorted(n for n in os.listdir(data) if ".parquet" in n)


def test_resume_on_shards_with_permuted_rows_is_refused(shards, run_t, tmp_path):
    out = _copy(run_t, tmp_path)
    data, names = _copy_data(shards, tmp_path)
    _permute_rows(data / names[0])
    proc = _run(_resume(shards, out, data=str(data)), check=False)
    assert proc.returncode == 2 and len(_errors(proc)) == 1, proc.stderr[-3000:]
    assert names[0] in _errors(proc)[0] and ".shard_digests.json" in _errors(proc)[0]


def test_loader_refuses_other_contents_and_checks_each_file_as_it_reads_it(shards, tmp_path):
    from data import lddl_format
    from data.loader.lddl_loader import get_bert_pretrain_data_loader

    def loader(path):
        return get_bert_pretrain_data_loader(str(path), vocab_file=shards[1], batch_size=4, seed=1,
                                             max_predictions_per_seq=20, max_seq_length=128)

    state = loader(shards[0]).state_dict()
    data, names = _copy_data(shards, tmp_path)
    _permute_rows(data / names[0])
    lddl_format.write_shard_digests(str(data), names)  # a consistent directory of other contents
    with pytest.raises(ValueError, match="dataset contents: .* other bytes: rows edited or permuted"):
        loader(data).load_state_dict(state)
    # Same size, other bytes (the one case a size check cannot see): the read itself refuses the file.
    digests = json.loads((data / lddl_format.SHARD_DIGESTS_FILE).read_text())
    digests[names[0]]["sha256"] = "0" * 64
    (data / lddl_format.SHARD_DIGESTS_FILE).write_text(json.dumps(digests))
    with pytest.raises(ValueError, match=f"{names[0]}: its contents differ from the SHA-256"):
        for _ in loader(data):
            pass


def test_lddl_shards_without_digests_still_load_with_one_warning(caplog):
    from data.loader.lddl_loader import get_bert_pretrain_data_loader

    fixtures = shared_path("data", "lddl-fixtures", "bal_p9_unbin_dyn")
    vocab = shared_path("vocab", "bert-base-uncased-vocab.txt")
    with caplog.at_level("WARNING"):
        loader = get_bert_pretrain_data_loader(str(fixtures), vocab_file=str(vocab), batch_size=2, seed=1,
                                               max_predictions_per_seq=20)
        next(iter(loader))
        loader.load_state_dict(loader.state_dict())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "has no .shard_digests.json" in warnings[0]
    assert loader.state_dict()["fingerprint"]["content_sha256"] is None


# ------------------------------------------------------------------------------------------------------
# Item 9: a warm-up climbs to the peak


def test_a_warmup_start_above_the_peak_is_refused(shards, tmp_path, capsys):
    import run_pretraining
    from tasks.config import OptimConfig, PrecisionConfig, train_config

    args = ["--phase1", "--input-dir", shards[0], "--vocab-file", shards[1], "--output-dir", str(tmp_path / "o"),
            "--max-steps", "10", *TINY, "--warmup-start-lr", "5"]
    assert run_pretraining.cli(args) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: --warmup-start-lr (5) must not exceed --learning-rate (0.001), the peak the warm-up climbs to"]
    assert not (tmp_path / "o").exists()
    # The same rule for every entry point: fine-tuning builds its TrainConfig through the same function.
    optim = OptimConfig(optimizer="AdamW", learning_rate=3e-5, warmup_start_lr=1e-4, warmup_proportion=0.1,
                        beta1=0.9, beta2=0.999, epsilon=1e-6, weight_decay=0.01, gradient_merge_steps=1)
    with pytest.raises(ValueError, match="--warmup-start-lr .* must not exceed --learning-rate"):
        train_config(optim, PrecisionConfig(amp={"amp": "off"}, fuse_mha=False), total_steps=100, seed=1,
                     device="cpu")
