"""Tests of csvsum-py, without wasm (mayfly_sdk.testing).

Run: cd tasks/csvsum-py && PYTHONPATH=../../sdk/python python3 -m unittest
"""

from __future__ import annotations

import unittest

import app
from mayfly_sdk.testing import Item, run


def csvsum(items, **params):
    params.setdefault("column", "price")
    return run(app.CsvSum, items, params=params)


class MapTest(unittest.TestCase):
    def test_sums_a_column_over_the_files_of_a_shard(self) -> None:
        items = [
            Item("a.csv", 'name,price\na,1.5\nb,2\n\n"c, quoted\nover two lines",3.25\n'),
            Item("b.csv", "price,name\r\n4,x\r\n-0.75,y\r\n"),
        ]
        r = csvsum(items).check()
        self.assertEqual(r.shard_outputs, {"sums.tsv": b"column\tsum\trows\nprice\t10.00\t5\n"})
        self.assertEqual(
            [(line.message, line.fields) for line in r.logs],
            [("Map done", {"columns": "1", "items": "2", "rows": "5"})],
        )

    def test_integers_stay_integers_and_decimals_are_exact(self) -> None:
        def total(values: str) -> str:
            data = "price\n" + "\n".join(values.split()) + "\n"
            out = csvsum([Item("x.csv", data)]).check().shard_outputs["sums.tsv"]
            return app.rows_of(out)[1][1]

        self.assertEqual(total("1 2 3"), "6")
        self.assertEqual(total("0.1 0.2"), "0.3")  # a float sum would be 0.30000000000000004
        self.assertEqual(total("1 2.50"), "3.50")
        self.assertEqual(total("1e3 +2 .5"), "1002.5")
        self.assertEqual(total("-1 1"), "0")
        self.assertEqual(total("-0"), "0")
        self.assertEqual(total("123456789012345678901234567890 1"), "123456789012345678901234567891")
        self.assertEqual(total("1e-7"), "0.0000001")

    def test_the_sum_does_not_depend_on_sharding(self) -> None:
        values = [f"{i * 0.37:.2f}" for i in range(1, 200)]
        one = csvsum([Item("all.csv", "price\n" + "\n".join(values) + "\n")]).check()
        whole = app.rows_of(one.shard_outputs["sums.tsv"])[1]
        shards = []
        for part in (values[:50], values[50:120], values[120:]):
            r = csvsum([Item("p.csv", "price\n" + "\n".join(part) + "\n")]).check()
            shards.append(r.shard_outputs["sums.tsv"])
        merged = run(app.CsvSum, [Item("m", b"".join(shards))], params={"mode": "reduce"}).check()
        self.assertEqual(app.rows_of(merged.shard_outputs["sums.tsv"])[1], whole)

    def test_delimiter_spaces_and_a_byte_order_mark(self) -> None:
        r = csvsum([Item("s.csv", "\ufeffname;price\nx; 1,5 \ny;2\n".replace("1,5", "1.5"))], delimiter=";").check()
        self.assertEqual(app.rows_of(r.shard_outputs["sums.tsv"]), [["column", "sum", "rows"], ["price", "3.5", "2"]])
        r = csvsum([Item("t.tsv", "price\tname\n7\tx\n")], delimiter="\t").check()
        self.assertEqual(app.rows_of(r.shard_outputs["sums.tsv"])[1], ["price", "7", "1"])

    def test_empty_files_and_shards(self) -> None:
        r = csvsum([Item("empty.csv", ""), Item("header-only.csv", "price\n")]).check()
        self.assertEqual(r.shard_outputs["sums.tsv"], b"column\tsum\trows\nprice\t0\t0\n")


class MapErrorTest(unittest.TestCase):
    def failure(self, data: str, name: str = "f.csv", **params):
        r = csvsum([Item("ok.csv", "price\n1\n"), Item(name, data)], **params)
        self.assertIsNotNone(r.failure, "the run did not fail")
        self.assertEqual((r.failure.call, r.failure.item, r.failure.retryable), ("item", name, False))
        self.assertEqual((r.shard_outputs, r.item_outputs), ({}, {}))
        return r.failure.message

    def test_a_value_that_is_not_a_number_names_file_and_line(self) -> None:
        self.assertEqual(self.failure("name,price\na,1\nb,12x\n"), "f.csv: line 3: 'price' is not a number: '12x'")
        self.assertEqual(self.failure("name,price\na,\n"), "f.csv: line 2: 'price' is not a number: ''")
        for bad in ("NaN", "inf", "1,000", "0x10", "1_000", "١"):
            self.assertIn("is not a number", self.failure(f'price\n"{bad}"\n'))

    def test_line_numbers_count_physical_lines(self) -> None:
        data = 'name,price\n"two\nlines",1\n\n"x",oops\n'
        self.assertEqual(self.failure(data), "f.csv: line 5: 'price' is not a number: 'oops'")
        data = 'name,price\r\n"a\r\nb",1\r\nc,bad\r\n'
        self.assertEqual(self.failure(data), "f.csv: line 4: 'price' is not a number: 'bad'")

    def test_a_missing_column_names_the_header_seen(self) -> None:
        self.assertEqual(
            self.failure("name;price\nx;1\n"), "f.csv: the header has no column 'price' (header: ['name;price'])"
        )
        self.assertEqual(
            self.failure("Name,Price\nx,1\n"), "f.csv: the header has no column 'price' (header: ['Name', 'Price'])"
        )

    def test_short_records_and_bad_csv(self) -> None:
        self.assertEqual(self.failure("name,price\nonly-one\n"), "f.csv: line 2 has 1 field; column 'price' is field 2")
        self.assertTrue(self.failure('price\n"unterminated\n').startswith("f.csv: line 2: not valid CSV"))
        self.assertTrue(self.failure('price\n"a"b\n').startswith("f.csv: line 2: not valid CSV"))

    def test_not_utf8(self) -> None:
        r = csvsum([Item("latin1.csv", "price,name\n1,é\n".encode("latin-1"))])
        self.assertEqual(r.failure.message, "latin1.csv: the input is not valid UTF-8 (invalid continuation byte)")

    def test_a_byte_range_is_refused(self) -> None:
        r = csvsum([Item("big.csv", "1\n2\n", offset_in_object=4096)])
        self.assertIn("is a byte range", r.failure.message)
        self.assertIn("split_text = false", r.failure.message)

    def test_parameters(self) -> None:
        r = run(app.CsvSum, [Item("a.csv", "price\n1\n")], params={})
        self.assertEqual(r.failure.call, "start")
        self.assertIn("`column`", r.failure.message)
        r = csvsum([Item("a.csv", "price\n1\n")], delimiter=";;")
        self.assertIn("delimiter ';;' must be one character", r.failure.message)
        r = csvsum([Item("a.csv", "price\n1\n")], column="a\tb")
        self.assertIn("contains a tab", r.failure.message)
        r = csvsum([Item("a.csv", "price\n1\n")], colum="price")
        self.assertTrue(r.failure.message.startswith("invalid task parameters: unknown field 'colum'"))


class ReduceTest(unittest.TestCase):
    def reduce(self, *tables: bytes):
        return run(app.CsvSum, [Item(f"m{i}/sums.tsv", t) for i, t in enumerate(tables)], params={"mode": "reduce"})

    def test_merges_columns_sorted_by_name(self) -> None:
        r = self.reduce(
            b"column\tsum\trows\nprice\t10.50\t3\n",
            b"column\tsum\trows\nqty\t7\t2\nprice\t-0.5\t1\n",
            b"column\tsum\trows\n\xc3\xa9t\xc3\xa9\t1\t1\nZ\t2\t1",  # no final newline
        ).check()
        self.assertEqual(
            r.shard_outputs["sums.tsv"].decode(),
            "column\tsum\trows\nZ\t2\t1\nprice\t10.00\t4\nqty\t7\t2\nété\t1\t1\n",
        )
        self.assertEqual(r.logs[0].message, "Reduce done")
        self.assertEqual(r.logs[0].fields, {"columns": "4", "items": "3", "rows": "5"})

    def test_bad_lines(self) -> None:
        def message(table: bytes) -> str:
            r = self.reduce(b"column\tsum\trows\nprice\t1\t1\n", table)
            self.assertFalse(r.failure.retryable)
            return r.failure.message

        self.assertEqual(
            message(b"column\tsum\trows\nprice\t1\n"),
            "m1/sums.tsv: line 2 is not a `column<TAB>sum<TAB>rows` line: 2 fields, not 3",
        )
        self.assertIn("line 3 is not a", message(b"column\tsum\trows\n\nprice\tx\t1\n"))
        self.assertIn("the sum is not a number: 'x'", message(b"price\tx\t1\n"))
        self.assertIn("the row count is not a whole number: '-1'", message(b"price\t1\t-1\n"))
        self.assertIn("empty column name", message(b"\t1\t1\n"))
        self.assertIn("not UTF-8", message(b"\xff\t1\t1\n"))


if __name__ == "__main__":
    unittest.main()
