"""Tests of wordcount-py, without wasm (mayfly_sdk.testing).

Run: cd tasks/wordcount-py && PYTHONPATH=../../sdk/python python3 -m unittest
"""

from __future__ import annotations

import heapq
import io
import random
import re
import unittest
from collections import Counter

import app
from mayfly_sdk import partition
from mayfly_sdk.testing import Item, run

# Unicode White_Space (PropList.txt): what Rust's char::is_whitespace tests,
# and what separates words. Not U+001C..U+001F (str.isspace() says they are),
# not U+180E, U+200B, U+2060, U+FEFF.
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_REF_WORD = re.compile(f"[^{re.escape(WHITE_SPACE)}]+")


def reference(text: str) -> Counter:
    """The word counts by the definition: maximal runs of non-White_Space characters."""
    return Counter(w.encode() for w in _REF_WORD.findall(text))


def table(text, chunk: int = app.CHUNK):
    data = text.encode() if isinstance(text, str) else text
    return app.lines_of(app.count_words(data, 0, chunk))


def tsv(pairs) -> bytes:
    return "".join(f"{w}\t{n}\n" for w, n in pairs).encode()


def merged(data: bytes, chunk: int = app.CHUNK) -> dict:
    counts: dict = {}
    app.merge_counts_into(counts, io.BytesIO(data), chunk)
    return counts


class WordRuleTest(unittest.TestCase):
    def test_counts_and_orders_by_count_then_bytes(self) -> None:
        got = table("b a b\tc\n\na  B")
        self.assertEqual(got, [("a", 2), ("b", 2), ("B", 1), ("c", 1)])

    def test_unicode_white_space_separates_words_but_other_symbols_do_not(self) -> None:
        got = table("été\u00a0été\u3000東京\u2009x\u200by\u0085z")
        self.assertEqual(got, [("été", 2), ("x\u200by", 1), ("z", 1), ("東京", 1)])

    def test_information_separators_are_not_white_space(self) -> None:
        # str.split() would split on these four; Rust's is_whitespace does not.
        text = "a\x1cb c\x1dd e\x1ef g\x1fh \x1c"
        self.assertEqual(table(text), [("\x1c", 1), ("a\x1cb", 1), ("c\x1dd", 1), ("e\x1ef", 1), ("g\x1fh", 1)])
        self.assertNotEqual(len(text.split()), 5)

    def test_next_line_and_zero_width_characters(self) -> None:
        self.assertEqual(table("a\x85b"), [("a", 1), ("b", 1)])
        for c in ("\u200b", "\u2060", "\ufeff", "\u180e"):
            self.assertEqual(table(f"a{c}b"), [(f"a{c}b", 1)], f"U+{ord(c):04X}")

    def test_every_character_is_classified_as_unicode_says(self) -> None:
        self.assertEqual(len(WHITE_SPACE), 25)
        self.assertEqual(
            {chr(c) for c in range(0x110000) if chr(c).isspace()} - set(WHITE_SPACE), set("\x1c\x1d\x1e\x1f")
        )
        chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
        text = "".join(f"a{c}b\n" for c in chars)
        got = app.count_words(text.encode(), 0, 1 << 16)
        self.assertEqual(got, reference(text))
        self.assertEqual(got[b"a"], 25)  # one "a" per White_Space character: "a<space>b" is two words

    def test_empty_input(self) -> None:
        self.assertEqual(table(""), [])
        self.assertEqual(table(" \n\t \u3000"), [])


class ChunkTest(unittest.TestCase):
    PIECES = [
        "a", "bc", "defghijk", "lmnopqrstuvwxyz0123", "\x01", "\x1c", "\x1f", "!", "é", "日本", "\x85x",
        "\xa0", " ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\u1680", "\u2003", "\u2028", "\u202f", "\u205f",
        "\u3000", "\u2060", "\u200b", "’", "—", "\U0001f600",
    ]  # fmt: skip

    def test_random_texts_at_every_chunk_size(self) -> None:
        seed = 0x2545F4914F6CDD1D
        for rnd in range(200):
            parts = []
            for _ in range(rnd * 7 % 300):
                seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 64)
                parts.append(self.PIECES[(seed >> 33) % len(self.PIECES)])
            text = "".join(parts)
            want = reference(text)
            for chunk in (1, 2, 3, 7, 64, 1 << 20):
                self.assertEqual(app.count_words(text.encode(), 0, chunk), want, f"chunk {chunk}: {text!r}")

    def test_words_and_characters_split_across_chunks_are_whole(self) -> None:
        text = "ab çd 東京x " * 100_000  # 1.5 MB: crosses the 1 MiB read and the sdk's 256 KiB chunks
        want = [("ab", 100_000), ("çd", 100_000), ("東京x", 100_000)]
        self.assertEqual(table(text), want)
        r = run(app.WordCount, [Item("big.txt", text)]).check()
        self.assertEqual(r.shard_outputs["counts.tsv"], tsv(want))

    def test_a_word_longer_than_a_chunk(self) -> None:
        long = "é" * 300_001
        self.assertEqual(table(f"x {long} y{long}\u3000{long}", 1000), [(long, 2), ("x", 1), ("y" + long, 1)])

    def test_white_space_cut_by_a_chunk_end(self) -> None:
        text = "a\u3000b\u2028c\xa0d"
        for chunk in range(1, 12):
            self.assertEqual(table(text, chunk), [("a", 1), ("b", 1), ("c", 1), ("d", 1)], f"chunk {chunk}")


class NotUtf8Test(unittest.TestCase):
    def offset(self, data: bytes, base: int = 0, chunk: int = app.CHUNK) -> int:
        with self.assertRaises(app.NotUtf8) as cm:
            app.count_words(data, base, chunk)
        return cm.exception.offset

    def test_offset_in_the_object(self) -> None:
        data = b"ok " * 100_000 + b"\xff"
        self.assertEqual(self.offset(data, 1000), 1000 + 300_000)
        for chunk in (1, 2, 3, 7, 4096):
            self.assertEqual(self.offset(data, 1000, chunk), 1000 + 300_000)

    def test_truncated_and_invalid_sequences(self) -> None:
        self.assertEqual(self.offset("é".encode()[:1]), 0)  # truncated at the very end
        self.assertEqual(self.offset(b"abc \xe6\x97"), 4)
        self.assertEqual(self.offset(b"ab\xed\xa0\x80"), 2)  # a surrogate
        self.assertEqual(self.offset(b"ab\xc0\xaf"), 2)  # overlong
        self.assertEqual(self.offset(b"abc\xf4\x90\x80\x80"), 3)  # past U+10FFFF
        self.assertEqual(self.offset(b"a\xe2\x80b"), 1)
        for chunk in (1, 2, 3):
            self.assertEqual(self.offset("日本".encode() + b"\xe6\x97x", 0, chunk), 6)
            self.assertEqual(self.offset("word日".encode() + b"\x80", 0, chunk), 7)

    def test_through_the_task(self) -> None:
        r = run(app.WordCount, [Item("x.txt", b"ok \xff", offset_in_object=1000)])
        self.assertEqual(r.failure.call, "item")
        self.assertFalse(r.failure.retryable)
        self.assertEqual(r.failure.message, "x.txt: input is not valid UTF-8 at byte offset 1003")
        self.assertEqual(r.shard_outputs, {})


class ReduceTest(unittest.TestCase):
    def test_sums_counts_files(self) -> None:
        counts = merged(b"a\t2\nb\t1\na\t3\nc d\t1\n")
        out = io.BytesIO()
        app.write_counts(counts, out)
        self.assertEqual(out.getvalue(), b"a\t5\nb\t1\nc d\t1\n")

    def test_lines_cut_by_the_reads_and_a_last_line_without_newline(self) -> None:
        tables = (
            "été\t3\nb\t+2\n\na\t1\nété\t4\nlong-word-over-the-buffer\t18446744073709551615\nb\t1\nz\t007\nw\t0"
        ).encode()
        whole = merged(tables)
        for chunk in (1, 2, 3, 5, 7, 64):
            self.assertEqual(merged(tables, chunk), whole, f"chunk {chunk}")
        self.assertEqual(whole["été".encode()], 7)
        self.assertEqual((whole[b"b"], whole[b"a"], whole[b"z"]), (3, 1, 7))
        self.assertEqual(whole[b"long-word-over-the-buffer"], 2**64 - 1)
        self.assertNotIn(b"w", whole)  # a count of 0 adds nothing
        self.assertEqual(merged(b"a\t" + b"0" * 30 + b"12\n"), {b"a": 12})  # leading zeros, as u64::from_str
        self.assertEqual(merged(b"tab\tin word\t4\n"), {b"tab\tin word": 4})

    def bad(self, data: bytes, chunk: int = app.CHUNK):
        with self.assertRaises(app.BadLine) as cm:
            merged(data, chunk)
        return cm.exception.line, cm.exception.reason

    def test_malformed_lines_say_which_and_why(self) -> None:
        self.assertEqual(self.bad(b"a\t1\nnotab\n"), (2, "no tab"))
        self.assertEqual(self.bad(b"a\tx\n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad(b"\n\n\t5\n"), (3, "empty word"))
        self.assertEqual(self.bad(b"a\t\n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad(b"a\t+\n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad(b"a\t-1\n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad(b"a\t++1\n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad(b"a\t1 \n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad(b"a\t1\r\n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad("a\t١\n".encode()), (1, "the count is not a whole number"))  # not ASCII
        self.assertEqual(self.bad(b"a\t18446744073709551616\n"), (1, "the count is not a whole number"))
        self.assertEqual(self.bad(b"a\t" + b"9" * 5000 + b"\n"), (1, "the count is not a whole number"))
        over = b"a\t18446744073709551615\na\t1\n"
        self.assertEqual(self.bad(over), (2, "the total overflows"))
        self.assertEqual(self.bad(b"a\t1\nb\t1\nno-tab-here\n", 2), (3, "no tab"))
        self.assertEqual(self.bad(b"a\t1\n\nlast", 3), (3, "no tab"))

    def test_through_the_task(self) -> None:
        items = [Item("m1/counts.tsv", "a\t2\nb\t1\n"), Item("m2/counts.tsv", "b\t3\nc\t1\n")]
        r = run(app.WordCount, items, params={"mode": "reduce"}).check()
        self.assertEqual(r.shard_outputs, {"counts.tsv": b"b\t4\na\t2\nc\t1\n"})
        self.assertEqual(
            [(line.message, line.fields) for line in r.logs],
            [("Reduce done", {"distinct": "3", "items": "2", "bytes": "16"})],
        )
        r = run(app.WordCount, [Item("bad.tsv", "a\t1\nno tab\n")], params={"mode": "reduce"})
        self.assertEqual(r.failure.message, "bad.tsv: line 2 is not a `word<TAB>count` line: no tab")
        self.assertFalse(r.failure.retryable)


class TaskTest(unittest.TestCase):
    def test_map_combines_the_items_of_a_shard(self) -> None:
        r = run(app.WordCount, [Item("a.txt", "b a b\tc"), Item("b.txt", "a")]).check()
        self.assertEqual(r.shard_outputs, {"counts.tsv": b"a\t2\nb\t2\nc\t1\n"})
        self.assertEqual(r.item_outputs, {})
        self.assertEqual(
            [(line.level, line.message, line.fields) for line in r.logs],
            [("info", "Map done", {"distinct": "3", "items": "2", "bytes": "8"})],
        )

    def test_empty_shard_writes_an_empty_table(self) -> None:
        r = run(app.WordCount, [Item("e.txt", "")]).check()
        self.assertEqual(r.shard_outputs, {"counts.tsv": b""})

    def test_parameters(self) -> None:
        r = run(app.WordCount, [Item("a", "x")], params={"mode": "map"}).check()
        self.assertEqual(r.shard_outputs["counts.tsv"], b"x\t1\n")
        r = run(app.WordCount, [Item("a", "x")], params={"mode": "count"})
        self.assertEqual(r.failure.call, "start")
        self.assertTrue(r.failure.message.startswith("invalid task parameters: field 'mode'"), r.failure.message)
        r = run(app.WordCount, [Item("a", "x")], params={"mod": "map"})
        self.assertTrue(r.failure.message.startswith("invalid task parameters: unknown field 'mod'"))

    def test_a_failing_read_is_retryable(self) -> None:
        r = run(app.WordCount, [Item("a", "x " * 1000, fail_at=500)])
        self.assertTrue(r.failure.retryable)
        self.assertTrue(r.failure.message.startswith("host storage error"), r.failure.message)


def sample_text(seed: int, words: int = 3000) -> str:
    """Words with many different counts (and ties), ASCII and not, the same on every run."""
    rnd = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(400)] + [f"été{i}" for i in range(100)] + ["東京", "a", "b", "Z", "\x1c"]
    return " ".join(rnd.choice(vocabulary[: rnd.randint(1, len(vocabulary))]) for _ in range(words))


def output_order(line: bytes):
    """The order of counts.tsv lines: count (highest first), then word bytes (sort -k2,2nr -k1,1)."""
    word, _, count = line.rpartition(b"\t")
    return -int(count), word


class PartitionTest(unittest.TestCase):
    ITEMS = [Item("a.txt", sample_text(1)), Item("b.txt", sample_text(2))]

    def test_parts_split_the_unpartitioned_lines_by_word(self) -> None:
        whole = run(app.WordCount, self.ITEMS).check().shard_outputs["counts.tsv"]
        whole_lines = whole.splitlines(keepends=True)
        r = run(app.WordCount, self.ITEMS, partitions=3).check()
        parts = r.parts("counts.tsv")
        self.assertEqual(sorted(parts), [0, 1, 2])
        self.assertEqual(sorted(r.shard_outputs), [f"part-0000{p}/counts.tsv" for p in range(3)])  # no counts.tsv
        lines = {p: data.splitlines(keepends=True) for p, data in parts.items()}
        self.assertEqual(sorted(line for p in lines for line in lines[p]), sorted(whole_lines))
        seen: set = set()
        for p, part in lines.items():
            words = {line.rpartition(b"\t")[0] for line in part}
            self.assertEqual(len(words), len(part))
            self.assertFalse(words & seen, f"part {p} shares words with another")
            seen |= words
            self.assertEqual({partition(w, 3) for w in words}, {p})
            self.assertEqual(part, sorted(part, key=output_order), f"part {p} is not sorted")
            self.assertEqual(part, [line for line in whole_lines if partition(line.rpartition(b"\t")[0], 3) == p])
        self.assertEqual(b"".join(heapq.merge(*lines.values(), key=output_order)), whole)
        self.assertEqual(r.logs[0].fields["distinct"], str(len(whole_lines)))

    def test_one_partition_writes_counts_tsv_as_before(self) -> None:
        whole = run(app.WordCount, self.ITEMS).check()
        r = run(app.WordCount, self.ITEMS, partitions=1).check()
        self.assertEqual(r.shard_outputs, whole.shard_outputs)
        self.assertEqual(list(r.shard_outputs), ["counts.tsv"])

    def test_map_reduce_by_partition_gives_the_one_reducer_output(self) -> None:
        shards = [self.ITEMS[:1], self.ITEMS[1:], [Item("c.txt", sample_text(3, 500))]]
        maps = [run(app.WordCount, items).check().shard_outputs["counts.tsv"] for items in shards]
        one = [Item(f"m{i}/counts.tsv", data) for i, data in enumerate(maps)]
        want = run(app.WordCount, one, params={"mode": "reduce"}).check().shard_outputs["counts.tsv"]
        for r in (2, 3, 5):
            parted = [run(app.WordCount, items, partitions=r).check().parts("counts.tsv") for items in shards]
            reduced = []
            for p in range(r):
                inputs = [Item(f"m{i}/part-{p:05d}/counts.tsv", m[p]) for i, m in enumerate(parted) if p in m]
                # The host says 1 to the reduce; even told more, the reduce writes one counts.tsv.
                out = run(app.WordCount, inputs, params={"mode": "reduce"}, partitions=r).check().shard_outputs
                reduced.append(out["counts.tsv"].splitlines(keepends=True))
            self.assertEqual(b"".join(heapq.merge(*reduced, key=output_order)), want, f"{r} partitions")

    def test_an_empty_shard_writes_no_part(self) -> None:
        r = run(app.WordCount, [Item("e.txt", " ")], partitions=3).check()
        self.assertEqual(r.shard_outputs, {})


if __name__ == "__main__":
    unittest.main()
