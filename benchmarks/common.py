"""What the benchmark scripts share: each measurement in its own process, so that its peak memory is its own."""
from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys


def peak_rss_mb() -> int:
    """Peak resident memory of this process so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_child(script: str, *args) -> dict:
    """Run ``python script --child ARGS…`` and return the JSON it prints last."""
    p = subprocess.run([sys.executable, script, "--child", *map(str, args)], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{script} --child {' '.join(map(str, args))} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
