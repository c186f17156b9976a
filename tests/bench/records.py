"""Benchmark records: the integration tests' make_records, fast enough for a million.

harness.make_records re-encodes a record once per word it adds to the Subject header until
the line reaches its target length (~25 us a word). The JSON encoding of a string is the
concatenation of the encodings of its characters, so the length after each word can be
summed instead: the same random draws, the same bytes, in a few percent of the time.
(check_same() compares the two.)
"""

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402

_WORD_BYTES = {w: len(json.dumps(w, ensure_ascii=False).encode()) - 2 for w in harness._WORDS}


def iter_records(n, seed=0, prefix="r"):
    """The lines harness.make_records(n, seed, prefix) returns, one at a time."""
    rng = random.Random(f"{seed}:{prefix}")
    for i in range(n):
        rec = harness._record(rng, i, prefix)
        target = rng.randint(400, 1200)
        base = len(harness._encode(rec))  # with "Subject":""
        words, length = [], base
        while length < target:
            w = rng.choice(harness._WORDS)
            length += _WORD_BYTES[w] + (1 if words else 0)
            words.append(w)
        if words:
            rec["headers"]["Subject"] = " ".join(words)
        yield harness._encode(rec)


def check_same(n=3000, seed=0, prefix="r"):
    fast = list(iter_records(n, seed, prefix))
    slow = harness.make_records(n, seed, prefix)
    if fast != slow:
        bad = next(i for i, (a, b) in enumerate(zip(fast, slow)) if a != b)
        raise AssertionError(f"records differ from make_records at {bad}")
    return n


if __name__ == "__main__":
    print(f"{check_same()} records identical to harness.make_records")
