"""Findings as markdown, for dashboards that render it (TensorBoard text, Lightning loggers)."""

from __future__ import annotations


def findings_markdown(findings) -> str:
    """One bullet per finding (severity, kind, layers, summary), its remedies nested below."""
    if not findings:
        return "gradwatch: no findings."
    lines = []
    for f in findings:
        lines.append(
            f"- **{f.severity}** `{f.kind}` ({', '.join(f.layers) or 'model'}): {f.summary}"
        )
        lines += [f"    - remedy: {r.detail}" for r in f.remedies]
    return "\n".join(lines)
