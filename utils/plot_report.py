"""Plot DLLogger training reports: loss, learning rate and throughput against the global step.

Owns: turning one or more report files (written by `utils.report.DLLoggerJSONSink`, or by NVIDIA's
dllogger) into one PNG with 3 panels. Does not own writing or parsing reports (`utils.report`).

Usage:
    python -m utils.plot_report results/phase1.json results/phase2.json --output results/loss.png

Rules:
  - Per-step records are LOG records whose step is an int or `[epoch, global_step]`; PARAMETER,
    summary (`[]`), epoch (`[e]`) and validation (`[e, s, i]`) records are ignored. Records with the
    same step are merged and the later value wins, so a resumed run that re-logs steps supersedes
    the killed run's values.
  - Several reports are phases drawn one after another on one global step axis: a phase whose first
    step is not after the previous phase's last global step (its numbering restarted) is shifted by
    that last step (step s is drawn at last + s, or last + 1 + s for a phase counting from 0); a phase
    that already continues the numbering is used as is. A dashed vertical line marks each boundary.
  - Panels: loss (`loss`, plus `mlm_loss`/`nsp_loss` if present, and the validation losses `eval_loss`,
    `eval_mlm_loss`, `eval_nsp_loss` dashed with markers), learning rate (`learning_rate`
    or `lr`), throughput in seq/s (`seqs_per_sec` or `sequences_per_second`); each phase uses the
    first of those names it logged.
  - Errors (missing or empty report, no step records, nothing to plot, output not .png): one line on
    stderr and exit status 2. The PNG is written atomically.
"""
import utils.preflight  # noqa: F401  -- zlib before paddle, OMP threads default; must stay first

import io
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from utils.checks import is_int
from utils.fs import atomic_write_bytes, refuse_output_over_inputs
from utils.cli import ArgumentParser, run_cli
from utils.report import LR_KEYS, THROUGHPUT_KEYS, read_dllogger_report

log = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "mlm_loss", "nsp_loss")
# Validation on held-out shards (run_pretraining.py --eval-dir), drawn in the loss panel beside training's.
EVAL_LOSS_KEYS = ("eval_loss", "eval_mlm_loss", "eval_nsp_loss")
FIGSIZE = (8.0, 9.0)  # inches; at the default dpi=100 the PNG is 800 x 900 pixels
BOUNDARY_GID = "phase-boundary"


@dataclass(frozen=True)
class Phase:
    """The per-step series of one report, placed on the global step axis.

    Attributes:
      name: label (the report's file name).
      steps: int64 [n], global steps, strictly increasing.
      metrics: dict name -> float64 [n], NaN where a step did not log that metric.
    """
    name: str
    steps: np.ndarray
    metrics: dict


def _step_number(step):
    """The global step of a per-step record, or None for records that are not per-step."""
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    if isinstance(step, list) and len(step) == 2 and all(isinstance(s, int) for s in step):
        return step[1]
    return None


def collect_steps(records):
    """Merge per-step LOG records into {step: {metric: value}} (later records win).

    Args:
      records: list of dicts from `utils.report.read_dllogger_report`.

    Returns:
      dict int -> dict, sorted by step. Only int/float (not bool) values are kept.
    """
    by_step = {}
    for record in records:
        if record.get("type") != "LOG":
            continue
        step = _step_number(record.get("step"))
        if step is None:
            continue
        numbers = {k: float(v) for k, v in record["data"].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        by_step.setdefault(step, {}).update(numbers)
    return dict(sorted(by_step.items()))


def load_phases(paths):
    """Read reports and place them one after another on a global step axis (rules in module doc).

    Args:
      paths: list of report paths, in phase order.

    Returns:
      list of Phase.

    Raises:
      FileNotFoundError / OSError: a report cannot be read.
      ValueError: a report is corrupt, empty, or has no per-step records.
    """
    phases, last = [], None
    for path in paths:
        records = read_dllogger_report(path)
        if not records:
            raise ValueError(f"{path}: report is empty (no 'DLLL ' records)")
        by_step = collect_steps(records)
        if not by_step:
            raise ValueError(f"{path}: no per-step records (LOG records with an int step or "
                             "[epoch, step]); only parameters or summaries were written")
        steps = np.fromiter(by_step, dtype=np.int64)
        if last is not None and steps[0] <= last:
            # Restarted numbering: step s of this phase is drawn at last + s; a phase counting from 0
            # moves one further so its first point does not sit on the previous phase's last one.
            steps = steps + last + max(0, 1 - int(steps[0]))
        names = sorted({k for values in by_step.values() for k in values})
        metrics = {k: np.array([values.get(k, np.nan) for values in by_step.values()], dtype=np.float64)
                   for k in names}
        phases.append(Phase(os.path.basename(path), steps, metrics))
        last = int(steps[-1])
    return phases


def _first_present(metrics, aliases):
    for key in aliases:
        if key in metrics:
            return key
    return None


def _draw_panel(ax, phases, groups, ylabel):
    """Draw each alias group (e.g. ("learning_rate", "lr")) over all phases; True if anything drawn.

    Each phase uses the first alias it logged, so reports that name a metric differently still join.
    """
    drawn = False
    for color, aliases in enumerate(groups):
        labelled = False  # one legend entry per metric, however many phases carry it
        for index, phase in enumerate(phases):
            key = _first_present(phase.metrics, aliases)
            if key is None:
                continue
            values = phase.metrics[key]
            keep = ~np.isnan(values)
            # Validation points are sparse (every --eval-freq updates): dashed with markers, so a single
            # evaluation still shows.
            style = {"linestyle": "--", "marker": "o", "markersize": 3} if key.startswith("eval_") else {}
            ax.plot(phase.steps[keep], values[keep], color=f"C{color}", gid=f"{key}:{index}",
                    label=None if labelled else key, **style)
            labelled = drawn = True
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, f"no {ylabel} in report", ha="center", va="center", transform=ax.transAxes)
    return drawn


def phase_boundaries(phases):
    """x positions of phase boundaries: halfway between one phase's last step and the next's first."""
    return [(int(a.steps[-1]) + int(b.steps[0])) / 2.0 for a, b in zip(phases, phases[1:])]


def build_figure(phases, title=None):
    """A matplotlib Figure (Agg, no pyplot state) with the loss, learning-rate and throughput panels.

    Args:
      phases: non-empty list of Phase from `load_phases`.
      title: optional figure title.

    Returns:
      matplotlib.figure.Figure with exactly 3 axes sharing the x axis. Metric lines have
      gid "<metric>:<phase index>"; boundary lines have gid "phase-boundary".

    Raises:
      ValueError: no phase has any loss, learning-rate or throughput metric.
    """
    from matplotlib.figure import Figure

    present = set().union(*(p.metrics for p in phases))
    if not present.intersection(LOSS_KEYS + LR_KEYS + THROUGHPUT_KEYS):
        known = ", ".join(LOSS_KEYS + LR_KEYS + THROUGHPUT_KEYS)
        raise ValueError(f"no plottable metrics in the step records of {[p.name for p in phases]}; "
                         f"expected at least one of: {known}")
    fig = Figure(figsize=FIGSIZE)
    axes = fig.subplots(3, 1, sharex=True)
    if _draw_panel(axes[0], phases, [(k,) for k in LOSS_KEYS + EVAL_LOSS_KEYS], "loss"):
        axes[0].legend(loc="best")  # where it covers the fewest points of the curves
    _draw_panel(axes[1], phases, [LR_KEYS], "learning rate")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    _draw_panel(axes[2], phases, [THROUGHPUT_KEYS], "seq/s")
    axes[2].set_xlabel("global step")
    for number, x in enumerate(phase_boundaries(phases), start=2):
        for ax in axes:
            ax.axvline(x, color="0.4", linestyle="--", linewidth=1, gid=BOUNDARY_GID)
        # Above the top panel, so the label never covers data or the legend.
        axes[0].annotate(f"phase {number} \u2192", (x, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                         xytext=(0, 2), textcoords="offset points", ha="center", va="bottom")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reports(report_paths, output, title=None, dpi=100):
    """Plot reports (phases in order) into the PNG `output`, written atomically.

    Args:
      report_paths: non-empty list of report files.
      output: path ending in ".png"; parent directories are created.
      title: optional figure title.
      dpi: int > 0, pixels per inch (figure is 8 x 9 inches).

    Returns:
      dict with "output" (str), "phases" (int), "steps" (int, total per-step points) and
      "boundaries" (list of float x positions).

    Raises:
      ValueError: bad arguments, or a report that is empty/corrupt/has nothing to plot.
      FileNotFoundError / OSError: a report cannot be read.
    """
    if not report_paths:
        raise ValueError("give at least one report file")
    if not str(output).lower().endswith(".png"):
        raise ValueError(f"--output must be a .png file, got '{output}'")
    refuse_output_over_inputs("--output", output, [("the report", path) for path in report_paths])
    if not is_int(dpi) or dpi <= 0:
        raise ValueError(f"--dpi must be a positive int, got {dpi!r}")
    phases = load_phases(report_paths)
    fig = build_figure(phases, title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(output, buf.getvalue())
    return {"output": str(output), "phases": len(phases),
            "steps": int(sum(len(p.steps) for p in phases)), "boundaries": phase_boundaries(phases)}


def _parse_args(argv):
    parser = ArgumentParser(prog="python -m utils.plot_report", description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="+", help="DLLogger report files, in phase order")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--dpi", type=int, default=100, help="pixels per inch (figure is 8 x 9 in)")
    return parser.parse_args(argv)


def main(argv=None):
    """Plot the reports named in `argv`. Returns plot_reports' summary dict.

    Raises:
      ValueError / OSError: a missing, empty or unplottable report, or an output that is not .png (as a
        command: one `error:` line and exit status 2, like the other tools, via utils.cli.run_cli).
    """
    args = _parse_args(argv)
    result = plot_reports(args.reports, args.output, title=args.title, dpi=args.dpi)
    log.info("wrote %s (%d phase(s), %d step points)", result["output"], result["phases"], result["steps"])
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
