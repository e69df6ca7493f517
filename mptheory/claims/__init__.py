"""The claims registry: every checkable statement of digest §2 as one named, numerical check.

Files, one concept each:

* :mod:`~mptheory.claims.registry` — :class:`Claim` (id, statement, kind, source, check, ``figures``,
  ``evidence``), :data:`REGISTRY`, :class:`NegativeControl` and :data:`NEGATIVE_CONTROLS`;
* one file per digest section, registering its claims and their negative controls:
  :mod:`~mptheory.claims.d_certificates` (§2.1, D1–D12), :mod:`~mptheory.claims.r_budgets` (§2.2, R1–R5),
  :mod:`~mptheory.claims.a_abstract` (§2.3, A1–A8), :mod:`~mptheory.claims.g_gaussian` (§2.4, G1–G15);
* :mod:`~mptheory.claims.symbolic` — the sympy checks of :mod:`proofs_checks` as a separate section;
* :mod:`~mptheory.claims.verify` — :func:`verify`, :class:`Verdict`, :class:`ControlResult`,
  :class:`VerdictList`.

Every check returns a :class:`mptheory.verdict.CheckResult`; a deterministic claim must hold in every case
up to float64 rounding, a probabilistic one within the binomial tolerance
``rate ≤ bound + 3√(bound(1−bound)/K)``. Each negative control runs a checker with a deliberately wrong
bound (L_s halved, margin factor 1, a wrong budget constant, a wrong inverse BBP, ...) and must produce
violations ("caught").

``verify(ids=None, quick=False, seed=0)`` runs everything and returns a :class:`VerdictList`.
"""

from __future__ import annotations

import importlib

from mptheory.claims import registry
from mptheory.claims.registry import (
    CLAIM_KINDS,
    NEGATIVE_CONTROLS,
    REGISTRY,
    Claim,
    NegativeControl,
    claim_ids,
    claims_illustrated_by,
    control,
    get_claim,
    register,
)
from mptheory.claims.symbolic import run_symbolic
from mptheory.claims.verify import ControlResult, Verdict, VerdictList, run_claim, run_controls, verify

#: the digest sections, in digest order: importing them fills REGISTRY and NEGATIVE_CONTROLS in that order
SECTIONS = ("d_certificates", "r_budgets", "a_abstract", "g_gaussian")
for _section in SECTIONS:
    importlib.import_module(f"mptheory.claims.{_section}")

__all__ = [
    "CLAIM_KINDS",
    "Claim",
    "ControlResult",
    "NEGATIVE_CONTROLS",
    "NegativeControl",
    "REGISTRY",
    "SECTIONS",
    "Verdict",
    "VerdictList",
    "claim_ids",
    "claims_illustrated_by",
    "control",
    "get_claim",
    "register",
    "registry",
    "run_claim",
    "run_controls",
    "run_symbolic",
    "verify",
]
