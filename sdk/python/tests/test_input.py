"""Input is a real binary file object over the host's read_at."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mayfly_sdk import HostIOError, Input, StorageError  # noqa: E402
from mayfly_sdk._io import CHUNK  # noqa: E402
from mayfly_sdk.testing import FakeInput  # noqa: E402


def make(data: bytes, name: str = "in.txt", offset: int = 0, fail_at=None) -> Input:
    return Input(FakeInput(name, data, offset, fail_at))


class InputTest(unittest.TestCase):
    def test_metadata(self) -> None:
        inp = make(b"hello", name="dir/a.txt", offset=42)
        self.assertEqual(inp.name, "dir/a.txt")
        self.assertEqual(inp.size, 5)
        self.assertEqual(inp.offset_in_object, 42)
        self.assertIsInstance(inp, io.BufferedReader)
        self.assertTrue(inp.readable() and inp.seekable())
        self.assertFalse(inp.writable())
        self.assertIn("dir/a.txt", repr(inp))

    def test_read_sizes(self) -> None:
        data = bytes(range(256)) * 5000  # 1.28 MB: several chunks
        inp = make(data)
        self.assertEqual(inp.read(0), b"")
        self.assertEqual(inp.read(3), data[:3])
        self.assertEqual(inp.read(CHUNK + 10), data[3 : CHUNK + 13])
        self.assertEqual(inp.read(), data[CHUNK + 13 :])
        self.assertEqual(inp.read(), b"")
        self.assertEqual(inp.read(10), b"")
        self.assertEqual(make(data).read(), data)
        self.assertEqual(make(data).read(-1), data)
        self.assertEqual(make(b"").read(), b"")

    def test_readinto(self) -> None:
        inp = make(b"abcdefgh")
        buf = bytearray(5)
        self.assertEqual(inp.readinto(buf), 5)
        self.assertEqual(buf, b"abcde")
        self.assertEqual(inp.readinto(buf), 3)
        self.assertEqual(buf[:3], b"fgh")
        self.assertEqual(inp.readinto(buf), 0)
        view = memoryview(bytearray(4))
        self.assertEqual(make(b"xyz").readinto(view), 3)
        self.assertEqual(bytes(view[:3]), b"xyz")

    def test_readline_and_iteration(self) -> None:
        data = b"one\ntwo\r\n\nlast without newline"
        self.assertEqual(list(make(data)), [b"one\n", b"two\r\n", b"\n", b"last without newline"])
        inp = make(data)
        self.assertEqual(inp.readline(), b"one\n")
        self.assertEqual(inp.readline(2), b"tw")
        self.assertEqual(inp.readlines(), [b"o\r\n", b"\n", b"last without newline"])
        # Lines longer than a chunk, and many lines across chunk ends.
        long = b"x" * (CHUNK * 2 + 7)
        self.assertEqual(list(make(long + b"\ny\n")), [long + b"\n", b"y\n"])
        many = b"".join(b"line %d\n" % i for i in range(100_000))
        self.assertEqual(sum(1 for _ in make(many)), 100_000)

    def test_seek_and_tell(self) -> None:
        data = bytes(range(200)) * 3000
        inp = make(data)
        self.assertEqual(inp.tell(), 0)
        inp.read(10)
        self.assertEqual(inp.tell(), 10)
        self.assertEqual(inp.seek(5), 5)
        self.assertEqual(inp.read(3), data[5:8])
        self.assertEqual(inp.seek(-2, io.SEEK_CUR), 6)
        self.assertEqual(inp.read(2), data[6:8])
        self.assertEqual(inp.seek(-4, io.SEEK_END), len(data) - 4)
        self.assertEqual(inp.read(), data[-4:])
        self.assertEqual(inp.seek(CHUNK * 2 + 1), CHUNK * 2 + 1)
        self.assertEqual(inp.read(5), data[CHUNK * 2 + 1 : CHUNK * 2 + 6])
        self.assertEqual(inp.seek(len(data) + 100), len(data) + 100)
        self.assertEqual(inp.read(), b"")
        with self.assertRaises(OSError) as cm:
            inp.seek(-1)
        self.assertEqual(cm.exception.errno, errno.EINVAL)

    def test_text_and_csv(self) -> None:
        data = 'name,note\r\nÉva,"a, b"\r\nbo,"two\r\nlines"\r\n'.encode()
        rows = list(csv.reader(make(data).text(newline="")))
        self.assertEqual(rows, [["name", "note"], ["Éva", "a, b"], ["bo", "two\r\nlines"]])
        rows = list(csv.DictReader(io.TextIOWrapper(make(data), encoding="utf-8", newline="")))
        self.assertEqual(rows[1], {"name": "bo", "note": "two\r\nlines"})
        self.assertEqual(make(b"a\r\nb\rc\n").text().read(), "a\nb\nc\n")
        self.assertEqual(make("é€".encode("utf-16")).text("utf-16").read(), "é€")
        with self.assertRaises(UnicodeDecodeError):
            make(b"ok \xff").text().read()
        self.assertEqual(make(b"ok \xff").text(errors="replace").read(), "ok \ufffd")

    def test_json_load(self) -> None:
        self.assertEqual(json.load(make(b'{"a": [1, 2]}')), {"a": [1, 2]})

    def test_large_reads_use_few_host_calls(self) -> None:
        fake = FakeInput("big", b"z" * (10 << 20))
        inp = Input(fake)
        self.assertEqual(len(inp.read()), 10 << 20)
        self.assertLessEqual(fake.reads, 4)  # the host gives at most 4 MiB per call

    def test_closed_input_says_so(self) -> None:
        inp = make(b"abc")
        inp.close()
        with self.assertRaises(ValueError):
            inp.read()
        inp2 = make(b"abc")
        inp2.raw.close()
        with self.assertRaisesRegex(ValueError, "lives only during"):
            inp2.raw.readinto(bytearray(2))

    def test_host_errors_become_oserrors(self) -> None:
        inp = make(b"a" * 100, fail_at=50)
        with self.assertRaises(StorageError) as cm:
            inp.read()
        self.assertIsInstance(cm.exception, OSError)
        self.assertIsInstance(cm.exception, HostIOError)
        self.assertTrue(str(cm.exception).startswith("host storage error: "), str(cm.exception))
        # Through a text wrapper too.
        with self.assertRaises(StorageError):
            make(b"a\n" * 100, fail_at=10).text().read()


if __name__ == "__main__":
    unittest.main()
