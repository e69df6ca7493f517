"""The three kinds of error of ``mpprune`` (DESIGN, "Errors"): the names of :mod:`mptheory.errors`.

============  ===============================================================  =========
kind          raised as                                                        exit code
============  ===============================================================  =========
bad input     :class:`BadInput` (a ``ValueError``), ``FileNotFoundError``      2
refusal       :class:`Refusal`, :class:`LimitExceeded` (a failed gate, a       3
              probe budget exceeded, a tail an estimator cannot bound)
internal      anything else (a bug)                                            1
============  ===============================================================  =========

Library code that validates what a user passed raises :class:`BadInput`; a plain ``ValueError`` from deep
inside a computation is an internal error, never reported as bad input. The command line maps an
exception to its exit code with :func:`exit_code`, by base class (so a new refusal kind needs no change
there). Kinds specific to ``mpprune`` would be defined here, as subclasses of these three.
"""

from __future__ import annotations

from mptheory.errors import (
    EXIT_BAD_INPUT,
    EXIT_CODES_HELP,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_REFUSED,
    BadInput,
    LimitExceeded,
    Refusal,
    exit_code,
)

__all__ = [
    "EXIT_OK",
    "EXIT_INTERNAL",
    "EXIT_BAD_INPUT",
    "EXIT_REFUSED",
    "EXIT_CODES_HELP",
    "BadInput",
    "Refusal",
    "LimitExceeded",
    "exit_code",
]
