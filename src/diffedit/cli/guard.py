"""How every command ends: exit codes, one-line errors, and the catch-all that keeps tracebacks out.

Exit codes (README, "Errors and exit codes"): 0 done; 2 the command cannot run as asked (a bad option,
an unreadable input, an unusable model, an output that cannot be written; nothing is written); 3 it ran but
changed nothing (outputs written, a warning says why); 4 it ran out of memory or its numbers overflowed to
NaN/inf (nothing is written); 1 an internal error, a bug (one line; DIFFEDIT_TRACEBACK=1 prints the
traceback); 130 interrupted. Usage errors (an unknown flag, a value of the wrong type) are one line too.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer
from typer.core import TyperGroup

__all__ = ["EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_UNCHANGED", "EXIT_FAILED", "GuardedGroup", "one_line", "classify"]

EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_UNCHANGED, EXIT_FAILED = 1, 2, 3, 4
MAX_MESSAGE = 1000


def one_line(message: str) -> str:
    """A message as one line: its lines joined, cut at MAX_MESSAGE characters."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def classify(error: BaseException) -> tuple[int, str]:
    """(exit code, message) of an exception a command raised."""
    from diffedit.errors import OUT_OF_MEMORY_ADVICE, NonFiniteError, is_out_of_memory

    if is_out_of_memory(error):
        first = one_line(str(error))[:200] or type(error).__name__
        return EXIT_FAILED, f"out of memory ({first}); nothing was written. To fit: {OUT_OF_MEMORY_ADVICE}"
    if isinstance(error, NonFiniteError):
        return EXIT_FAILED, str(error)
    if isinstance(error, (ValueError, OSError)):  # the library's bad inputs; files that cannot be read or written
        return EXIT_BAD_INPUT, str(error) or type(error).__name__
    return EXIT_INTERNAL, (
        f"internal error: {type(error).__name__}: {error} (a bug, please report it; DIFFEDIT_TRACEBACK=1 prints where)"
    )


def _is_usage_error(error: BaseException) -> bool:
    return callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)


def _error(message: str) -> None:
    typer.secho(f"error: {one_line(message)}", fg=typer.colors.RED, err=True)


class GuardedGroup(TyperGroup):
    """The app's group: runs a command, and turns whatever escapes it into one line and an exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except Exception as e:
            if _is_usage_error(e):  # click's (typer vendors its own copy: recognised by shape, not class)
                if type(e).__name__ == "NoArgsIsHelpError":  # help was asked for by giving nothing
                    e.show()
                    sys.exit(e.exit_code)
                ctx = getattr(e, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                _error(f"{e.format_message()}{hint}")
                sys.exit(EXIT_BAD_INPUT)
            if isinstance(e, typer.Abort) or type(e).__name__ == "Abort":
                _error("aborted")
                sys.exit(130)
            code, message = classify(e)
            if code == EXIT_INTERNAL and os.environ.get("DIFFEDIT_TRACEBACK"):
                traceback.print_exc()
            _error(message)
            sys.exit(code)
        sys.exit(code if isinstance(code, int) else 0)
