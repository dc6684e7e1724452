"""What a diagnosis says: findings with evidence and remedies, JSON-ready."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

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
            "evidence": _jsonable(self.evidence),
            "remedies": [r.to_dict() for r in self.remedies],
            "step": self.step,
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
        )


@dataclass
class Diagnosis:
    """The findings of one check or run. `ok` is False when any finding is an error."""

    findings: list[Finding]
    summary: dict = field(default_factory=dict)
    # The table and meta it was made from, so a display can draw the layers next to the findings.
    stats: Any = field(default=None, repr=False, compare=False)
    meta: dict | None = field(default=None, repr=False, compare=False)
    what_if: list[dict] | None = None  # `gw.check(..., what_if=True)`: remedies ranked, best first

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def kinds(self) -> set[str]:
        return {f.kind for f in self.findings}

    def to_dict(self) -> dict:
        out = {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "summary": _jsonable(self.summary),
        }
        if self.what_if is not None:
            out["what_if"] = _jsonable(self.what_if)
        return out

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        from gradwatch.display.predicted import prediction_lines, what_if_lines

        warned = [str(w) for w in (self.summary or {}).get("warnings", ())]
        lines = (
            ["gradwatch: no problem found." if not warned else "gradwatch: no finding, but:"]
            if not self.findings
            else [
                f"gradwatch: {len(self.findings)} finding(s)"
                + ("" if self.ok else ", errors among them")
            ]
        )
        lines += [f"  [warning] {w}" for w in warned]
        for f in self.findings:
            lines.append(f"  [{f.severity}] {f.kind}: {f.summary}")
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


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only; non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj
