"""Time several sides of a comparison as whole processes, taken in turn, and summarise each side's runs.

Owns: the order (round 1: every side once, in the given order; round 2: the same again; ...) so that load
from other processes, which comes and goes, falls on every side alike; dropping a side that failed (one
warning, not once per round); and the median and spread of a side's figures. Does not own how a side is
run (the caller's `run_side`, usually `benchmarks.child.run_child`) or what it measures.
"""
import logging
import statistics

logger = logging.getLogger(__name__)


def median_spread(values):
    """The middle of a side's figures and how far apart they lie.

    Args:
      values: non-empty sequence of float (e.g. seq/s of each round).

    Returns:
      dict: median, min, max, and spread = (max - min) / median (0.0 for one value; a fraction, 0.05 is 5 %).

    Raises:
      ValueError: `values` is empty, or its median is not positive (spread would mean nothing).
    """
    if not values:
        raise ValueError("median_spread: no values")
    middle = statistics.median(values)
    if middle <= 0:
        raise ValueError(f"median_spread: the median of {list(values)} is not positive")
    return {"median": middle, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / middle}


def run_rounds(sides, run_side, rounds, requires=None):
    """Run every side once per round, round after round, in the order given.

    Args:
      sides: sequence of str, the side names in the order each round runs them.
      run_side: callable(side, round_index) -> (result dict, "") or (None, reason).
      rounds: int >= 1.
      requires: dict side -> side it needs: when that one has failed, this one is dropped too (e.g. torch
        bf16 needs the torch import that torch fp32 proved missing), with one line saying so.

    Returns:
      (runs, failures): runs maps every side that ever succeeded to its list of result dicts in round
      order; failures maps a dropped side to the reason. A side that fails is not run again.
    """
    requires = requires or {}
    runs, failures = {}, {}
    for round_index in range(rounds):
        for side in sides:
            if side in failures:
                continue
            needed = requires.get(side)
            if needed in failures:
                failures[side] = f"not run: {needed} failed ({failures[needed]})"
                logger.warning("%s %s", side, failures[side])
                continue
            result, reason = run_side(side, round_index)
            if result is None:
                failures[side] = reason
                logger.warning("%s failed in round %d of %d, not run again: %s", side, round_index + 1, rounds,
                               reason)
                continue
            runs.setdefault(side, []).append(result)
    return runs, failures
