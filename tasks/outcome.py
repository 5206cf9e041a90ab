"""How a finished run reports to its user: a plain `results.json`, and what to do next.

Owns: `write_results` (the run's final figures as one flat JSON object beside its DLLogger report, like
Hugging Face's `all_results.json`: easy to read from a script, no JSON-lines parsing) and the "next"
lines each entry point logs at the end (`pretraining_next_steps`, `squad_next_steps`, `glue_next_steps`):
after phase 1 the phase-2 command, after phase 2 the SQuAD command, after SQuAD where the predictions are,
after GLUE where the model, the dev scores and the submission files are and how to predict test.tsv. Does not own
the report itself (`utils.report`) or the runs.

Why: a new user's question after a run is "did it work, and what now?"; the answer should be the last
thing the run prints, not a README search.
"""
import json
import logging
import math
import os
import shlex

from utils.fs import atomic_write_text

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


_SKIP = object()


def _plain(value):
    """A JSON-safe scalar (numpy numbers become Python ones, non-finite floats null), or _SKIP for a
    container or anything else that is not one number or string."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, (list, tuple, dict, set)) or getattr(value, "ndim", 0) > 0:
        return _SKIP
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _SKIP
    if number.is_integer() and getattr(value, "dtype", None) is not None and value.dtype.kind in "iu":
        return int(number)
    return number if math.isfinite(number) else None


def results_path(report_file):
    """results.json beside a report named report.json (the default); beside any other report,
    `<its stem>.results.json`, so that reports sharing a directory (run_pretraining.sh writes
    dllogger_p1.json and dllogger_p2.json into one) keep one results file each."""
    directory, name = os.path.split(os.path.abspath(report_file))
    stem = os.path.splitext(name)[0]
    return os.path.join(directory, RESULTS_FILE if stem == "report" else f"{stem}.{RESULTS_FILE}")


def write_results(report_file, results):
    """Write the scalar entries of `results` to `results_path(report_file)` (atomically).

    Args:
      report_file: path of the run's DLLogger report; results.json goes beside it.
      results: dict of the run's final figures; lists, dicts and other non-scalars are left out (they
        live in the report and the output files).

    Returns:
      the path written.
    """
    path = results_path(report_file)
    atomic_write_text(path, json.dumps(json_scalars(results), indent=2, sort_keys=True) + "\n")
    return path


def json_scalars(results):
    """The scalar entries of `results` as strict-JSON values: numpy numbers become Python ones and NaN or
    infinities null (Python's `json` would write the literals NaN / Infinity, which strict parsers reject);
    lists, dicts and other non-scalars are left out."""
    flat = {key: _plain(value) for key, value in results.items()}
    return {key: value for key, value in flat.items() if value is not _SKIP}


def _command(words):
    return " ".join(shlex.quote(str(w)) for w in words)


def pretraining_next_steps(cfg, step_dir, step):
    """What to run after a pretraining invocation that ended at `step` with its last checkpoint in
    `step_dir` (None: none written).

    Args:
      cfg: tasks.config.PretrainConfig of the invocation.
      step_dir: the last checkpoint's directory, or None (benchmark runs write none).
      step: the global step reached.

    Returns:
      list of str lines for the log.
    """
    if step_dir is None:
        return ["next: this run wrote no checkpoint (benchmark mode); drop --benchmark to train"]
    if step < cfg.max_steps:  # --steps-this-run ended the invocation before the phase's end
        return [f"next: phase {cfg.phase} is at step {step} of {cfg.max_steps}: run the same command again "
                "(with --from-checkpoint <phase dir> --last-step-of-checkpoint auto) to continue exactly"]
    ckpt = cfg.checkpointing
    if cfg.phase == 1:
        return ["next: phase 2 (sequence length 512) from these parameters: the same command with",
                "  " + _command(["--phase2", "--input-dir", "<seq-512 shards>", "--max-seq-length", 512,
                                 "--max-predictions-per-seq", 80, "--from-phase1-final-params", step_dir,
                                 "--from-checkpoint", os.path.join(os.path.dirname(os.path.dirname(step_dir)),
                                                                   "phase2"),
                                 "--last-step-of-checkpoint", "auto"]),
                "  (and phase 2's batch size, learning rate, warm-up and --max-steps)"]
    lower = [] if ckpt.bert_model.endswith("-cased") else ["--do-lower-case"]
    return ["next: fine-tune on SQuAD from these parameters:",
            "  " + _command(["python", "run_squad.py", "--mode", "train_eval", "--from-pretrained-params", step_dir,
                             "--vocab-file", cfg.data.vocab_file, *lower, "--bert-model", ckpt.bert_model,
                             "--train-file", "train-v1.1.json", "--predict-file", "dev-v1.1.json",
                             "--output-dir", ckpt.output_dir])]


def glue_next_steps(results, cfg):
    """Where a GLUE run's outputs are and what to run next, as log lines.

    Args:
      results: the dict `FinetuneSession.run` returned (params_file, eval_results_file, submission_files
        when the run wrote them).
      cfg: the run's tasks.finetune_config.FinetuneConfig (task, data dir, vocab, output dir).
    """
    task, lines = cfg.settings.spec.name, []
    model = os.path.dirname(results["params_file"]) if "params_file" in results else None
    if model is not None:
        lines.append(f"fine-tuned model: {model}")
    if model is not None and not results.get("submission_files"):  # a run that predicted needs no next step
        lower = ["--do-lower-case"] if cfg.text.do_lower_case else []
        lines += ["next: GLUE's submission file from test.tsv with this model:",
                  "  " + _command(["python", "run_glue.py", "--task-name", task, "--mode", "prediction",
                                   "--data-dir", cfg.settings.data_dir, "--from-checkpoint", model,
                                   "--vocab-file", cfg.text.vocab_file, *lower,
                                   "--max-seq-length", cfg.text.max_seq_length,
                                   "--output-dir", cfg.flags.get("output_dir", cfg.outputs.out_dir)])]
    if "eval_results_file" in results:
        lines.append(f"dev scores: {results['eval_results_file']}")
    for path in results.get("submission_files", ()):
        lines.append(f"submission file: {path} (upload to gluebenchmark.com with the other tasks' files)")
    return lines or [f"outputs in {cfg.outputs.out_dir}"]


def squad_next_steps(results, out_dir):
    """Where a SQuAD run's outputs are and what its scores mean, as log lines."""
    lines = []
    if "params_file" in results:
        lines.append(f"fine-tuned model: {os.path.dirname(results['params_file'])} (answer one question with "
                     f"--from-checkpoint {os.path.dirname(results['params_file'])} --question ... --context ...)")
    if "predictions_file" in results:
        lines.append(f"predictions: {results['predictions_file']}")
    if "exact_match" in results:
        lines.append(f"EM {results['exact_match']:.2f}, F1 {results['F1']:.2f} (BERT-large after the "
                     f"reference's recipe: about 84/91 on SQuAD v1.1 dev)")
    return lines or [f"outputs in {out_dir}"]
