"""The benchmark's Lithops contender: wordcount (map + reduce) in Lithops'
localhost mode (a local backend and local storage, the mode Lithops suggests
for trying it without a cloud).

    python lithops_wordcount.py --batches BATCHES --out OUT --workers 2

BATCHES is a file with one batch of input paths per line (tab-separated), the
same batches the native baseline hands to its processes. Each map call counts
the words of one batch; the reduce sums them. A word is a maximal run of
non-white-space characters, counted case-sensitively (str.split: Unicode white
space, plus U+001C..U+001F, which the generated data never contains). OUT gets
one "word<TAB>count" line per word, highest count first, then by the word's
UTF-8 bytes: the format of mayfly's wordcount task, so the outputs compare
byte for byte.
"""

import argparse
import collections
import os
import sys


def count_batch(paths):
    counts = collections.Counter()
    for path in paths.split("\t"):
        with open(path, encoding="utf-8") as f:
            counts.update(f.read().split())
    return counts


def merge(results):
    total = collections.Counter()
    for counts in results:
        total.update(counts)
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with open(args.batches, encoding="utf-8") as f:
        batches = [line.rstrip("\n") for line in f if line.strip()]

    import lithops

    config = {
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": None},
        "localhost": {"runtime": sys.executable, "worker_processes": args.workers},
    }
    executor = lithops.FunctionExecutor(config=config)
    futures = executor.map_reduce(count_batch, batches, merge)
    total = executor.get_result(futures)
    executor.clean()

    entries = sorted(total.items(), key=lambda kv: (-kv[1], kv[0].encode("utf-8")))
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for word, count in entries:
            out.write(f"{word}\t{count}\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
