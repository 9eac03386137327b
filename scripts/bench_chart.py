"""Draw docs/benchmarks.svg from the RESULT lines the benchmarks print.

Each line is `RESULT name value target`; a target of 0 means "no target"
(a figure, not a ratio) and is left out of the chart. Targets that are
upper bounds (latency, RSS, round trips, losses) are drawn as value/target
and lower bounds (ratios) as value/target too, with the 1.0 line marking
"target met" for ratios and "at the limit" for bounds.
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UPPER = ("round_trips", "kib_per_conn", "latency", "p99", "lost")


def main(src, dst):
    rows = []
    for line in open(src):
        parts = line.split()
        if len(parts) != 4:
            continue
        _, name, value, target = parts
        value, target = float(value), float(target)
        if target <= 0:
            continue
        upper = any(u in name for u in UPPER)
        rows.append((name, value / target, upper))
    if not rows:
        print("no ratios to draw", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    names = [r[0] for r in rows]
    vals = [r[1] for r in rows]
    colors = [("#2a9d8f" if (v <= 1 if up else v >= 1) else "#e76f51") for _, v, up in rows]
    ax.barh(names, vals, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("measured ÷ target (green: target met; bounds are met at or below 1)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
