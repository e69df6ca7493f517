"""The gate's verdicts: :class:`GateLayer` (one layer) and :class:`GateResult` (the gated model, its masks,
the verdicts and the certificate of the gated model), with their JSON and Markdown forms.

The gate itself (:class:`~mpprune.gate.Gate`) is in :mod:`mpprune.gate`; these names are re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mpprune.certify.capture import layer_weight
from mpprune.certify.report import CertificateReport, LayerCertificate, soundness_label
from mpprune.masks import MaskStore, from_kn_matrix, kn_matrix

__all__ = ["LAYER_SCOPE_NOTE", "GateLayer", "GateResult", "PrunedLayer", "set_weight"]

#: what every report of ``scope="layer"`` says
LAYER_SCOPE_NOTE = (
    "scope=layer: each layer was gated ALONE in the dense model; this does NOT certify the shipped model "
    "(see the whole-model total)"
)


@dataclass
class GateLayer:
    """The gate's verdict on one layer: ``status`` is ``"passed"``, ``"backed_off"`` or ``"left_dense"``.

    ``certificate``: the layer's final certificate (in the network ``certificate.network`` names),
    ``initial``: its certificate at the requested sparsity; ``share``: its share of the margin
    (``scope="model"`` after an allocation, else None); ``pattern``: the k:n pattern the final weight
    keeps, for a layer whose masks declared one (a k:n layer is backed off through denser patterns of the
    same group size, never to an unstructured mask), else None."""

    name: str
    status: str
    sparsity_requested: float
    sparsity_final: float
    restored: int
    reason: str
    certificate: LayerCertificate | None = field(default=None, repr=False)
    initial: LayerCertificate | None = field(default=None, repr=False)
    share: float | None = None
    pattern: str | None = None

    @property
    def label(self) -> str:
        """``"sound"`` or ``"ESTIMATE"`` of the certificate the verdict rests on (``"sound"`` when the layer
        was left dense: an unpruned layer changes nothing)."""
        c = self.certificate if self.certificate is not None else None
        return soundness_label(True if c is None else c.sound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "sparsity_requested": self.sparsity_requested,
            "sparsity_final": self.sparsity_final,
            "restored": self.restored,
            "reason": self.reason,
            "pattern": self.pattern,
            "label": self.label,
            "share": self.share,
            "certificate": self.certificate.to_dict() if self.certificate is not None else None,
            "initial_certificate": self.initial.to_dict() if self.initial is not None else None,
        }


@dataclass
class GateResult:
    """``model`` and ``masks`` after the gate; ``layers`` the per-layer verdicts; ``report`` the certificate
    of the gated model: per layer and the whole-model D11 total with its realised flips (None when nothing
    stays pruned, or for ``scope="layer"`` with ``final_report=False``)."""

    model: nn.Module
    masks: MaskStore
    layers: list[GateLayer]
    report: CertificateReport | None
    rules: dict[str, Any]
    scope: str = "model"

    @property
    def passed(self) -> bool:
        """Every layer kept the requested pruning."""
        return all(gl.status == "passed" for gl in self.layers)

    @property
    def certified_fraction(self) -> float | None:
        """The whole-model certified fraction of the gated model (None without a report)."""
        return None if self.report is None else self.report.certified_fraction

    @property
    def flips(self) -> int | None:
        """Realised prediction flips of the gated model on the calibration set (None without a report)."""
        return None if self.report is None else self.report.flips

    @property
    def certifies_model(self) -> bool:
        """Whether the gated model carries a sound whole-model certificate meeting ``min_certified`` (a model
        with nothing pruned does; ``scope="layer"`` is judged on its final report, which it did not gate)."""
        if not any(gl.status != "left_dense" for gl in self.layers):
            return True
        if self.report is None:
            return False
        return self.report.sound and self.report.certified_fraction >= float(self.rules["min_certified"])

    def layer(self, name: str) -> GateLayer:
        for gl in self.layers:
            if gl.name == name:
                return gl
        raise KeyError(name)

    def summary_line(self) -> str:
        """One line: scope, whole-model certified fraction, realised flips, sound or ESTIMATE."""
        if self.report is None:
            whole = "no whole-model report"
        else:
            r = self.report
            whole = (
                f"whole model: {100 * r.certified_fraction:.2f} % certified ({r.label}), "
                f"{r.flips}/{r.n_samples} realised flips"
            )
        scope = (
            "scope=model: gated on the whole-model (D11) certificate of the shipped model"
            if self.scope == "model"
            else LAYER_SCOPE_NOTE
        )
        return f"{scope}; {whole}"

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "rules": dict(self.rules),
            "scope": self.scope,
            "layers": [gl.to_dict() for gl in self.layers],
            "whole_model": {
                "certified_fraction": self.certified_fraction,
                "flips": self.flips,
                "n_samples": None if r is None else r.n_samples,
                "sound": None if r is None else r.sound,
                "label": None if r is None else r.label,
                "certifies_model": self.certifies_model,
                "summary": self.summary_line(),
            },
            "certificate": r.to_dict() if r is not None else None,
        }

    def to_markdown(self) -> str:
        lines = [
            self.summary_line(),
            "",
            "| layer | verdict | sparsity requested | sparsity final | certificate | why |",
            "|---|---|---|---|---|---|",
        ]
        for gl in self.layers:
            lines.append(
                f"| {gl.name} | {gl.status} | {gl.sparsity_requested:.3f} | "
                f"{gl.sparsity_final:.3f} | {gl.label} | {gl.reason} |"
            )
        out = "\n".join(lines) + "\n"
        if self.report is not None:
            out += "\n" + self.report.to_markdown()
        return out


@dataclass
class PrunedLayer:
    """What the gate knows about one pruned layer: dense and requested weights, removed entries in the
    order they are restored (largest dense ``|w|`` first), and the declared k:n ``pattern`` ``(k, n,
    layout)`` of its mask (None: unstructured)."""

    name: str
    Wd: torch.Tensor
    Wp: torch.Tensor
    order: torch.Tensor
    requested: float
    pattern: tuple[int, int, str] | None = None

    @property
    def n_removed(self) -> int:
        return int(self.order.numel())

    def candidate(self, k: int) -> torch.Tensor:
        """The requested weight with the ``k`` largest removed entries restored (the dense weight at ``k =
        n_removed``)."""
        if k >= self.n_removed:
            return self.Wd.clone()
        flat = self.Wp.reshape(-1).clone()
        if k > 0:
            flat[self.order[:k]] = self.Wd.reshape(-1)[self.order[:k]]
        return flat.reshape(self.Wp.shape)

    def kn_candidate(self, kk: int) -> tuple[torch.Tensor, int]:
        """The requested weight backed off to the pattern ``kk:n`` of its declared ``k:n`` (``kk > k``):
        every group keeps its kept entries and gets back the largest dense ``|w|`` among its removed ones
        until it holds ``kk``; the dense weight at ``kk >= n``. Returns the weight and the number of
        entries restored."""
        if self.pattern is None:
            raise ValueError(f"layer {self.name!r} declares no k:n pattern")
        _, n, layout = self.pattern
        if kk >= n:
            return self.Wd.clone(), self.n_removed
        P, D = kn_matrix(self.Wp, layout), kn_matrix(self.Wd, layout)
        rows, cols = P.shape
        Pg, Dg = P.reshape(rows, cols // n, n), D.reshape(rows, cols // n, n)
        free = Pg == 0
        score = torch.where(free, Dg.abs(), torch.full_like(Dg, -1.0))  # kept entries rank last
        rank = torch.argsort(torch.argsort(score, dim=-1, descending=True, stable=True), dim=-1)
        need = (kk - (~free).sum(dim=-1, keepdim=True)).clamp(min=0)
        add = free & (rank < need) & (Dg != 0)
        out = torch.where(add, Dg, Pg).reshape(rows, cols)
        return from_kn_matrix(out, self.Wp.shape, layout), int(add.sum())


def set_weight(target: nn.Module, W: torch.Tensor) -> None:
    """Copy ``W`` into the weight of ``target`` (in its dtype and device)."""
    with torch.no_grad():
        layer_weight(target).copy_(W.to(layer_weight(target)))
