"""What a default watch with a log_dir holds as a run grows: RSS and Arrow's memory pool every 1000
steps of the 100-layer model of `scale.py --parts memory`, in one process.

```
.venv/bin/python bench/memory_flat.py 8000
```
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale  # noqa: E402


def _status() -> tuple[float, float, float]:
    with open("/proc/self/status") as f:
        d = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.startswith(("VmRSS", "VmHWM"))}
    pa = sys.modules.get("pyarrow")
    return d["VmRSS"] / 1024, d["VmHWM"] / 1024, pa.total_allocated_bytes() / 2**20 if pa else 0.0


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    torch.set_num_threads(1)
    torch.manual_seed(0)
    log_dir = os.path.join(tempfile.mkdtemp(prefix="gw-flat-"), "run")
    t = scale._Trainer(scale._narrow(100, 8), True, width=8, log_dir=log_dir)
    start = time.time()
    for i in range(1, steps + 1):
        t.step()
        if i % 1000 == 0:
            rss, hwm, arrow = _status()
            print(
                f"{i} steps: RSS {rss:.1f} MB, peak {hwm:.1f} MB, Arrow pool {arrow:.2f} MB "
                f"({time.time() - start:.0f} s)",
                flush=True,
            )
    t.watch.close()


if __name__ == "__main__":
    main()
