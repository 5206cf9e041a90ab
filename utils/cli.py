"""Running a command-line entry point: logging set-up, one-line errors, exit codes.

Owns: `run_cli`, the one place that turns what a CLI's `main(argv)` raises into what a user sees and the
exit status a shell script tests; `ArgumentParser`, the argparse every command builds its flags with, so
that every `--help` shows every default the same way. Does not own the flags themselves (each CLI
defines its own) nor logging configuration (`utils.logger.init_logging`).

The contract every data CLI follows:
  * `main(argv=None)` does the work and returns its result, raising on bad input, so tests call it
    in-process and assert on the exception;
  * `if __name__ == "__main__": sys.exit(run_cli(main))` is all a module adds to become a command.

Exit statuses: 0 success; 2 bad input (ValueError, FileNotFoundError, FileExistsError, an OSError naming
a file, or a type the caller maps to 2), printed as ONE line `error: <message>` on stderr; 3 the storage
refused a write (full disk ENOSPC, quota EDQUOT, read-only filesystem EROFS; with or without a file name,
also when Arrow reports it), one line naming what failed and why; another code a caller maps a type to
(e.g. a failed download -> 1); 130 on Ctrl-C. Anything else is a bug in this
program: it propagates with its traceback (Python then exits with status 1), because hiding a traceback
behind a one-line message would make it undiagnosable.
"""
import argparse
import errno
import sys

from utils.fs import STORAGE_ERRORS, storage_errno
from utils.logger import init_logging

EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3  # the filesystem refused a write: free space / quota, or choose a writable place, re-run
_STORAGE_HINTS = {errno.ENOSPC: "free space on that filesystem", errno.EDQUOT: "free space within your quota",
                  errno.EROFS: "choose a writable location"}
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped with Ctrl-C



class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already mentions its default or there
    is nothing to say (no default, a flag that is off, --help). One rule for every command, instead of ArgumentDefaultsHelpFormatter's "(default: None)"
    after help texts that already said "(default 32)"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if text is argparse.SUPPRESS or "default" in text.lower():
            return text
        if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0 and action.default is True:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)".strip()


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser with `HelpFormatter` (every default shown once) unless told otherwise."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


# Errors that describe the user's input or files, not a defect of the program.
_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def _exit_code(err, exit_codes):
    """Exit status for `err`, or None when it is a bug that must keep its traceback."""
    for error_type, code in exit_codes.items():
        if isinstance(err, error_type):
            return code
    if storage_errno(err) is not None:
        return EXIT_STORAGE
    if isinstance(err, _INPUT_ERRORS):
        return EXIT_BAD_INPUT
    if isinstance(err, OSError) and err.filename is not None:  # e.g. permission denied on a named file
        return EXIT_BAD_INPUT
    return None


def storage_message(err):
    """The one line for a write the storage refused: what failed, why, and what to do.

    Args:
      err: an exception for which `utils.fs.storage_errno` is not None.

    Returns:
      str without the `error: ` prefix.
    """
    code = storage_errno(err)
    where, link = None, err
    while link is not None and where is None:  # the first file named along the chain of causes
        where = getattr(link, "filename", None)
        link = link.__cause__ or link.__context__
    target = f"writing '{where}' failed" if where is not None else "a write failed"
    detail = one_line(err)
    return f"{target}: {STORAGE_ERRORS[code]} ({detail}); {_STORAGE_HINTS[code]}, then re-run"


def one_line(err):
    """The message of `err` on a single line (line breaks inside it become spaces)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at write time: a log handler bound to the stream of its set-up
    would keep writing into a replaced (e.g. test-captured, since closed) stream after it is swapped back."""

    follows_sys_stderr = True  # `utils.logger`'s handler clears progress bars on the real sys.stderr first

    def write(self, text):
        return sys.stderr.write(text)

    def flush(self):
        sys.stderr.flush()


def run_cli(main, argv=None, *, rank=0, exit_codes=None, stderr=None):
    """Run `main(argv)` as a command: set up logging, report expected errors in one line, return a status.

    Args:
      main: callable taking argv (list[str] or None for sys.argv[1:]); its return value is discarded.
      argv: list[str] or None.
      rank: int, this process's rank, passed to `init_logging` (other ranks log warnings only).
      exit_codes: optional {exception type: int exit status} for the CLI's own error types, checked
        before the built-in input errors (so a subclass of ValueError can get its own status).
      stderr: text stream for the error line (default sys.stderr, looked up at call time).

    Returns:
      int exit status: 0, 2 (bad input), 3 (storage full / over quota / read-only), a status from
      `exit_codes`, 130 (KeyboardInterrupt), or the
      status of a SystemExit raised inside `main` (argparse's usage errors exit with 2).

    Raises:
      Any other exception from `main`, unchanged (a genuine bug keeps its traceback).
    """
    init_logging(rank, stream=_CurrentStderr())
    stream = stderr if stderr is not None else sys.stderr
    try:
        main(argv)
    except KeyboardInterrupt:
        stream.write("error: interrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit as exit_:  # argparse's --help (0) and usage errors (2)
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        raise
    except Exception as err:  # noqa: BLE001 -- classified below; bugs are re-raised untouched
        code = _exit_code(err, exit_codes or {})
        if code is None:
            raise
        message = storage_message(err) if code == EXIT_STORAGE and storage_errno(err) else one_line(err)
        stream.write(f"error: {message}\n")
        stream.flush()
        return code
    return 0
