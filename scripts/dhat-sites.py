#!/usr/bin/env python3
"""Heap blocks alive at the heap's peak, by allocation site, from a valgrind DHAT file.

    python3 scripts/dhat-sites.py dhat.out [--per N] [--top K] [--frames F]

--per N divides the bytes by N (for example the number of streams held open at the peak).
Frames of the allocator, alloc/core and collections are skipped so that each site shows the
code that asked for the memory (docs/BENCHMARKS.md, "Memory per waiting stream").
"""
import argparse
import json
import re

SKIP = re.compile(
    r"alloc::|core::|__rust|malloc|memalign|calloc|realloc|RawVec|raw_vec|hashbrown|"
    r"finish_grow|reserve|grow_one|vgpreload"
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--per", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--frames", type=int, default=4)
    a = ap.parse_args()
    with open(a.file) as f:
        d = json.load(f)
    ftbl = d["ftbl"]
    rows = []
    for p in d["pps"]:
        gb = p.get("gb", 0)
        if not gb:
            continue
        frames = [re.sub(r"^0x[0-9A-F]+: | \(in .*\)$", "", ftbl[i]) for i in p["fs"]]
        frames = [x for x in frames if not SKIP.search(x)]
        rows.append((gb, p.get("gbk", 0), frames[: a.frames]))
    rows.sort(key=lambda r: -r[0])
    total = sum(r[0] for r in rows)
    print(f"bytes at the peak: {total} ({total / a.per:.0f} per {a.per})")
    for gb, blocks, frames in rows[: a.top]:
        print(f"{gb / a.per:10.0f} bytes  {blocks:6} blocks of {gb // max(blocks, 1):6}")
        for x in frames:
            print("             ", x[:160])


if __name__ == "__main__":
    main()
