"""The three kinds of error, told apart everywhere: exceptions, exit codes and reports (DESIGN, "Errors").

=============  ==========================================================  =========  ==================
kind           meaning                                                     exit code  what is written
=============  ==========================================================  =========  ==================
bad input      the user's input is wrong: a missing file, NaN weights, a   2          nothing
               validation split as calibration, an unknown option
refusal        the input is fine but the answer is "no" or "not here": a   3          nothing, unless the
               gate that fails, a probe budget exceeded, a tail the                   user asked for a
               chosen estimator cannot bound                                          report of the refusal
internal       anything else: a bug. Reported with its traceback.          1          nothing
=============  ==========================================================  =========  ==================

:class:`BadInput` subclasses ``ValueError`` so that library callers who catch ``ValueError`` keep working;
:class:`Refusal` deliberately does not (a computational limit is not bad input). Command-line front ends
map exceptions to exit codes with :func:`exit_code`.
"""

from __future__ import annotations

__all__ = [
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_BAD_INPUT",
    "EXIT_REFUSED",
    "BadInput",
    "Refusal",
    "LimitExceeded",
    "exit_code",
    "EXIT_CODES_HELP",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3

EXIT_CODES_HELP = (
    "exit codes: 0 success; 2 bad input (a clear message, nothing written); "
    "3 refused (a failed gate or check, or a computational limit; nothing written); "
    "1 internal error (a bug: please report it with the traceback)"
)


class BadInput(ValueError):
    """The user's input is wrong (exit code 2, nothing written). The message names what and where."""


class Refusal(RuntimeError):
    """Valid input, but the command refuses: a failed gate or check, or a limit (exit code 3)."""


class LimitExceeded(Refusal):
    """A computational limit was reached (a probe budget, a memory bound) before an answer was found."""


def exit_code(exc: BaseException) -> int:
    """The exit code of an exception under the three-kinds rule (``FileNotFoundError`` is bad input)."""
    if isinstance(exc, (BadInput, FileNotFoundError)):
        return EXIT_BAD_INPUT
    if isinstance(exc, Refusal):
        return EXIT_REFUSED
    return EXIT_INTERNAL
