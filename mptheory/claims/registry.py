"""The one registry of claims: id, statement, kind, check and figure link, each stored once.

A :class:`Claim` has an ``id`` as in the digest (D1–D12, R1–R5, A1–A8, G1–G15), a ``statement``, a ``kind``
(what the theorem asserts: ``"deterministic"`` — an inequality for every case; ``"probabilistic"`` — an
event of bounded probability or a limit in probability), the digest ``source`` section, the ``figures`` that
illustrate it (names of :data:`mptheory.figures.FIGURES`; the figures read this link from here) and a
``check(quick, seed) -> CheckResult`` callable. ``evidence`` is the :attr:`~mptheory.verdict.CheckResult.kind`
its check returns — how the claim is supported: ``deterministic`` (exact inequality over generated cases),
``probabilistic`` (a Monte-Carlo frequency against a probability bound), ``asymptotic`` (a limit checked as a
finite-N trend) or ``empirical`` (a training experiment: the hypotheses are not verifiable, so this is
evidence, not proof).

:data:`NEGATIVE_CONTROLS` holds the same checkers run with a deliberately wrong bound; each must produce
violations ("caught"). The section modules (``d_certificates``, ``r_budgets``, ``a_abstract``,
``g_gaussian``) fill both registries when :mod:`mptheory.claims` is imported.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from mptheory.errors import BadInput
from mptheory.verdict import KINDS, CheckResult

__all__ = [
    "CLAIM_KINDS",
    "Claim",
    "CheckFn",
    "NEGATIVE_CONTROLS",
    "NegativeControl",
    "REGISTRY",
    "claim_ids",
    "claim_rng",
    "claim_seed",
    "claims_illustrated_by",
    "control",
    "get_claim",
    "register",
]

CLAIM_KINDS = ("deterministic", "probabilistic")
EVIDENCE = tuple(k for k in KINDS if k != "symbolic")

CheckFn = Callable[[bool, int], CheckResult]
_F = TypeVar("_F", bound=Callable[..., CheckResult])


@dataclass(frozen=True)
class Claim:
    """One registered claim (see the module docstring)."""

    id: str
    statement: str
    kind: str
    source: str
    check: CheckFn
    figures: tuple[str, ...] = ()
    evidence: str = "deterministic"

    def __post_init__(self) -> None:
        if self.kind not in CLAIM_KINDS:
            raise ValueError(f"claim {self.id}: kind must be one of {CLAIM_KINDS}, got {self.kind!r}")
        if self.evidence not in EVIDENCE:
            raise ValueError(f"claim {self.id}: evidence must be one of {EVIDENCE}, got {self.evidence!r}")
        object.__setattr__(self, "figures", tuple(self.figures))


@dataclass(frozen=True)
class NegativeControl:
    """A checker run with a deliberately wrong bound; it must produce violations (be "caught")."""

    name: str
    claim: str
    description: str
    check: CheckFn


REGISTRY: dict[str, Claim] = {}
NEGATIVE_CONTROLS: list[NegativeControl] = []


def register(id: str, statement: str, kind: str, source: str, figures: tuple[str, ...] = (),  # noqa: A002
             evidence: str = "deterministic") -> Callable[[_F], _F]:
    """Decorator: register ``check(quick, seed) -> CheckResult`` as claim ``id`` (ids must be unique)."""

    def deco(fn: _F) -> _F:
        if id in REGISTRY:
            raise ValueError(f"claim {id!r} registered twice")
        REGISTRY[id] = Claim(id, statement, kind, source, fn, figures, evidence)
        return fn

    return deco


def control(name: str, claim: str, description: str, check: CheckFn) -> None:
    """Register a negative control of ``claim`` (a registered id)."""
    if claim not in REGISTRY:
        raise ValueError(f"negative control {name!r}: unknown claim {claim!r}")
    NEGATIVE_CONTROLS.append(NegativeControl(name, claim, description, check))


def claim_ids() -> list[str]:
    """Registered ids in registry order."""
    return list(REGISTRY)


def get_claim(cid: str) -> Claim:
    if cid not in REGISTRY:
        raise BadInput(f"unknown claim id {cid!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[cid]


def claims_illustrated_by(figure: str) -> list[str]:
    """Ids of the claims whose ``figures`` name ``figure`` (registry order)."""
    return [c.id for c in REGISTRY.values() if figure in c.figures]


def claim_rng(seed: int, tag: str) -> np.random.Generator:
    """The generator of one check: seeded by (``seed``, CRC32 of ``tag``), so checks are independent."""
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode())])


def claim_seed(seed: int, tag: str) -> int:
    """An integer seed drawn from :func:`claim_rng` (for functions that take an int seed)."""
    return int(claim_rng(seed, tag).integers(0, 2**31 - 1))
