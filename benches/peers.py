#!/usr/bin/env python3
"""Runs store benchmark groups with each engine in a fresh process, several rounds, the
engine order rotated every round, and prints each engine's median rate per group and
tidemark's ratio to each peer (medians of the per-round ratios, so a round slowed by
the machine compares engines that ran close together).

    python3 benches/peers.py [--rounds N] [--features bench-rocksdb] GROUP...

GROUP is a store benchmark group (`update-zipf-1t`, `ycsb-b-2t`, `readrandom-hit`, ...)
or `writeamp` (its load rate, bytes per logical byte and full compaction time are
parsed from its printed line). The concurrent groups (`update-zipf-*`, `ycsb-*`) also
report the CPU time per operation of the workers and of every other thread (during the
operations and settling after them) and the rate those bound the workers to. Engines:
tidemark, fjall, and rocksdb when built with `--features bench-rocksdb`. Extra
environment (`TIDEMARK_BENCH_*`) passes through.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

RATE = re.compile(r"thrpt:\s+\[\S+ \S+ (\S+) (\S+)")
CPU = re.compile(
    r"CPU per operation: workers ([\d.]+) us, other threads ([\d.]+) us during the "
    r"operations \+ ([\d.]+) us settling; \d+ cores bound \d+ workers at (\d+) ops/s"
)
UNITS = {"elem/s": 1.0, "Kelem/s": 1e3, "Melem/s": 1e6, "Gelem/s": 1e9}
WRITEAMP = re.compile(
    r"writeamp (\w+): .*?\((\d+) ops/s\): process bytes written per logical byte ([\d.]+) "
    r"\(tables only: ([\d.]+|n/a)\);\s+full compaction ([\d.]+) s"
)


def bench_binary(features):
    cmd = ["cargo", "bench", "--bench", "store", "--no-run", "--message-format=json"]
    if features:
        cmd += ["--features", features]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
            if msg["target"]["name"] == "store":
                return msg["executable"]
    sys.exit("no store benchmark binary was built")


def run(binary, group, engine):
    env = dict(os.environ, TIDEMARK_BENCH_ENGINES=engine)
    p = subprocess.run(
        [binary, "--bench", group], env=env, capture_output=True, text=True
    )
    if p.returncode != 0:
        sys.exit(f"{group}/{engine} failed:\n{p.stderr[-4000:]}")
    text = p.stdout + p.stderr
    if group == "writeamp":
        m = WRITEAMP.search(text.replace("\n", " "))
        if not m:
            sys.exit(f"writeamp/{engine}: no result line")
        return {
            "load ops/s": float(m.group(2)),
            "bytes/logical": float(m.group(3)),
            "table bytes/logical": float(m.group(4)) if m.group(4) != "n/a" else float("nan"),
            "full compaction s": float(m.group(5)),
        }
    m = RATE.search(text)
    if not m:
        sys.exit(f"{group}/{engine}: no throughput line")
    got = {"ops/s": float(m.group(1)) * UNITS[m.group(2)]}
    m = CPU.search(text)
    if m:
        got["workers us/op"] = float(m.group(1))
        got["background us/op"] = float(m.group(2)) + float(m.group(3))
        got["bound ops/s"] = float(m.group(4))
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--features", default="")
    ap.add_argument("groups", nargs="+")
    a = ap.parse_args()
    engines = ["tidemark", "fjall"] + (["rocksdb"] if "bench-rocksdb" in a.features else [])
    only = os.environ.get("TIDEMARK_BENCH_ENGINES")
    if only:
        engines = [e for e in engines if e in only.split(",")]
    binary = bench_binary(a.features)
    # results[group][engine][metric] = [one value per round]
    results = {}
    for r in range(a.rounds):
        order = engines[r % len(engines):] + engines[: r % len(engines)]
        for group in a.groups:
            for engine in order:
                got = run(binary, group, engine)
                for metric, v in got.items():
                    results.setdefault(group, {}).setdefault(engine, {}).setdefault(
                        metric, []
                    ).append(v)
                print(f"round {r + 1} {group}/{engine}: {got}", flush=True)
    print()
    print("| group | metric | " + " | ".join(engines) + " | "
          + " | ".join(f"tidemark / {e}" for e in engines[1:]) + " |")
    print("|---" * (2 + 2 * len(engines) - 1) + "|")
    for group, by_engine in results.items():
        metrics = by_engine[engines[0]].keys()
        for metric in metrics:
            cells = []
            for e in engines:
                vals = by_engine[e][metric]
                cells.append(f"{statistics.median(vals):,.2f} ({', '.join(f'{v:,.2f}' for v in vals)})")
            ratios = []
            for e in engines[1:]:
                per_round = [t / p for t, p in zip(by_engine["tidemark"][metric], by_engine[e][metric]) if p]
                ratios.append(f"{statistics.median(per_round):.2f}x" if per_round else "n/a")
            print(f"| {group} | {metric} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
