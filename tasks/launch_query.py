"""What the shell launchers ask Python, so that a rule Python owns is never written again in bash.

Usage (from the repository root, as scripts/run_pretraining.sh calls it):

    python -m tasks.launch_query global-batch --batch-size 256 --gradient-merge-steps 32 --processes 8
    65536
    python -m tasks.launch_query latest-step results/bert-large-uncased/phase1
    7038            (nothing at all when the directory holds no complete checkpoint)

Owns: `global_batch`, the one formula for the sequences of one optimizer step (`PretrainSession` records
and checks it in every checkpoint; the launcher names its log files by it), and this command line. Does not
own what makes a checkpoint complete (`utils.checkpoint.CheckpointManager.latest_complete_step`, asked here,
never re-implemented), where a phase's checkpoints live (the launcher passes the directory it also gives
run_pretraining.py), nor what the launcher does with an answer.

Why a module of its own: the launcher asks between its commands, so the answer must come fast. `global-batch`
imports nothing heavy (which is also why `global_batch` lives here and not in `tasks.config`: that module
imports `program`, hence paddle); `latest-step` imports `utils.checkpoint`, which imports paddle (about
1.5 s), and so does that import only when asked.

Output and exit statuses (what the launcher relies on): the answer on one stdout line and status 0;
`latest-step` with no complete checkpoint (or no directory) prints nothing and still exits 0, so that a
status other than 0 always means the question could not be answered: 2 for a bad argument (one `error:`
line, or argparse's usage), 1 with a traceback for a bug.
"""
import argparse
import sys

from utils.checks import is_int
from utils.cli import ArgumentParser, run_cli


def global_batch(batch_size, gradient_merge_steps, processes):
    """Sequences per optimizer step over all processes: the unit a pretraining run is resumed in.

    Args:
      batch_size: int >= 1, micro-batch per process (`--batch-size`).
      gradient_merge_steps: int >= 1, micro-batches merged into one update (`--gradient-merge-steps`).
      processes: int >= 1, data-parallel processes (the world size).

    Returns:
      int, batch_size * gradient_merge_steps * processes.

    Raises:
      ValueError: an argument is not an int >= 1 (a zero would name a log file `gbs0` or record an
        impossible checkpoint instead of failing).
    """
    for name, value in (("batch_size", batch_size), ("gradient_merge_steps", gradient_merge_steps),
                        ("processes", processes)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(batch_size) * int(gradient_merge_steps) * int(processes)


def latest_complete_step(phase_dir):
    """The newest complete checkpoint step under `phase_dir` (`<phase dir>/<step>/`), or None.

    Args:
      phase_dir: str, a phase's checkpoint root (absent: None).

    Returns:
      int or None, as `CheckpointManager.latest_complete_step` decides: a step directory counts only if
      its progress.json parses and names its step, the parameters file exists and every recorded size
      matches. Damaged and interrupted saves do not count; nothing is verified by checksum or modified.
    """
    import utils.preflight  # noqa: F401  -- zlib before paddle; only this question needs paddle
    from utils.checkpoint import CheckpointManager  # imports paddle: here, so global-batch starts fast
    return CheckpointManager(phase_dir).latest_complete_step()


def _positive_int(text):
    """argparse type: a decimal int >= 1 (leading zeros allowed, as the launcher's own checks allow them)."""
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got '{text}'")
    return value


def build_parser():
    """The argparse parser: one sub-command per question."""
    parser = ArgumentParser(prog="python -m tasks.launch_query", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{global-batch,latest-step}")
    gbs = verbs.add_parser("global-batch", help="print sequences per optimizer step over all processes")
    gbs.add_argument("--batch-size", type=_positive_int, required=True, help="micro-batch per process")
    gbs.add_argument("--gradient-merge-steps", type=_positive_int, required=True,
                     help="micro-batches merged into one update")
    gbs.add_argument("--processes", type=_positive_int, required=True, help="data-parallel processes")
    latest = verbs.add_parser("latest-step", help="print the newest complete checkpoint step of a phase "
                                                  "directory; nothing when there is none")
    latest.add_argument("phase_dir", help="e.g. results/bert-large-uncased/phase1")
    return parser


def main(argv=None):
    """Answer one question on stdout.

    Returns:
      int, the answer; None for `latest-step` without a complete checkpoint (nothing is printed).

    Raises:
      SystemExit(2): bad arguments (argparse).
    """
    args = build_parser().parse_args(argv)
    if args.verb == "global-batch":
        answer = global_batch(args.batch_size, args.gradient_merge_steps, args.processes)
    else:
        answer = latest_complete_step(args.phase_dir)
    if answer is not None:
        print(answer)
    return answer


if __name__ == "__main__":
    sys.exit(run_cli(main))
