"""Summarises a sqz-longctx-eval --log file per length and mode: accuracy on retrieval questions
(single fact + needle), agreement with dense (same answer text), accuracy on the questions dense
answers correctly ("kept"), and mean share of context keys read; then dense accuracy by the
depth of the fact.

Usage: python tools/longctx_eval/summarize.py bench.tsv
Columns of the log: length, seed, context tokens, question kind, depth, mode, question, expected
answer, correct (0/1), keys read, answer text.
"""

import collections
import sys


def main(path: str) -> None:
    rows = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
    modes = list(dict.fromkeys(r[5] for r in rows))
    by_q = collections.defaultdict(dict)  # (length, seed, question) -> mode -> row
    for r in rows:
        by_q[(int(r[0]), r[1], r[6])][r[5]] = r
    lengths = sorted({k[0] for k in by_q})
    print("| length | mode | accuracy | same answer as dense | kept (of dense-correct) |"
          " keys read |")
    print("| --- | --- | --- | --- | --- | --- |")
    for L in lengths:
        qs = [m for k, m in by_q.items() if k[0] == L and m["dense"][3] != "twohop"]
        dense_ok = [m for m in qs if m["dense"][8] == "1"]
        for mode in modes:
            ok = sum(m[mode][8] == "1" for m in qs)
            same = sum(m[mode][10].strip() == m["dense"][10].strip() for m in qs)
            kept = sum(m[mode][8] == "1" for m in dense_ok)
            keys = sum(float(m[mode][9]) for m in qs) / max(1, len(qs))
            print(f"| {L} | {mode} | {ok}/{len(qs)} ({100 * ok / max(1, len(qs)):.1f}%) | "
                  f"{same}/{len(qs)} | {kept}/{len(dense_ok)} | {keys:.3f} |")
    print()
    print("| depth of the fact | dense correct |")
    print("| --- | --- |")
    bins = collections.defaultdict(lambda: [0, 0])
    for m in by_q.values():
        d = m["dense"]
        if d[3] == "twohop":
            continue
        b = min(4, int(float(d[4]) * 5))
        bins[b][0] += d[8] == "1"
        bins[b][1] += 1
    for b in sorted(bins):
        ok, n = bins[b]
        print(f"| {b / 5:.1f}-{(b + 1) / 5:.1f} | {ok}/{n} ({100 * ok / max(1, n):.1f}%) |")


if __name__ == "__main__":
    main(sys.argv[1])
