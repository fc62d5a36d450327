"""csvsum-py: sums one column of CSV files, and merges the sums.

Map (``mode = "map"``, the default): each item is a CSV file whose first
record is a header; ``column`` (required) names the column to sum and
``delimiter`` (default ``,``) separates fields. Each shard writes one
``sums.tsv``::

    column<TAB>sum<TAB>rows
    price<TAB>1234.50<TAB>812

a header line, then one line per column: its name, the exact decimal sum of
its values, and how many data rows were summed. Reduce (``mode = "reduce"``)
reads ``sums.tsv`` files (concatenated) and writes their merge in the same
format, one line per column name, sorted by name (by UTF-8 bytes).

The sum is exact: values are decimal numbers (``12``, ``-3.5``, ``.5``,
``1e3``; spaces around them are ignored) added as :class:`decimal.Decimal`,
so the result does not depend on the order of the rows nor on how the job
was sharded (unlike binary floats). It is written in plain notation with as
many decimals as the most precise value (``1 + 2.50`` is ``3.50``; integers
stay integers); a sum that needs more than 1000 significant digits fails.

Errors (not retryable: the same data fails again) name the file and the
1-based line (the header is line 1; a record that spans lines is named by
its first line): a value that is not a number, a record with too few fields,
a header without the column (the message shows the header it saw). A file
that is empty (no header) adds nothing. An item that is a byte range of a
larger file fails: a range has no header (set ``split_text = false`` under
``[sharding]`` in the job file). Files are read as UTF-8 (a
leading byte-order mark is skipped).
"""

from __future__ import annotations

import csv
import decimal
import enum
import re
from dataclasses import dataclass
from typing import BinaryIO, Dict, List, Tuple

from mayfly_sdk import Fatal, Input, Outputs, Shard, Task, log, task

#: The name of the output file.
OUTPUT = "sums.tsv"
#: The first line of every ``sums.tsv``.
HEADER = "column\tsum\trows"
#: Sums are exact up to this many significant digits.
PRECISION = 1000

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_COUNT = re.compile(r"[0-9]+")
# Exact arithmetic: an addition that would have to round raises instead.
_EXACT = decimal.Context(prec=PRECISION, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.Inexact])
_ZERO = decimal.Decimal(0)


class Mode(enum.Enum):
    """What the task does with its input."""

    MAP = "map"  #: sum a column of CSV files
    REDUCE = "reduce"  #: merge sums.tsv files


@dataclass
class Params:
    """The task's parameters."""

    #: The header name of the column to sum (required in map mode).
    column: str = ""
    #: The field separator, one character.
    delimiter: str = ","
    mode: Mode = Mode.MAP


class Sums:
    """Per column: the exact sum and the number of rows."""

    def __init__(self) -> None:
        self.by_column: Dict[str, Tuple[decimal.Decimal, int]] = {}

    def add(self, column: str, total: decimal.Decimal, rows: int) -> None:
        """Adds ``total`` over ``rows`` rows to ``column`` (raises :class:`decimal.Inexact` past the precision)."""
        old, n = self.by_column.get(column, (_ZERO, 0))
        self.by_column[column] = (_EXACT.add(old, total), n + rows)

    def write(self, out: BinaryIO) -> None:
        """Writes ``sums.tsv``: the header, then one line per column, by name."""
        lines = [HEADER]
        for column in sorted(self.by_column, key=lambda c: c.encode("utf-8")):
            total, rows = self.by_column[column]
            lines.append(f"{column}\t{format_sum(total)}\t{rows}")
        out.write(("\n".join(lines) + "\n").encode("utf-8"))


def format_sum(total: decimal.Decimal) -> str:
    """Plain notation, no exponent; zero has no sign."""
    if total.is_zero():
        total = total.copy_abs()
    return format(total, "f")


def parse_number(text: str) -> decimal.Decimal:
    """The decimal value of ``text`` (spaces around it ignored); :class:`ValueError` if it is not a number."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise ValueError(text)
    return decimal.Decimal(text)


def sum_csv(text_lines, column: str, delimiter: str, name: str) -> Tuple[decimal.Decimal, int]:
    """The exact sum of ``column`` over the records of a CSV text, and how many records."""
    reader = csv.reader(text_lines, delimiter=delimiter, strict=True)
    line = 1
    try:
        header = next(reader, None)
        if header is None:
            return _ZERO, 0
        try:
            index = header.index(column)
        except ValueError:
            raise Fatal(f"{name}: the header has no column {column!r} (header: {header!r})") from None
        total = _ZERO
        rows = 0
        add = _EXACT.add
        while True:
            line = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                break
            if not record:  # a blank line
                continue
            if len(record) <= index:
                raise Fatal(
                    f"{name}: line {line} has {len(record)} field{'s' if len(record) != 1 else ''};"
                    f" column {column!r} is field {index + 1}"
                )
            value = record[index]
            try:
                total = add(total, parse_number(value))
            except ValueError:
                raise Fatal(f"{name}: line {line}: {column!r} is not a number: {value!r}") from None
            rows += 1
        return total, rows
    except csv.Error as e:
        raise Fatal(f"{name}: line {line}: not valid CSV: {e}") from None
    except UnicodeDecodeError as e:
        raise Fatal(f"{name}: the input is not valid UTF-8 ({e.reason})") from None
    except decimal.Inexact:
        raise Fatal(f"{name}: line {line}: the sum of {column!r} needs more than {PRECISION} digits") from None


def merge_sums(lines, sums: Sums, name: str) -> int:
    """Adds the lines of concatenated ``sums.tsv`` files to ``sums``; returns how many column lines."""
    merged = 0
    header = HEADER.encode()
    for number, raw in enumerate(lines, 1):
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if not line or line == header:
            continue

        def bad(reason: str, number: int = number) -> Fatal:
            return Fatal(f"{name}: line {number} is not a `column<TAB>sum<TAB>rows` line: {reason}")

        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("not UTF-8") from None
        parts = text.split("\t")
        if len(parts) != 3:
            raise bad(f"{len(parts)} fields, not 3")
        column, total, rows = parts
        if not column:
            raise bad("empty column name")
        try:
            value = parse_number(total)
        except ValueError:
            raise bad(f"the sum is not a number: {total!r}") from None
        if not _COUNT.fullmatch(rows):
            raise bad(f"the row count is not a whole number: {rows!r}")
        try:
            sums.add(column, value, int(rows))
        except decimal.Inexact:
            raise bad(f"the sum of {column!r} needs more than {PRECISION} digits") from None
        merged += 1
    return merged


@task
class CsvSum(Task):
    """One shard: the sums of its files so far."""

    def start(self, shard: Shard, params: Params, outputs: Outputs) -> None:
        if params.mode is Mode.MAP and not params.column:
            raise Fatal("invalid task parameters: `column` (the header name of the column to sum) is required")
        if any(c in params.column for c in "\t\r\n"):
            raise Fatal(f"invalid task parameters: column {params.column!r} contains a tab or a line break")
        if len(params.delimiter) != 1 or params.delimiter in "\r\n\"":
            raise Fatal(
                f"invalid task parameters: delimiter {params.delimiter!r} must be one character"
                " (not a quote or a line break)"
            )
        self.params = params
        self.sums = Sums()
        self.items = 0
        self.rows = 0

    def item(self, input: Input, outputs: Outputs) -> None:
        p = self.params
        if p.mode is Mode.MAP:
            if input.offset_in_object:
                raise Fatal(
                    f"{input.name}: this item is a byte range (at offset {input.offset_in_object});"
                    " csvsum needs whole files, with their header: set `split_text = false` under [sharding]"
                )
            total, rows = sum_csv(input.text(encoding="utf-8-sig", newline=""), p.column, p.delimiter, input.name)
            self.sums.add(p.column, total, rows)
            self.rows += rows
        else:
            self.rows += merge_sums(input, self.sums, input.name)
        self.items += 1

    def finish(self, outputs: Outputs) -> None:
        if self.params.mode is Mode.MAP and not self.sums.by_column:
            self.sums.add(self.params.column, _ZERO, 0)  # a shard with no rows still says so
        with outputs.create(OUTPUT) as out:
            self.sums.write(out)
        label = "Map" if self.params.mode is Mode.MAP else "Reduce"
        log.info(f"{label} done", columns=len(self.sums.by_column), items=self.items, rows=self.rows)


def rows_of(data: bytes) -> List[List[str]]:
    """The lines of a ``sums.tsv``, split (for tests)."""
    return [line.split("\t") for line in data.decode("utf-8").splitlines()]
