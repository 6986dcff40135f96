"""A short soak (CI): 64 clients, no failed request, flat memory. Full run: python bench/soak.py"""
import json
import subprocess
import sys

from helpers import ROOT


def test_short_soak_loses_nothing_and_keeps_memory_flat():
    result = subprocess.run([sys.executable, "bench/soak.py", "--seconds", "10", "--warmup", "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=180)
    report = json.loads(result.stdout)
    assert report["failed"] == 0 and report["requests"] > 1000
    assert not report["restarted"]
    assert all(growth <= 0.10 for growth in report["rss_growth"].values()), report["rss_growth"]
    assert result.returncode == 0, result.stderr[-2000:]
