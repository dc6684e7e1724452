"""Numbers, lists of layer names and HTML text, written the same way everywhere gradwatch shows
them.
"""

from __future__ import annotations

import html
import math


def fmt(x: float) -> str:
    """A number the way a person reads it in a sentence."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return str(x)
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e4:
        return f"{x:.3g}"
    # As people write it: 2.3e-5 and 1e-3, not 2.3e-05 and 1.0e-03.
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def times(x: float) -> str:
    """A multiplier: ×0.71, ×1e-3."""
    return "×" + fmt(x)


def names(layers: list[str], limit: int = 4) -> str:
    """`'0', '2', '4' and 9 more` style list of layer names."""
    quoted = [f"'{n}'" for n in layers[:limit]]
    more = len(layers) - limit
    if more > 0:
        return ", ".join(quoted) + f" and {more} more"
    if len(quoted) > 1:
        return ", ".join(quoted[:-1]) + " and " + quoted[-1]
    return quoted[0] if quoted else ""


def esc(text: object) -> str:
    # "%" too: plotly would read "%{...}" inside a layer name as a hover-template field.
    return html.escape(str(text), quote=True).replace("%", "&#37;")


def caveat_lines(summary: dict | None) -> list[str]:
    """What the run gave the detectors nothing to judge on (every step skipped by the GradScaler,
    only frozen parameters): shown above the findings, and instead of "no problem found"."""
    return [str(w) for w in (summary or {}).get("warnings", ())]


def cause_lines(findings: list) -> list[str]:
    """ "Root cause X -> leads to Y, Z" for each root that explains something, and the first thing
    to change (the first remedy of the first finding): what every display shows first."""
    if not findings:
        return []
    lines = []
    for f in findings:
        if f.is_root and f.explains:
            lines.append(f"Root cause: {f.kind} -> leads to {', '.join(f.explains)}")
    first = findings[0]
    if first.remedies:
        r = first.remedies[0]
        lines.append(f"First thing to change ({r.action}): {r.detail.splitlines()[0]}")
    return lines
