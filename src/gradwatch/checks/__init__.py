"""Checks made before training: `gw.check` at initialisation, the rehearsal of a few optimizer
steps on a copy, the what-if of each remedy, and loading a `gradwatch check TARGET` factory."""

from gradwatch.checks.at_init import check

__all__ = ["check"]
