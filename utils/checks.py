"""Type checks for values that come from configs and callers, shared so each is written once.

Owns: `is_int`, `is_number` and `preview` (a list of names shortened for one message line). They exist because `bool` is a subclass of `int` in Python: a hand-written
`isinstance(x, int)` accepts `True` as a batch size. Imports nothing of the project, so every layer
(`modeling`, `lr_scheduler`, `program`, `data`, `utils`) may use it.
"""
import numbers


def is_int(value):
    """True for an integer (Python or numpy), never for a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """True for a real number (int or float, Python or numpy), never for a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


PREVIEW = 5  # names listed in a message before "... and N more": a line a reader takes in at a glance


def preview(names):
    """`names` for one log or error line: all of a few; else the count and the first `PREVIEW`."""
    names = [str(n) for n in names]  # steps are ints, variable names str: both are listed
    if len(names) <= PREVIEW:
        return ", ".join(names)
    return f"{len(names)}: " + ", ".join(names[:PREVIEW]) + f", ... and {len(names) - PREVIEW} more"
