"""wordcount-py: counts words, and merges counts (the Python twin of tasks/wordcount).

A word is a maximal run of characters that are not Unicode ``White_Space``;
counting is case-sensitive. The output ``counts.tsv`` has one
``word<TAB>count`` line per word, sorted by count (highest first), then by
word (ascending by bytes). Its bytes are those of the Rust ``wordcount``.

Parameters: ``mode = "map"`` (default) counts the words of the input;
``mode = "reduce"`` reads an input made of ``counts.tsv`` files
(concatenated) and writes their sum in the same format.

When the job's reduce has several partitions (``[reduce] partitions = R``),
the map writes ``counts.tsv`` partitioned by word: part p (the output
``part-00003/counts.tsv`` for p = 3, written only if it has words) holds
the lines of the words that ``partition(word, R)`` puts in p, in the same
order; the reduce of partition p then sums them. Merging the reduce outputs by count (highest
first), then word gives the one-reducer ``counts.tsv``.

It combines per shard: one table counts the words of every item of the
shard, and ``finish`` writes it as the shard's one ``counts.tsv``.

Input that is not valid UTF-8 fails the item (not retryable), naming the
byte offset of the first bad byte in the object.

How it is fast in CPython: the input is counted as bytes, with the C loops
of ``bytes.split()`` (which splits on exactly the six ASCII White_Space
bytes) and ``Counter.update``; the non-ASCII White_Space characters (U+0085,
U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000) are
first replaced by a space, on their UTF-8 encodings, only in chunks that
contain one of their lead bytes. ``str.split()`` alone would be wrong: it
also splits on U+001C..U+001F, which are not White_Space.
"""

from __future__ import annotations

import enum
import io
import re
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter
from typing import BinaryIO, Dict, Iterable, Tuple

from mayfly_sdk import Fatal, Input, Outputs, Shard, Task, log, partition, partitions, task

#: The name of the output file.
OUTPUT = "counts.tsv"
#: Bytes read per step.
CHUNK = 1 << 20
_MAX_U64 = (1 << 64) - 1


class Mode(enum.Enum):
    """What the task does with its input."""

    MAP = "map"  #: count the words of the input
    REDUCE = "reduce"  #: merge counts.tsv files


@dataclass
class Params:
    """The task's parameters."""

    mode: Mode = Mode.MAP


class NotUtf8(Exception):
    """The input is not UTF-8; ``offset`` is that of the first bad byte in the object."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


class BadLine(Exception):
    """A ``counts.tsv`` line is malformed (reduce mode)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(line, reason)
        self.line = line
        self.reason = reason


# The non-ASCII White_Space characters, as UTF-8. In valid UTF-8 a lead byte
# never occurs inside another character, so these byte sequences are always
# those characters.
_WIDE_SPACE = re.compile(rb"\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80")
_LEADS = (b"\xc2", b"\xe1\x9a\x80", b"\xe2\x80", b"\xe2\x81\x9f", b"\xe3\x80\x80")
_ASCII_SPACE = (b" ", b"\n", b"\t", b"\r", b"\x0b", b"\x0c")


def _normalize(text: bytes) -> bytes:
    """``text`` (valid UTF-8) with every non-ASCII White_Space character replaced by a space."""
    for lead in _LEADS:
        if lead in text:
            return _WIDE_SPACE.sub(b" ", text)
    return text


def count_words_into(counts: Counter, reader: BinaryIO, base: int, chunk: int = CHUNK) -> None:
    """Counts the words read from ``reader`` into ``counts`` (keys: the words' UTF-8 bytes).

    ``base`` is the offset of the reader's first byte in its object, used in
    the error for invalid UTF-8 (:class:`NotUtf8`). Memory is bounded by the
    read size and the longest word; a word longer than a read is put
    together once, not copied at each read.
    """
    tail: list = []  # the pieces of a word that may go on in the next read
    partial = b""  # the start of a character cut by the end of the last read
    consumed = 0  # bytes read so far
    while True:
        data = reader.read(chunk)
        at_end = not data
        fresh = partial + data if partial else data
        fresh_start = consumed - len(partial)  # offset of fresh[0] in the reader
        consumed += len(data)
        try:
            fresh.decode("utf-8")  # validates (the C decoder has an ASCII fast path)
            partial = b""
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data" and e.end == len(fresh) and not at_end:
                fresh, partial = fresh[: e.start], fresh[e.start :]
            else:
                raise NotUtf8(base + fresh_start + e.start) from None
        if at_end:
            if tail:
                counts[b"".join(tail)] += 1
            return
        # `fresh` starts and ends on character boundaries, so the non-ASCII
        # spaces can be replaced in it alone.
        text = _normalize(fresh)
        words = text.split()
        if not words:  # only white space, or nothing (one cut character)
            if text and tail:
                counts[b"".join(tail)] += 1
                tail = []
            continue
        ends_in_word = not text.endswith(_ASCII_SPACE)
        if tail:
            if text.startswith(_ASCII_SPACE):
                counts[b"".join(tail)] += 1  # the word ended with the last read
            elif len(words) == 1 and ends_in_word:
                tail.append(words[0])  # the whole read continues the word
                continue
            else:
                words[0] = b"".join(tail) + words[0]
            tail = []
        if ends_in_word:
            tail = [words.pop()]
        counts.update(words)


def count_words(data: bytes, base: int = 0, chunk: int = CHUNK) -> Counter:
    """The word counts of ``data`` (for tests and tools)."""
    counts: Counter = Counter()
    count_words_into(counts, io.BytesIO(data), base, chunk)
    return counts


_DIGITS = re.compile(rb"\+?[0-9]+")


def _merge_line(counts: Dict[bytes, int], line: bytes, number: int) -> None:
    """Adds one ``word<TAB>count`` line (line ``number``) to ``counts``; an empty line is skipped."""
    if not line:
        return
    word, tab, digits = line.rpartition(b"\t")
    if not tab:
        raise BadLine(number, "no tab")
    if not word:
        raise BadLine(number, "empty word")
    # As Rust's u64::from_str: an optional `+`, then ASCII digits, at most 2**64-1.
    if not _DIGITS.fullmatch(digits):
        raise BadLine(number, "the count is not a whole number")
    digits = digits.lstrip(b"+").lstrip(b"0")
    if len(digits) > 20 or (count := int(digits or b"0")) > _MAX_U64:
        raise BadLine(number, "the count is not a whole number")
    if count:
        total = counts.get(word, 0) + count
        if total > _MAX_U64:
            raise BadLine(number, "the total overflows")
        counts[word] = total


def merge_counts_into(counts: Dict[bytes, int], reader: BinaryIO, chunk: int = CHUNK) -> None:
    """Sums ``word<TAB>count`` lines (the concatenation of ``counts.tsv`` files) into ``counts``.

    Works on bytes, as the Rust task: lines end at ``\\n`` only (a ``\\r`` is
    part of the count, which is then not a number); line numbers are 1-based
    and count empty lines; the last line may lack its ``\\n``.
    """
    carry = b""
    number = 0
    get = counts.get
    while True:
        data = reader.read(chunk)
        if not data:
            break
        lines = (carry + data if carry else data).split(b"\n")
        carry = lines.pop()
        for line in lines:
            number += 1
            # The common case inline: `word<TAB>digits`, a count of at most 19 digits.
            word, tab, digits = line.rpartition(b"\t")
            if word and digits.isdigit() and len(digits) < 20 and digits[0] != 48:  # 48: b"0"
                total = get(word, 0) + int(digits)
                if total <= _MAX_U64:
                    counts[word] = total
                    continue
            _merge_line(counts, line, number)
    if carry:
        _merge_line(counts, carry, number + 1)


def split_counts(counts: Dict[bytes, int], parts: int) -> Dict[int, Dict[bytes, int]]:
    """The counts of each partition that has words: ``{p: {word: count}}`` (see :func:`mayfly_sdk.partition`)."""
    split: Dict[int, Dict[bytes, int]] = {}
    for word, count in counts.items():
        p = partition(word, parts)
        table = split.get(p)
        if table is None:
            table = split[p] = {}
        table[word] = count
    return split


def write_counts(counts: Dict[bytes, int], out: BinaryIO) -> int:
    """Writes ``word<TAB>count`` lines, by count (highest first) then word bytes; returns how many."""
    entries = sorted(counts.items(), key=itemgetter(0))  # by word bytes: the words are distinct
    entries.sort(key=itemgetter(1), reverse=True)  # stable: equal counts stay by word
    step = 8192
    for i in range(0, len(entries), step):
        out.write(b"".join([b"%s\t%d\n" % kv for kv in entries[i : i + step]]))
    return len(entries)


@task
class WordCount(Task):
    """The task's state for one shard: the words of its items so far."""

    def start(self, shard: Shard, params: Params, outputs: Outputs) -> None:
        self.mode = params.mode
        self.counts: Counter = Counter()
        self.items = 0
        self.bytes = 0

    def item(self, input: Input, outputs: Outputs) -> None:
        name = input.name
        try:
            if self.mode is Mode.MAP:
                count_words_into(self.counts, input, input.offset_in_object)
            else:
                merge_counts_into(self.counts, input)
        except NotUtf8 as e:
            raise Fatal(f"{name}: input is not valid UTF-8 at byte offset {e.offset}") from None
        except BadLine as e:
            raise Fatal(f"{name}: line {e.line} is not a `word<TAB>count` line: {e.reason}") from None
        self.items += 1
        self.bytes += input.size

    def finish(self, outputs: Outputs) -> None:
        parts = partitions() if self.mode is Mode.MAP else 1
        if parts > 1:
            split = split_counts(self.counts, parts)
            with outputs.partitioned(OUTPUT) as partitioned:
                for p in sorted(split):
                    write_counts(split[p], partitioned.output(p))
            distinct = len(self.counts)
        else:
            with outputs.create(OUTPUT) as out:
                distinct = write_counts(self.counts, out)
        label = "Map" if self.mode is Mode.MAP else "Reduce"
        log.info(f"{label} done", distinct=distinct, items=self.items, bytes=self.bytes)


def lines_of(counts: Dict[bytes, int]) -> Iterable[Tuple[str, int]]:
    """(word, count) pairs in output order, words decoded (for tests)."""
    entries = sorted(counts.items(), key=itemgetter(0))
    entries.sort(key=itemgetter(1), reverse=True)
    return [(w.decode("utf-8", "surrogateescape"), n) for w, n in entries]
