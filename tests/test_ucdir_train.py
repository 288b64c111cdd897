"""The UCDIR training command: a tiny run on one process and on two (torchrun, gloo, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_ucdir.py"


def run(cmd, tmp_path):
    env = {**os.environ, "CDR_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return json.loads((tmp_path / "results.json").read_text())


def check(res):
    last = res["history"][-1]
    assert {"iw_A", "iw_B", "cw_A", "cw_B", "se", "dd", "loss"} <= set(last)
    assert all(v == v and abs(v) < 1e4 for v in last.values())  # finite
    mean = [r for r in res["metrics"] if r["query"] == "mean"][0]
    assert 0.0 < mean["mAP@all"] <= 1.0


@pytest.mark.slow
def test_tiny_single_process_and_resume(tmp_path):
    res = run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], tmp_path)
    check(res)
    # a second call finds the finished checkpoint and does not train again
    again = run([sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], tmp_path)
    assert again["history"] == res["history"]


@pytest.mark.slow
def test_tiny_two_processes_gloo(tmp_path):
    res = run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
               str(SCRIPT), "--tiny", "--backend", "gloo", "--out", str(tmp_path)], tmp_path)
    check(res)
