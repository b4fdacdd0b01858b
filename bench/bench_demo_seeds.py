"""The CPU demo on several training seeds, and whether its claim holds on each: one table.

    python bench/bench_demo_seeds.py                          # seeds 42 43 44, configs/demo.yaml, runs/demo-seeds/
    python bench/bench_demo_seeds.py --seeds 42 --report-only # re-read finished runs, print the table

Each seed runs `train_sft.py --config configs/demo.yaml --seed S --output_dir runs/demo-seeds/seed-S` in a fresh
process (the synthetic data and the base are shared: they do not depend on the training seed), then reads the
two stages' `eval/metrics.json`. The claim, per seed:

* stage 1 beats `no_finding` and `most_frequent` (+ mean boxes) on local-label micro-F1, Acc@IoU 0.3 (paper
  protocol) and mAP@0.4, each with a paired-bootstrap 95 % interval of the difference that excludes 0;
* every local label with at least `--min_positives` positive test images has a label AUC (token scores) whose
  95 % interval lies above 0.5;
* stage 2 beats `no_finding` on global-label micro-F1 (same paired test), or the table says it does not.

Prints, per seed, each metric for the model and each baseline with the paired difference, then the verdicts.
Wall times are printed too; they mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("no_finding", "most_frequent")
STAGE1_KEYS = {
    "tasks.grounding.classification.strict.averages.micro.f1": ("local micro-F1", 100.0),
    "tasks.grounding.localization.acc_iou.paper.0.3": ("Acc@IoU 0.3 (%)", 1.0),
    "tasks.grounding.localization.map.0.4.vindr22.map": ("mAP@0.4", 1.0),
}
STAGE2_KEYS = {"tasks.diagnosis.classification.strict.averages.micro.f1": ("global micro-F1", 100.0)}


def run_seed(seed: int, config: Path, out_root: Path, extra: list[str]) -> float:
    """Train and evaluate both stages for one seed (skipped when finished); returns the wall time in seconds."""
    out = out_root / f"seed-{seed}"
    command = [sys.executable, str(ROOT / "train_sft.py"), "--config", str(config), "--seed", str(seed),
               "--output_dir", str(out), *extra]
    begin = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    return time.perf_counter() - begin


def headline(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    """The baselines table row of one metric key."""
    for row in metrics.get("baselines", {}).get("table", []):
        if row["key"] == key:
            return row
    raise KeyError(f"{key} is not in the baselines table (was the eval run with baselines and bootstrap?)")


def label_auc_rows(metrics: dict[str, Any], min_positives: int) -> list[tuple[str, int, float, float, float]]:
    """(label, positives, AUC, low, high) of the local labels with at least `min_positives` positive test images."""
    grounding = metrics["tasks"]["grounding"]
    support = grounding["classification"]["strict"]["labels"]
    rows = []
    for label, auc in (grounding.get("auc", {}).get("labels") or {}).items():
        positives = int(support.get(label, {}).get("support", 0))
        if auc is None or positives < min_positives:
            continue
        interval = metrics["confidence_intervals"].get(f"tasks.grounding.auc.labels.{label}", {})
        rows.append((label, positives, float(auc), interval.get("low", float("nan")), interval.get("high", float("nan"))))
    return rows


def comparison_lines(metrics: dict[str, Any], keys: dict[str, tuple[str, float]]) -> tuple[list[str], bool]:
    """Table lines (model, baselines, paired differences) and whether every difference excludes 0 upwards."""
    lines, holds = [], True
    for key, (name, scale) in keys.items():
        row = headline(metrics, key)
        model = row["values"]["model"]["value"] * scale
        cells = [f"{name:<18} model {model:7.2f}"]
        for baseline in BASELINES:
            value = row["values"][baseline]["value"] * scale
            diff = row.get("differences", {}).get(baseline, {})
            low, high = diff.get("low", float("nan")) * scale, diff.get("high", float("nan")) * scale
            beats = diff.get("excludes_zero", False) and low > 0
            holds &= beats
            cells.append(f"{baseline} {value:7.2f} diff [{low:+7.2f}, {high:+7.2f}] {'yes' if beats else 'NO '}")
        lines.append(" | ".join(cells))
    return lines, holds


def report_seed(seed: int, out_root: Path, min_positives: int) -> dict[str, bool]:
    stage1 = json.loads((out_root / f"seed-{seed}" / "grounding" / "eval" / "metrics.json").read_text())
    lines, beats1 = comparison_lines(stage1, STAGE1_KEYS)
    aucs = label_auc_rows(stage1, min_positives)
    auc_ok = bool(aucs) and all(low > 0.5 for *_, low, _ in aucs)
    print(f"seed {seed} - stage 1 ({stage1['tasks']['grounding']['n']} test images)")
    print("\n".join("  " + line for line in lines))
    for label, positives, auc, low, high in aucs:
        print(f"  AUC {label:<20} {auc:.3f} [{low:.3f}, {high:.3f}] ({positives} positives) {'yes' if low > 0.5 else 'NO'}")
    verdict = {"stage 1 beats both baselines": beats1, f"label AUCs above 0.5 (>= {min_positives} positives)": auc_ok}
    stage2_path = out_root / f"seed-{seed}" / "diagnosis" / "eval" / "metrics.json"
    if stage2_path.exists():
        stage2 = json.loads(stage2_path.read_text())
        lines, _ = comparison_lines(stage2, STAGE2_KEYS)
        row = headline(stage2, next(iter(STAGE2_KEYS)))
        diff = row.get("differences", {}).get("no_finding", {})
        verdict["stage 2 beats no_finding"] = bool(diff.get("excludes_zero") and diff.get("low", 0) > 0)
        print(f"seed {seed} - stage 2")
        print("\n".join("  " + line for line in lines))
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo-seeds")
    parser.add_argument("--min_positives", type=int, default=10, help="labels with fewer positive test images are "
                        "not held to the AUC claim (their interval cannot be informative)")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    args, extra = parser.parse_known_args(argv)
    times = {}
    if not args.report_only:
        for seed in args.seeds:
            times[seed] = run_seed(seed, args.config, args.out, extra)
    verdicts = {seed: report_seed(seed, args.out, args.min_positives) for seed in args.seeds}
    print("\nclaim per seed" + "".join(f" | {seed}" for seed in args.seeds))
    for claim in verdicts[args.seeds[0]]:
        print(f"{claim:<45}" + "".join(f" | {'holds' if verdicts[s].get(claim) else 'FAILS'}" for s in args.seeds))
    if times:
        print("wall time (s)" + "".join(f" | {times[s]:.0f}" for s in args.seeds))
    return 0 if all(all(v.values()) for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
