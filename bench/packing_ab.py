"""Packed classification batches against length-grouped padded ones: the service's own training path
(bench/train_speed.py's child) with TRAIN_PACKING=auto and =off, alternating, back to back, same seeds.

usage (from the repo root):
  .venv/bin/python bench/packing_ab.py --runs 3      # writes bench/results/packing_ab.json

Prints samples/s, real tokens/s and dev accuracy for each, and the ratio packed / grouped (medians)."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def run(packing: str, seed: int, rows: int) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "train_speed.py"), "--child", "--task", "classification",
           "--rows", str(rows), "--seed", str(seed)]
    out = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TRAIN_PACKING": packing}, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0, help="run i uses seed + i on both sides")
    args = ap.parse_args()
    sides: dict[str, list[dict]] = {"auto": [], "off": []}
    for i in range(args.runs):
        for packing in ("auto", "off"):
            result = run(packing, args.seed + i, args.rows)
            sides[packing].append(result)
            print(f"run {i + 1} TRAIN_PACKING={packing}: samples/s {result['samples_per_s']}, real tokens/s "
                  f"{result['real_tokens_per_s']}, padding {result.get('padding_fraction_last_epoch')}, "
                  f"dev {result['dev_accuracy']}", flush=True)
    keys = ("train_s", "samples_per_s", "real_tokens_per_s", "dev_accuracy")
    median = {side: {k: statistics.median(r[k] for r in runs) for k in keys} for side, runs in sides.items()}
    ratio = round(median["auto"]["real_tokens_per_s"] / median["off"]["real_tokens_per_s"], 3)
    report = {"command": " ".join(["bench/packing_ab.py", *sys.argv[1:]]), "median": median,
              "ratio_packed_over_grouped_real_tokens_per_s": ratio,
              "ratio_by_run": [round(a["real_tokens_per_s"] / b["real_tokens_per_s"], 3)
                               for a, b in zip(sides["auto"], sides["off"], strict=True)],
              "runs": sides, "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average_at_end": os.getloadavg()}
    print(f"packed / grouped real tokens/s: {ratio}x (runs {report['ratio_by_run']}); dev accuracy median "
          f"{median['auto']['dev_accuracy']} packed vs {median['off']['dev_accuracy']} grouped")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "packing_ab.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
