"""The mean-field phase diagram: where in (σ_w², σ_b²) a deep net trains, and where gradients die.

One picture carries the theory: log10 of the trainable depth 6ξ_c as filled contours, the critical
line χ₁ = 1 in bold, the ordered (vanishing) side to its left and the chaotic (exploding) side to
its right. matplotlib is imported inside the function, through its object API (no pyplot), so the
caller's backend and global figure state are left alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gradwatch import theory

_FORMATS = {".png", ".svg", ".pdf"}


def phase_diagram(
    path: str | Path,
    activation: str = "tanh",
    sigma_w2_range: tuple[float, float] = (0.5, 4.0),
    sigma_b2_range: tuple[float, float] = (0.0, 0.3),
    resolution: tuple[int, int] = (48, 32),
    max_depth: float = 1e4,
    **params: float,
) -> Path:
    """Draw the phase diagram of `activation` and write it to `path` (PNG, SVG or PDF by suffix).

    resolution: grid points along σ_w² and σ_b²; max_depth (layers) caps the colour scale, since
    the trainable depth is infinite on the critical line. Returns the path written.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise theory.TheoryError(
            f"Cannot tell the image format of {str(path)!r}; name it .png, .svg or .pdf."
        )
    sw = np.linspace(*sigma_w2_range, resolution[0])
    sb = np.linspace(*sigma_b2_range, resolution[1])
    depth = np.array(
        [[theory.mean_field(activation, w, b, **params).trainable_depth for w in sw] for b in sb]
    )
    log_depth = np.log10(np.clip(depth, 1.0, max_depth))
    crit_b, crit_w = [], []
    # Squared spacing: for tanh-like activations the line bends sharply near σ_b² = 0.
    lo, hi = sigma_b2_range
    for b in lo + (hi - lo) * np.linspace(0.0, 1.0, 31) ** 2:
        try:
            crit_w.append(theory.critical_sigma_w2(activation, b, **params))
            crit_b.append(b)
        except theory.TheoryError:
            pass  # no critical point at this bias: the line simply stops

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    ax = fig.add_subplot()
    levels = np.linspace(0.0, math.log10(max_depth), 21)
    filled = ax.contourf(sw, sb, log_depth, levels=levels, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="log10 trainable depth 6ξ (layers)")
    if any(sigma_w2_range[0] <= w <= sigma_w2_range[1] for w in crit_w):
        ax.plot(crit_w, crit_b, color="white", lw=3.5)
        ax.plot(crit_w, crit_b, color="black", lw=2.0, label="critical line χ₁ = 1")
        ax.legend(loc="upper left", fontsize=8)
    mid_b = 0.5 * (sigma_b2_range[0] + sigma_b2_range[1])
    w_crit = float(np.interp(mid_b, crit_b, crit_w)) if crit_b else math.inf
    label_style = {
        "ha": "center",
        "va": "center",
        "color": "white",
        "fontsize": 11,
        "fontweight": "bold",
    }
    if w_crit > sigma_w2_range[0]:
        x = 0.5 * (sigma_w2_range[0] + min(w_crit, sigma_w2_range[1]))
        ax.text(x, mid_b, "ordered\n(gradients vanish)", **label_style)
    if w_crit < sigma_w2_range[1]:
        x = 0.5 * (max(w_crit, sigma_w2_range[0]) + sigma_w2_range[1])
        ax.text(x, mid_b, "chaotic\n(gradients explode)", **label_style)
    ax.set_xlim(*sigma_w2_range)
    ax.set_ylim(*sigma_b2_range)
    ax.set_xlabel("σ_w²  (weight variance × fan-in)")
    ax.set_ylabel("σ_b²  (bias variance)")
    ax.set_title(f"Mean-field phase diagram: {activation}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path
