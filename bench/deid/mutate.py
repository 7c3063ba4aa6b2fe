#!/usr/bin/env python3
"""Deterministic damaged copies of DICOM files, for the batch's robustness and memory bench.

usage: mutate.py OUTDIR N FILE...     (standard library only)
Writes N files to OUTDIR, each a copy of one of FILE (in turn) damaged one of three ways:
cut at a random offset, a few flipped bits, or four bytes after the preamble set to 0xFFFFFFF0
(a length field, where they fall on one). Same arguments, same files (seeded).
"""
import os
import random
import sys


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, n, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    rng = random.Random(14)
    for i in range(n):
        data = bytearray(open(sources[i % len(sources)], "rb").read())
        lo = 132 if len(data) > 140 else 0
        kind = i % 3
        if kind == 0:
            data = data[: rng.randrange(lo, len(data))]
        elif kind == 1:
            for _ in range(rng.randrange(1, 9)):
                at = rng.randrange(lo, len(data))
                data[at] ^= 1 << rng.randrange(8)
        else:
            at = rng.randrange(lo, max(lo + 1, len(data) - 4))
            data[at : at + 4] = (0xFFFFFFF0).to_bytes(4, "little")
        with open(os.path.join(out, f"m{i:03d}.dcm"), "wb") as fh:
            fh.write(data)


if __name__ == "__main__":
    main()
