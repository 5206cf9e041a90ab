"""Stability across seeds: run one configuration with K seeds and tabulate its final metrics, as the seeds'
READMEs report them ("Seed 0 ... Seed K-1, Mean, Standard Deviation" for pretraining final loss and SQuAD F1).

Usage (from the repo root):
  python -m benchmarks.stability --preset cpu_demo --seeds 3 --output-dir results/stability
      # per seed: scripts/run_pretraining.sh (cpu_demo preset: bert-tiny, phase 1 + phase 2 on the embedded
      # sample) -> scripts/run_squad.sh (fine-tuned on the embedded SQuAD sample, EM/F1 on its dev file)
  python -m benchmarks.stability --preset squad_cpu_demo --init-checkpoint results/bert-tiny/phase2 --seeds 5 ...
      # fine-tuning alone, every seed from the same pretrained checkpoint
  python -m benchmarks.stability --seeds 5 --output-dir out \\
      --command "python run_squad.py ... --seed {seed} --output-dir {out}" \\
      --metric "F1={out}/bert-tiny/squad/report.json:F1"            # any configuration (GPU recipes too)

Why here (benchmarks/) and not scripts/: scripts/ holds thin shell launchers without logic; this is a
measurement driver with its own logic (resuming, statistics, plotting), like the other benchmarks, and it
drives the launchers rather than duplicating their presets.

Owns: running each seed's commands (with `{seed}` and `{out}` = that seed's directory substituted), reading
the DLLogger summaries (`utils.report.final_summary`), the table (`summarise`, `to_markdown`) and the plot.
Does not own training or scoring (the run scripts) nor the report format (`utils.report`).

Outputs in --output-dir: seed-<k>/ (each seed's runs, logs and `result.json`), stability.md, stability.json,
stability.png, and config.json (what was run). Resumable: a seed with a `result.json` is not run again, an
unfinished one is re-run (the pretraining launcher itself resumes from its checkpoints); another
configuration in the same --output-dir is refused. The standard deviation is the sample one (n - 1).
Exit status 0, 2 (bad flags, a failed seed: one `error:` line naming its log), 3 (disk full).
"""
import zlib  # noqa: F401  -- the project's entry-point order (the commands it runs import paddle themselves)
import utils.preflight  # noqa: F401

import io
import json
import logging
import math
import os
import shlex
import statistics
import subprocess
import sys

from utils.cli import ArgumentParser
from utils.fs import atomic_write_bytes, atomic_write_json, atomic_write_text
from utils.report import final_summary, read_dllogger_report

logger = logging.getLogger("benchmarks.stability")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
SQUAD_SAMPLE = os.path.join(REPO, "data", "samples", "squad")


def _preset_values(config_file, function):
    """The positional values a configs/*.sh preset function echoes (e.g. cpu_demo)."""
    script = f"source {shlex.quote(os.path.join(REPO, 'configs', config_file))} && {function}"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    return out.stdout.split()


def _squad_command(init_checkpoint):
    """scripts/run_squad.sh with configs/squad_config.sh's cpu_demo values, on the embedded SQuAD sample
    (as scripts/demo.sh runs it without a downloaded SQuAD), this seed's seed and directory."""
    values = _preset_values("squad_config.sh", "cpu_demo")
    values[0], values[1], values[7], values[8], values[10] = init_checkpoint, "10", "{seed}", SQUAD_SAMPLE, "{out}"
    return ["env", "DEVICE=cpu", "bash", os.path.join(REPO, "scripts", "run_squad.sh"), *values]


def preset(name, init_checkpoint=None):
    """(commands, metrics) of a named configuration.

    Returns:
      commands: list of argv lists (with {seed}/{out} placeholders); metrics: list of (label, report path
      template, summary key).

    Raises:
      ValueError: unknown preset, or squad_cpu_demo without --init-checkpoint.
    """
    squad_metrics = [("SQuAD F1", "{out}/dllogger_1_fp32.json", "F1"),
                     ("SQuAD exact match", "{out}/dllogger_1_fp32.json", "exact_match")]
    if name == "cpu_demo":
        values = _preset_values("pretrain_config.sh", "cpu_demo")
        values[9] = "{seed}"  # argument 10; the shared demo_output/ shards are built once (first seed)
        steps2 = values[14]
        # RESULTS_DIR is the launcher's (environment) knob for where checkpoints and reports go.
        pretrain = ["env", "RESULTS_DIR={out}", "DEVICE=cpu", "bash", os.path.join(REPO, "scripts", "run_pretraining.sh"),
                    *values]
        return ([pretrain, _squad_command(f"{{out}}/bert-tiny/phase2/{steps2}")],
                [("Phase 1 final loss", "{out}/dllogger_p1.json", "final_loss"),
                 ("Phase 2 final loss", "{out}/dllogger_p2.json", "final_loss"), *squad_metrics])
    if name == "squad_cpu_demo":
        if not init_checkpoint:
            raise ValueError("--preset squad_cpu_demo needs --init-checkpoint (the pretrained model every seed "
                             "fine-tunes)")
        return [_squad_command(os.path.abspath(init_checkpoint))], squad_metrics
    raise ValueError(f"--preset must be cpu_demo or squad_cpu_demo, got {name!r}")


def parse_metric(text):
    """--metric "LABEL=REPORT:KEY" -> (label, report path template, key). Raises ValueError."""
    label, sep, rest = text.partition("=")
    path, sep2, key = rest.rpartition(":")
    if not (sep and sep2 and label.strip() and path and key):
        raise ValueError(f"--metric must look like 'LABEL=REPORT_PATH:SUMMARY_KEY', got {text!r}")
    return label.strip(), path, key


def _fill(template, seed, out):
    return template.replace("{seed}", str(seed)).replace("{out}", out)


def run_seed(index, seed, commands, metrics, output_dir, env=None):
    """Run one seed's commands (unless its result exists) and return {label: value}.

    Raises:
      ValueError: a command failed (naming its log file), or a report lacks a metric.
    """
    out = os.path.join(output_dir, f"seed-{index}")
    result_path = os.path.join(out, RESULT_FILE)
    if os.path.isfile(result_path):
        with open(result_path, encoding="utf-8") as f:
            done = json.load(f)
        if done.get("seed") != seed:
            raise ValueError(f"{result_path} was run with --seed {done.get('seed')}, not {seed}: keep --base-seed "
                             f"as it was, or use another --output-dir")
        logger.info("seed %d (%d): finished before, not re-run", index, seed)
        return done["metrics"]
    os.makedirs(out, exist_ok=True)
    for number, command in enumerate(commands):
        argv = [_fill(part, seed, out) for part in command]
        log_path = os.path.join(out, f"command-{number}.log")
        logger.info("seed %d (%d): %s  (log: %s)", index, seed, shlex.join(argv), log_path)
        with open(log_path, "w", encoding="utf-8") as log:
            code = subprocess.call(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        if code != 0:
            raise ValueError(f"seed {index} (--seed {seed}): command {number} exited with status {code}; see "
                             f"{log_path} (finished seeds are kept: re-run the same command to continue)")
    values = {label: _read_metric(_fill(path, seed, out), key) for label, path, key in metrics}
    atomic_write_json(result_path, {"seed": seed, "metrics": values})
    return values


def _read_metric(path, key):
    if not os.path.isfile(path):
        raise ValueError(f"report '{path}' was not written; check --metric paths against where the commands "
                         f"write their --report-file")
    summary = final_summary(read_dllogger_report(path))
    if key not in summary:
        raise ValueError(f"report '{path}' has no summary value '{key}' (it has: {', '.join(sorted(summary))})")
    return float(summary[key])


def summarise(seeds, per_seed):
    """The table as data.

    Args:
      seeds: list of int seeds, in run order; per_seed: list of {label: value}, one per seed.

    Returns:
      dict: seeds, metrics {label: {values, mean, std}} (std: sample standard deviation, None for one seed).
    """
    labels = list(per_seed[0])
    table = {}
    for label in labels:
        values = [row[label] for row in per_seed]
        table[label] = {"values": values, "mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else None}
    return {"seeds": list(seeds), "metrics": table}


def _number(value):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def to_markdown(summary):
    """The Markdown table: one row per metric; columns Seed 0..K-1, Mean, Standard Deviation."""
    k = len(summary["seeds"])
    head = ["Metric"] + [f"Seed {i}" for i in range(k)] + ["Mean", "Standard Deviation"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in summary["metrics"].items():
        cells = [label] + [_number(v) for v in row["values"]] + [_number(row["mean"]), _number(row["std"])]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(f"Seed {i} = --seed {s}" for i, s in enumerate(summary["seeds"]))
    return "\n".join(lines) + f"\n\n({seeds}; standard deviation over seeds, n - 1.)\n"


def plot(summary, path):
    """One panel per metric: each seed's value, the mean (line) and mean +- one standard deviation (band)."""
    from matplotlib.figure import Figure

    labels = list(summary["metrics"])
    fig = Figure(figsize=(6.0, 2.2 * len(labels)))
    axes = fig.subplots(len(labels), 1, squeeze=False)[:, 0]
    for ax, label in zip(axes, labels):
        row = summary["metrics"][label]
        xs = list(range(len(row["values"])))
        ax.plot(xs, row["values"], "o", color="C0", label="seed")
        ax.axhline(row["mean"], color="C1", label="mean")
        if row["std"] is not None:
            ax.axhspan(row["mean"] - row["std"], row["mean"] + row["std"], color="C1", alpha=0.2, label="± 1 std")
        ax.set_title(label, fontsize=9)
        ax.set_xticks(xs, [f"Seed {i}" for i in xs])
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def _check_config(output_dir, config):
    """Write the configuration, or refuse a different one where seeds of another configuration finished."""
    path = os.path.join(output_dir, CONFIG_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        if before != config:
            raise ValueError(f"--output-dir '{output_dir}' holds seeds of another configuration ({path}); its "
                             f"finished seeds would be mixed into this table: use another --output-dir")
        return
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_json(path, config)


def run(commands, metrics, seeds, output_dir):
    """Run every seed (skipping finished ones), write stability.{md,json,png}. Returns the summary dict."""
    # Seeds are not part of it: asking for more seeds later runs only the new ones.
    config = {"commands": commands, "metrics": [list(m) for m in metrics]}
    _check_config(output_dir, config)
    env = dict(os.environ)
    env.setdefault("PYTHON", sys.executable)  # the launchers' interpreter: this one, which has paddle
    per_seed = [run_seed(i, seed, commands, metrics, output_dir, env) for i, seed in enumerate(seeds)]
    summary = summarise(seeds, per_seed)
    markdown = to_markdown(summary)
    atomic_write_text(os.path.join(output_dir, "stability.md"), markdown)
    atomic_write_json(os.path.join(output_dir, "stability.json"), summary)
    plot(summary, os.path.join(output_dir, "stability.png"))
    logger.info("stability over %d seeds:\n%s", len(seeds), markdown)
    return summary


def _parser():
    p = ArgumentParser(prog="python -m benchmarks.stability", description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True, help="where each seed runs and the table is written")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds K (>= 1)")
    p.add_argument("--base-seed", type=int, default=1, help="seed k runs with --seed base-seed + k")
    p.add_argument("--preset", default=None, help="cpu_demo (pretraining -> SQuAD) or squad_cpu_demo")
    p.add_argument("--init-checkpoint", default=None, help="squad_cpu_demo: the checkpoint every seed fine-tunes")
    p.add_argument("--command", action="append", default=[],
                   help="a command of each seed (shell words; {seed} and {out} are substituted); repeat for "
                        "several, run in order")
    p.add_argument("--metric", action="append", default=[],
                   help="LABEL=REPORT:KEY: summary value KEY of the DLLogger report REPORT ({out}, {seed} "
                        "substituted); repeat for several")
    return p


def main(argv=None):
    """CLI entry point: returns the summary dict; raises ValueError on bad flags or a failed seed."""
    args = _parser().parse_args(argv)
    if args.seeds < 1 or args.base_seed < 0:
        raise ValueError(f"--seeds must be >= 1 and --base-seed >= 0, got {args.seeds} and {args.base_seed}")
    if args.preset and (args.command or args.metric):
        raise ValueError("give --preset or --command/--metric, not both")
    if args.preset:
        commands, metrics = preset(args.preset, args.init_checkpoint)
    elif args.command and args.metric:
        commands, metrics = [shlex.split(c) for c in args.command], [parse_metric(m) for m in args.metric]
    else:
        raise ValueError("give --preset NAME, or at least one --command and one --metric")
    seeds = [args.base_seed + k for k in range(args.seeds)]
    return run(commands, metrics, seeds, os.path.abspath(args.output_dir))


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli(main))
