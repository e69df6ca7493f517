"""proofs_checks: symbolic (sympy) verification of the algebra the papers' proofs rely on.

One module per lemma; each exposes ``check(...)`` returning a :class:`CheckResult`. The formula under test
can be passed in, so negative controls (a deliberately wrong formula) run through the same machinery.
``run_all()`` runs every registered check; ``python -m proofs_checks`` prints the verdicts.
"""

from proofs_checks import (
    bbp,
    bema_edge,
    budget_algebra,
    certificate_algebra,
    mp_edges,
    mp_mass,
    mp_moments,
    mp_stieltjes,
)
from proofs_checks.registry import CHECKS, as_dict, run_all
from proofs_checks.result import CheckResult

__all__ = [
    "CHECKS",
    "CheckResult",
    "as_dict",
    "bbp",
    "bema_edge",
    "budget_algebra",
    "certificate_algebra",
    "mp_edges",
    "mp_mass",
    "mp_moments",
    "mp_stieltjes",
    "run_all",
]
