"""What a diagnosis says: findings with evidence and remedies, JSON-ready."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradwatch._json import jsonable

if TYPE_CHECKING:
    from gradwatch.checks.what_if import RemedyTrial

KINDS = (
    "vanishing_gradient",
    "exploding_gradient",
    "nonfinite",
    "saturated_activation",
    "dead_units",
    "stalled_layer",
    "unstable_updates",
    "vanishing_through_time",
    "exploding_through_time",
    "loss_plateau",
    "no_gradient",
    "output_loss_mismatch",
    "uncleared_gradients",
    "unscaled_data",
    "bad_learning_rate",
)
# What `Remedy.action` says: the kind of change (documented in docs/diagnosis.md).
ACTIONS = (
    "lr",
    "init",
    "activation",
    "normalization",
    "residual",
    "clipping",
    "gating",
    "forget_bias",
    "depth",
    "precision",
    "optimizer",
    "loss",
    "data",
    "loop",
)
SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Remedy:
    """One concrete change: `action` names the kind of change, `detail` says what to do to whose
    code (with a snippet), `expected` what it should change, `why` the reason."""

    action: str
    detail: str
    expected: str = ""
    why: str = ""

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "detail": self.detail,
            "expected": self.expected,
            "why": self.why,
        }


@dataclass(frozen=True)
class Finding:
    """One problem found in the stats: what, how bad, where, since when, the numbers, what to do."""

    kind: str
    severity: str
    layers: tuple[str, ...]
    summary: str
    evidence: dict = field(default_factory=dict)
    remedies: tuple[Remedy, ...] = ()
    step: int | None = None  # first step at which it held
    # Root cause first: the id (kind) of the finding that explains this one, and of those it
    # explains. A finding's id is its kind (a diagnosis holds one finding per kind).
    caused_by: str | None = None
    explains: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.kind

    @property
    def is_root(self) -> bool:
        return self.caused_by is None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "layers": list(self.layers),
            "summary": self.summary,
            "evidence": jsonable(self.evidence),
            "remedies": [r.to_dict() for r in self.remedies],
            "step": self.step,
            "id": self.id,
            "caused_by": self.caused_by,
            "explains": list(self.explains),
        }

    def __str__(self) -> str:
        """A short paragraph a person reads (what `on_finding=print` prints); the evidence and
        every remedy are in `to_dict()`."""
        where = f" in {', '.join(self.layers)}" if self.layers else ""
        since = f" from step {self.step}" if self.step is not None else ""
        lines = [f"[{self.severity}] {self.kind}{where}{since}: {self.summary}"]
        if self.remedies:
            lines.append(f"  -> {_headline(self.remedies[0].detail)}")
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, d: dict) -> Finding:
        return cls(
            kind=d["kind"],
            severity=d["severity"],
            layers=tuple(d.get("layers", ())),
            summary=d.get("summary", ""),
            evidence=d.get("evidence", {}),
            remedies=tuple(Remedy(**r) for r in d.get("remedies", ())),
            step=d.get("step"),
            caused_by=d.get("caused_by"),
            explains=tuple(d.get("explains", ())),
        )


@dataclass
class Diagnosis:
    """The findings of one check or run. `ok` is False when any finding is an error.

    `summary` is keyed by name; a check adds typed results to it: "theory"
    (`theory.model.TheoryComparison`), "jacobian" (`checks.at_init.JacobianAtInit`) and
    "rehearsal" (`checks.rehearsal.RehearsalSummary`). `to_dict()` writes each as its `to_dict()`.
    """

    findings: list[Finding]
    summary: dict[str, Any] = field(default_factory=dict)
    # The table and meta it was made from, so a display can draw the layers next to the findings.
    stats: Any = field(default=None, repr=False, compare=False)
    meta: dict | None = field(default=None, repr=False, compare=False)
    # `gw.check(..., what_if=True)`: each remedy tried on a copy, ranked, best first
    what_if: list[RemedyTrial] | None = None

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_dict(self) -> dict:
        out = {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "summary": jsonable(self.summary),
        }
        if self.what_if is not None:
            out["what_if"] = [jsonable(t.to_dict()) for t in self.what_if]
        return out

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        from gradwatch.display.format import cause_lines, caveat_lines
        from gradwatch.display.predicted import prediction_lines, what_if_lines

        warned = caveat_lines(self.summary)
        lines = (
            ["gradwatch: no problem found." if not warned else "gradwatch: no finding, but:"]
            if not self.findings
            else [
                f"gradwatch: {len(self.findings)} finding(s)"
                + ("" if self.ok else ", errors among them")
            ]
        )
        lines += [f"  [warning] {w}" for w in warned]
        lines += [f"  {line}" for line in cause_lines(self.findings)]
        for f in self.findings:
            because = f" (a consequence of {f.caused_by})" if f.caused_by else ""
            lines.append(f"  [{f.severity}] {f.kind}{because}: {f.summary}")
            for r in f.remedies[:2]:
                lines.append(f"      -> {_headline(r.detail)}")
        lines += [f"  {line}" for line in prediction_lines(self.summary)]
        if self.what_if:
            lines += ["  what if (each remedy applied to a copy and checked again):"] + [
                f"    {line}" for line in what_if_lines(self.what_if)
            ]
        return "\n".join(lines)

    def __rich__(self):
        from gradwatch.display.terminal import diagnosis_view

        return diagnosis_view(self)

    def _repr_html_(self) -> str:
        from gradwatch.display.notebook import diagnosis_html

        return diagnosis_html(self)


def _headline(detail: str) -> str:
    """A remedy's first line, without the colon that introduced its code snippet."""
    lines = detail.strip().splitlines()
    return lines[0].rstrip().rstrip(":").rstrip() if lines else ""
