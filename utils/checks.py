"""Type checks for values that come from configs and callers, shared so each is written once.

Owns: `is_int` and `is_number`. They exist because `bool` is a subclass of `int` in Python: a hand-written
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
