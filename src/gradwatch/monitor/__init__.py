"""The Watch: probes attached to a model, recorded at the optimizer's steps, flushed to the
store."""

from gradwatch.monitor.watcher import Watch, watch

__all__ = ["Watch", "watch"]
