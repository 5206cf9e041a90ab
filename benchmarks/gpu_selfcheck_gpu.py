"""The GPU side of `benchmarks.gpu_selfcheck`: each check's run on a usable GPU (imported only there).

Owns: how each check exercises the project's builders (a-d, in this process, tiny BERT, dropout off)
and entry points (e-g, subprocesses with the flags the README documents, killed at their time bound).
Does not own the statuses, the table or the tolerances (`benchmarks.gpu_selfcheck`).
Written against the project's APIs; it cannot be exercised on the CPU machines this project is built on.
"""
import dataclasses
import os
import re
import subprocess
import sys

import numpy as np

from benchmarks.gpu_selfcheck import FAILED, FUSION_FLAGS, NOT_RUN, PASSED, Result, compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny():
    from modeling import BertConfig
    return BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=128, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def _batch(seed=0, batch=4, length=32):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((batch, length)) < 0.2, rng.integers(0, 128, (batch, length)), -1)
    labels[:, 1] = 5
    return {"input_ids": rng.integers(0, 128, (batch, length)),
            "token_type_ids": np.zeros((batch, length), np.int64),
            "attention_mask": np.ones((batch, 1, 1, length), np.int64),
            "next_sentence_labels": rng.integers(0, 2, (batch, 1)), "masked_lm_labels": labels}


def _step(cfg_kwargs, compiled=False, fetch="loss", eval_only=False):
    """Loss of one training step (or the eval program's MLM loss) on the GPU, fixed seed and batch."""
    import paddle
    import program as P
    from utils.amp_state import init_pure_fp16
    paddle.enable_static()
    bundle = P.build_pretraining(_tiny(), P.TrainConfig(device="gpu", total_steps=4, learning_rate=1e-3,
                                                        seed=7, **cfg_kwargs))
    place, scope = paddle.CUDAPlace(0), paddle.static.Scope()
    exe = paddle.static.Executor(place)
    with paddle.static.scope_guard(scope):
        exe.run(bundle.startup_program)
        if cfg_kwargs.get("use_pure_fp16"):
            init_pure_fp16(bundle, place, scope)
        if eval_only:
            return exe.run(bundle.eval_program, feed=_batch(), fetch_list=[bundle.eval_fetches["mlm_loss"]])
        prog = bundle.main_program
        if compiled:
            prog = paddle.static.CompiledProgram(prog, build_strategy=bundle.build_strategy)
        return exe.run(prog, feed=_batch(), fetch_list=[bundle.fetches[fetch]])


def check_amp(key, name):
    ref = _step({})
    out = []
    for label, kwargs in (("O1", {"amp": "fp16"}), ("O2", {"amp": "fp16", "use_pure_fp16": True})):
        ok, detail = compare(ref, _step(kwargs))
        out.append(f"{label}: {detail}")
        if not ok:
            return [Result(key, name, FAILED, "; ".join(out))]
    return [Result(key, name, PASSED, "; ".join(out))]


def check_fusions(key, name):
    import program as P
    fields = {f.name for f in dataclasses.fields(P.TrainConfig)}
    flags = ["fuse_mha"] if key == "b" else list(FUSION_FLAGS)
    results = []
    ref = _step({"amp": "fp16"}, eval_only=True)
    for flag in flags:
        if flag not in fields:
            results.append(Result(key, flag, f"{NOT_RUN}: program.TrainConfig has no {flag} in this build", ""))
            continue
        ok, detail = compare(ref, _step({"amp": "fp16", flag: True}, eval_only=True))
        results.append(Result(key, flag, PASSED if ok else FAILED, detail))
    return results


def check_compiled(key, name):
    import numpy as np
    loss = _step({"amp": "fp16"}, compiled=True)
    ok = bool(np.all(np.isfinite(np.asarray(loss[0]))))
    return [Result(key, name, PASSED if ok else FAILED, f"loss {float(np.asarray(loss[0]).ravel()[0]):.4f}")]


def _python(args, seconds, workdir):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=seconds)


def _pretrain_data(workdir, seconds):
    """(shard dir, vocab) of a small phase-1 dataset made by the project's own data CLIs."""
    root = os.path.join(workdir, "data")
    if not os.path.isdir(os.path.join(root, "p128")):
        for args in (["-m", "data.prep.sample_corpus", "--output-dir", f"{root}/source", "--num-files", "2",
                      "--max-bytes", "400000"],
                     ["-m", "data.prep.build_vocab", "--input", f"{root}/source", "--output", f"{root}/vocab.txt",
                      "--vocab-size", "2000", "--do-lower-case"],
                     ["-m", "data.prep.preprocess_bert_pretrain", "--source", f"{root}/source", "--sink",
                      f"{root}/p128", "--vocab-file", f"{root}/vocab.txt", "--do-lower-case",
                      "--target-seq-length", "128", "--bin-size", "64", "--masking",
                      "--max-predictions-per-seq", "20", "--num-workers", "1", "--seed", "3"],
                     ["-m", "data.prep.balance_dask_output", "--indir", f"{root}/p128", "--num-shards", "2"]):
            proc = _python(args, seconds, workdir)
            if proc.returncode:
                raise RuntimeError(f"{args[1]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return f"{root}/p128", f"{root}/vocab.txt"


def _pretrain_args(data, vocab, out, *extra):
    return [os.path.join(REPO, "run_pretraining.py"), "--input-dir", data, "--vocab-file", vocab,
            "--output-dir", out, "--phase1", "--device", "gpu", "--amp", "--batch-size", "8",
            "--num-steps-per-checkpoint", "2", "--report-file", os.path.join(out, "report.json"),
            "--config-file", os.path.join(REPO, "bert_configs", "bert-tiny.json"), *extra]


def _final_loss(proc):
    losses = re.findall(r"\bloss[=: ]+([0-9.eE+-]+)", proc.stdout + proc.stderr)
    if not losses:
        raise RuntimeError("no loss in the run's log")
    return float(losses[-1])


def check_resume(key, name, seconds, workdir):
    data, vocab = _pretrain_data(workdir, seconds)
    whole = _python(_pretrain_args(data, vocab, f"{workdir}/whole", "--max-steps", "4"), seconds, workdir)
    part = _python(_pretrain_args(data, vocab, f"{workdir}/part", "--max-steps", "4", "--steps-this-run", "2"),
                   seconds, workdir)
    rest = _python(_pretrain_args(data, vocab, f"{workdir}/part", "--max-steps", "4"), seconds, workdir)
    for proc in (whole, part, rest):
        if proc.returncode:
            return [Result(key, name, FAILED, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")]
    ok, detail = compare([_final_loss(whole)], [_final_loss(rest)])
    return [Result(key, name, PASSED if ok else FAILED, f"final loss, resumed vs uninterrupted: {detail}")]


def check_squad(key, name, seconds, workdir):
    data, vocab = _pretrain_data(workdir, seconds)
    init = f"{workdir}/squad_init"
    proc = _python(_pretrain_args(data, vocab, init, "--max-steps", "2"), seconds, workdir)
    if proc.returncode:
        return [Result(key, name, FAILED, f"pretraining the init failed: exit {proc.returncode}")]
    sample = os.path.join(REPO, "data", "samples", "squad")
    proc = _python([os.path.join(REPO, "run_squad.py"), "--mode", "train_eval", "--amp", "--device", "gpu",
                    "--vocab-file", vocab, "--do-lower-case", "--bert-model", "custom",
                    "--config-file", os.path.join(REPO, "bert_configs", "bert-tiny.json"),
                    "--from-pretrained-params", os.path.join(init, "phase1"),
                    "--train-file", f"{sample}/train-v1.1.json", "--predict-file", f"{sample}/dev-v1.1.json",
                    "--output-dir", f"{workdir}/squad", "--max-steps", "4", "--train-batch-size", "8",
                    "--max-seq-length", "128"], seconds, workdir)
    found = re.search(r"exact_match\W+([0-9.]+).*?f1\W+([0-9.]+)", proc.stdout + proc.stderr, re.S)
    if proc.returncode or not found:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return [Result(key, name, FAILED, f"exit {proc.returncode}: {tail}")]
    return [Result(key, name, PASSED, f"EM {found.group(1)}, F1 {found.group(2)} (computed; value not judged)")]


def check_benchmark(key, name, seconds, workdir):
    from benchmarks import gpu_model
    data, vocab = _pretrain_data(workdir, seconds)
    predicted = gpu_model.main(["--phase", "1", "--gpus", "1"])[1]["seq_per_s_1gpu"]
    args = _pretrain_args(data, vocab, f"{workdir}/bench", "--benchmark", "--benchmark-steps", "10",
                          "--benchmark-warmup-steps", "5", "--fuse-mha")
    i = args.index("--config-file")
    args[i + 1] = os.path.join(REPO, "bert_configs", "bert-large-uncased.json")
    args[args.index("--batch-size") + 1] = "256"
    proc = _python(args, seconds, workdir)
    found = re.findall(r"([0-9.]+) seq/s", proc.stdout + proc.stderr)
    if proc.returncode or not found:
        return [Result(key, name, FAILED, f"exit {proc.returncode}: no seq/s in the log")]
    measured = float(found[-1])
    return [Result(key, name, PASSED, f"measured {measured:.0f} seq/s, model {predicted:.0f}, "
                                      f"ratio {measured / predicted:.2f} (data: the tiny sample's vocabulary)")]


def run_check(key, name, seconds, workdir):
    """Results of one check (c gives one per fusion flag)."""
    if key == "a":
        return check_amp(key, name)
    if key in ("b", "c"):
        return check_fusions(key, name)
    if key == "d":
        return check_compiled(key, name)
    return {"e": check_squad, "f": check_resume, "g": check_benchmark}[key](key, name, seconds, workdir)
