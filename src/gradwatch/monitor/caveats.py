"""What a live diagnosis must say even when no detector fires, because the run gave the detectors
nothing to judge: every optimizer step skipped by the GradScaler (nothing trained), or a model
with no parameter that requires grad (nothing to watch). Each is one sentence for
`Diagnosis.summary["warnings"]`, read from the stats table and meta.json's model summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FROZEN = (
    "No parameter of the model requires grad, so nothing is trained and there is no gradient "
    "to watch; unfreeze the layers you mean to train (p.requires_grad_(True))."
)


def frozen(meta: dict) -> bool:
    """Whether meta.json's model summary has parameters but none that requires grad."""
    layers = meta.get("model", {}).get("layers", [])
    return bool(layers) and not any(row.get("n_trainable", 0) for row in layers)


def all_skipped(stats: pd.DataFrame) -> int:
    """How many recorded steps there are when the GradScaler skipped every one of them (0 when
    any step was taken, or nothing was recorded)."""
    flags = stats.loc[stats["metric"] == "skipped", "value"]
    return len(flags) if len(flags) and bool((flags == 1).all()) else 0


def caveats(stats: pd.DataFrame, meta: dict) -> list[str]:
    out = []
    skipped = all_skipped(stats)
    if skipped:
        out.append(
            f"The GradScaler skipped every one of the {skipped} recorded optimizer steps (inf/NaN "
            "in the scaled gradients), so nothing was trained; look for non-finite values in the "
            "inputs or the loss, or lower GradScaler(init_scale=...)."
        )
    if frozen(meta):
        out.append(FROZEN)
    return out
