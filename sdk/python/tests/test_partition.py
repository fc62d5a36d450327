"""Partitioned outputs: the key hash, partitions() from the host, and the parts through the fake host."""

from __future__ import annotations

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mayfly_sdk  # noqa: E402
from mayfly_sdk import Output, Outputs, PartitionedOutput, Task, log, partition, partitions, task  # noqa: E402
from mayfly_sdk import _host  # noqa: E402
from mayfly_sdk._partition import fnv1a64, mix64, part_name  # noqa: E402
from mayfly_sdk.testing import FakeHost, Item, run  # noqa: E402


def words(n: int, seed: int = 7) -> list:
    """``n`` distinct pseudo-random words (ASCII and not), the same on every run."""
    rnd = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyzéß東京"
    found: set = set()
    while len(found) < n:
        found.add("".join(rnd.choice(letters) for _ in range(rnd.randint(1, 12))))
    return sorted(found)


class HashTest(unittest.TestCase):
    def test_fnv1a64_known_vectors(self) -> None:
        # The FNV reference vectors (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
        self.assertEqual(fnv1a64(b""), 0xCBF29CE484222325)
        self.assertEqual(fnv1a64(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(fnv1a64(b"foobar"), 0x85944171F73967E8)
        # By hand: xor the byte in, then multiply, mod 2**64.
        h = 0xCBF29CE484222325
        for b in "été".encode():
            h = ((h ^ b) * 0x100000001B3) % 2**64
        self.assertEqual(fnv1a64("été".encode()), h)

    def test_partition_is_the_high_bits_of_the_mixed_hash_times_partitions(self) -> None:
        # mix64 is murmur3's fmix64 (0 stays 0; the others as its definition gives them).
        self.assertEqual(mix64(0), 0)
        self.assertEqual(mix64(0xAF63DC4C8601EC8C), 0x82A2A958A9BECE5B)
        self.assertEqual(partition(b"a", 3), (0x82A2A958A9BECE5B * 3) >> 64)
        self.assertEqual(partition(b"a", 3), 1)  # 0x82a2... / 2**64 = 0.51..., times 3
        self.assertEqual(partition(b"", 5), 4)  # mix64(0xcbf2...) = 0xefd0..., 0.93... times 5
        self.assertEqual(partition(b"foobar", 2**32 - 1), (0x2C22194922D1672B * (2**32 - 1)) >> 64)
        # Unlike the raw FNV hash's high bits, the last byte decides too:
        # single letters spread over every partition.
        self.assertEqual({partition(chr(c), 3) for c in range(97, 123)}, {0, 1, 2})

    def test_str_keys_are_hashed_as_utf8(self) -> None:
        for key in ("", "a", "été", "東京", "\U0001f600"):
            for r in (2, 3, 7, 1000):
                self.assertEqual(partition(key, r), partition(key.encode("utf-8"), r), key)
        self.assertEqual(partition(bytearray(b"foobar"), 9), partition(memoryview(b"foobar"), 9))

    def test_range_and_distribution(self) -> None:
        keys = words(10_000)
        self.assertEqual({partition(k, 1) for k in keys}, {0})
        for r in range(1, 8):
            counts = [0] * r
            for k in keys:
                p = partition(k, r)
                self.assertTrue(0 <= p < r, (k, r, p))
                counts[p] += 1
            self.assertTrue(all(counts), f"R={r}: an empty partition in {counts}")
        for r in (8, 100, 2**32 - 1):
            self.assertTrue(all(0 <= partition(k, r) < r for k in keys[:500]))

    def test_bad_partitions_are_refused(self) -> None:
        with self.assertRaises(ValueError) as cm:
            partition("a", 0)
        self.assertEqual(str(cm.exception), "partitions must be 1 to 4294967295, not 0")
        for bad in (-1, 2**32):
            self.assertRaises(ValueError, partition, "a", bad)
        for bad in (2.0, "3", None, True):
            self.assertRaises(TypeError, partition, "a", bad)
        for key in (1, None, ["a"]):
            self.assertRaises(TypeError, partition, key, 3)

    def test_part_names(self) -> None:
        self.assertEqual(part_name("counts.tsv", 3), "part-00003/counts.tsv")
        self.assertEqual(part_name("a/b.csv", 12345), "part-12345/a/b.csv")

    def test_public_api(self) -> None:
        for name in ("partition", "partitions", "PartitionedOutput"):
            self.assertIn(name, mayfly_sdk.__all__)


class PartitionedOutputTest(unittest.TestCase):
    def test_partitions_comes_from_the_host(self) -> None:
        @task
        def f(input):
            log.info("p", partitions=partitions())

        self.assertEqual(run(f, [Item("a")]).check().logs[0].fields, {"partitions": "1"})
        self.assertEqual(run(f, [Item("a")], partitions=5).check().logs[0].fields, {"partitions": "5"})

    def test_records_go_to_their_keys_parts(self) -> None:
        keys = words(200)
        test = self

        @task
        class Split(Task):
            def finish(self, outputs):
                with outputs.partitioned("recs.tsv") as out:
                    test.assertIsInstance(out, PartitionedOutput)
                    test.assertEqual((out.name, out.partitions), ("recs.tsv", 3))
                    for k in keys:
                        out.write(k, f"{k}\n")  # str data: UTF-8
                    out.write(b"bytes-key", b"raw\n")
                    test.assertIs(out.part("bytes-key"), out.output(partition(b"bytes-key", 3)))
                    test.assertIsInstance(out.part("x"), Output)

            def item(self, input):
                pass

        r = run(Split, [Item("a")], partitions=3).check()
        self.assertEqual(sorted(r.shard_outputs), ["part-00000/recs.tsv", "part-00001/recs.tsv", "part-00002/recs.tsv"])
        want = {p: [] for p in range(3)}
        for k in keys:
            want[partition(k, 3)].append(f"{k}\n")
        want[partition("bytes-key", 3)].append("raw\n")
        self.assertEqual(r.parts("recs.tsv"), {p: "".join(lines).encode() for p, lines in want.items()})
        self.assertEqual(r.parts("other"), {})

    def test_parts_are_opened_lazily(self) -> None:
        key0 = next(k for k in words(100) if partition(k, 4) == 0)
        key3 = next(k for k in words(100) if partition(k, 4) == 3)
        seen = []

        @task
        def f(input, params, outputs):
            out = outputs.partitioned("x")
            seen.append(dict(out.parts))
            out.write(key3, b"3")
            out.write(key0, b"0")
            out.write(key3, b"3")
            seen.append(sorted(out.parts))
            outputs.partitioned("never-written")  # no record, no output

        r = run(f, [Item("in")], partitions=4).check()
        self.assertEqual(seen, [{}, [0, 3]])
        self.assertEqual(r.item_outputs, {"in": {"part-00003/x": b"33", "part-00000/x": b"0"}})
        self.assertEqual(r.parts("x", item="in"), {0: b"0", 3: b"33"})

    def test_one_partition_writes_part_zero(self) -> None:
        @task
        def f(input, params, outputs):
            outputs.partitioned("x").write("anything", "y")

        self.assertEqual(run(f, [Item("a")]).check().item_outputs, {"a": {"part-00000/x": b"y"}})

    def test_parts_left_open_are_closed_with_their_call(self) -> None:
        @task
        class Keep(Task):
            def start(self, shard, params, outputs):
                self.early = outputs.partitioned("early")

            def item(self, input, outputs):
                outputs.partitioned("mine").write(input.name, input.name)  # left open

            def finish(self, outputs):
                self.early.write("k", "from start")  # a shard output: start and finish are the shard's
                outputs.partitioned("late").write("k", "from finish")  # left open

        r = run(Keep, [Item("a"), Item("b")], partitions=2).check()
        p = partition("k", 2)
        self.assertEqual(r.shard_outputs, {f"part-0000{p}/early": b"from start", f"part-0000{p}/late": b"from finish"})
        self.assertEqual(
            r.item_outputs,
            {
                "a": {f"part-0000{partition('a', 2)}/mine": b"a"},
                "b": {f"part-0000{partition('b', 2)}/mine": b"b"},
            },
        )

    def test_writing_in_another_call_than_the_one_that_opened_it_is_refused(self) -> None:
        @task
        class Stale(Task):
            def start(self, shard, params, outputs):
                self.out = outputs.partitioned("x")

            def item(self, input, outputs):
                self.out.write(input.name, b"z")  # would be the item's outputs, not the shard's

        r = run(Stale, [Item("a")], partitions=2)
        self.assertEqual((r.failure.call, r.failure.item), ("item", "a"))
        self.assertIn("ValueError: partitioned output x opens its parts as they are written", r.failure.message)

    def test_close_and_errors(self) -> None:
        errors = []

        @task
        def f(input, params, outputs):
            out = outputs.partitioned("x")
            for bad in (lambda: out.output(2), lambda: out.output(-1), lambda: out.write(1, b"")):
                try:
                    bad()
                except (ValueError, TypeError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
            part = out.part("k")
            out.write("k", "v")
            out.close()
            self.assertTrue(out.closed and part.closed)
            out.close()  # twice is fine
            try:
                out.write("k", "late")
            except ValueError as e:
                errors.append(str(e))
            try:
                outputs.partitioned(3)
            except TypeError as e:
                errors.append(str(e))

        r = run(f, [Item("a")], partitions=2).check()
        self.assertEqual(
            errors,
            [
                "ValueError: partition 2 of output x is out of range (0 to 1)",
                "ValueError: partition -1 of output x is out of range (0 to 1)",
                "TypeError: a partition key is str or bytes, not int",
                "partitioned output x is closed",
                "an output name is a str, not int",
            ],
        )
        self.assertEqual(r.parts("x", item="a"), {partition("k", 2): b"v"})

    def test_a_bad_part_name_fails_when_the_part_is_opened(self) -> None:
        @task
        def f(input, params, outputs):
            outputs.partitioned("bad name").write("k", b"v")

        r = run(f, [Item("a")], partitions=2)
        self.assertIn('output name "part-0000', r.failure.message)
        self.assertIn("/bad name\" contains ' '", r.failure.message)

    def test_bad_partitions_are_refused(self) -> None:
        with self.assertRaises(ValueError) as cm:
            run(lambda: None, [], partitions=0)
        self.assertEqual(str(cm.exception), "partitions must be 1 to 4294967295, not 0")
        previous = _host.use(FakeHost(partitions=0))  # a host that would say 0
        try:
            with self.assertRaises(ValueError):
                Outputs().partitioned("x")
        finally:
            _host.use(previous)


if __name__ == "__main__":
    unittest.main()
