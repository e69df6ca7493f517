"""proofs_checks: symbolic (sympy) verification of the algebra the papers' proofs rely on.

One module per lemma; each exposes ``check(...)`` returning a symbolic :class:`mptheory.verdict.CheckResult`
(one lemma, one case; ``details["steps"]`` lists every derivation step). The formula under test can be
passed in, so negative controls (a deliberately wrong formula) run through the same machinery.
:data:`SYMBOLIC_CHECKS` is the registry, ``run_all()`` runs every registered check and
``python -m proofs_checks`` prints the verdicts.

Formulas are derived in the digest's notation (``c`` the aspect ratio, ``g`` the noise variance); the Python
parameters of the formula functions use the package vocabulary of :mod:`mptheory` (``ratio``, ``sigma2``).
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
from proofs_checks.registry import SYMBOLIC_CHECKS, as_dict, run_all

__all__ = [
    "SYMBOLIC_CHECKS",
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
