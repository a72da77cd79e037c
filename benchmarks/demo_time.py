"""Time the README's main command: ``removalnet demo --threads 1`` from an empty run folder, as a whole process
(wall clock, CPU seconds, peak memory), with the machine, its load and the commit; and check what its report
shows (every metric with evidence or not, and what it says it cannot show).

    python benchmarks/demo_time.py            # -> benchmarks/results/demo-time.md and .json

The run goes to a temporary folder; the machine should be otherwise idle (the load average is recorded).
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from table1 import commit, machine   # benchmarks/ is the script's folder, as in capacity.py

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> int:
    exe = Path(sys.executable).with_name("removalnet")
    with tempfile.TemporaryDirectory(prefix="demo-time-") as tmp:
        out = Path(tmp) / "demo"
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        proc = subprocess.run([str(exe), "demo", "--threads", "1", "--quiet", "--out", str(out)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_after = os.getloadavg()
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
            print(f"error: the demo exited {proc.returncode}", file=sys.stderr)
            return 1
        md = (out / "report.md").read_text()
    degenerate = sorted(set(re.findall(r"\| ([A-Za-z-]+) \(degenerate: excluded\)", md)))
    cannot = re.findall(r"^- (\S+) calls only", md, flags=re.M)
    victim = re.search(r"victim accuracy ([0-9.]+)%", md)
    result = {
        "command": "removalnet demo --threads 1", "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "victim_accuracy_pct": float(victim.group(1)) if victim else None,
        "degenerate_metrics": degenerate, "metrics_missing_the_baselines": cannot,
        "machine": machine(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after], "commit": commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo-time.json").write_text(json.dumps(result, indent=2) + "\n")
    m, s = divmod(round(wall), 60)
    lines = [
        "# The demo's wall time", "",
        f"`{result['command']}` from an empty run folder, as a whole process (`python benchmarks/demo_time.py`).", "",
        f"- machine: {result['machine']}",
        f"- commit: {result['commit']}; date: {result['date']}",
        f"- load average before / after: {result['load_average_before']} / {result['load_average_after']}", "",
        "| wall | CPU | peak memory | victim accuracy | degenerate metrics | metrics that miss the baselines |",
        "|---|---|---|---|---|---|",
        f"| {m} min {s:02d} s | {result['cpu_s']} s | {result['peak_rss_mb']} MB | {result['victim_accuracy_pct']}% "
        f"| {', '.join(degenerate) or 'none'} | {', '.join(cannot) or 'none'} |", "",
    ]
    (RESULTS / "demo-time.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
