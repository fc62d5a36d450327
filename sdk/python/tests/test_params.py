"""Parameters: dict or dataclass, strict, with the Rust sdk's error message."""

from __future__ import annotations

import enum
import os
import sys
import unittest
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Union

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mayfly_sdk import Fatal, Shard, Task, task  # noqa: E402
from mayfly_sdk._params import parse  # noqa: E402
from mayfly_sdk.testing import Item, run  # noqa: E402


class Mode(enum.Enum):
    MAP = "map"
    REDUCE = "reduce"


class Speed(enum.Enum):
    SLOW = "lo"
    FAST = 2


@dataclass
class WithSpeed:
    speed: Speed = Speed.SLOW


@dataclass
class Inner:
    depth: int = 1


@dataclass
class Params:
    column: str
    mode: Mode = Mode.MAP
    ratio: float = 1.0
    tags: List[str] = field(default_factory=list)
    limit: Optional[int] = None
    inner: Inner = field(default_factory=Inner)
    weights: Dict[str, float] = field(default_factory=dict)
    kind: Literal["a", "b"] = "a"
    either: Union[int, str] = 0


def fails(raw: str, kind=Params) -> str:
    """The message of the Fatal error parsing ``raw`` raises."""
    try:
        parse(raw, kind)
    except Fatal as e:
        return str(e)
    raise AssertionError(f"parameters {raw!r} were accepted")


class ParamsTest(unittest.TestCase):
    def test_dict(self) -> None:
        self.assertEqual(parse('{"a": 1, "b": [true]}', dict), {"a": 1, "b": [True]})
        self.assertEqual(parse("", dict), {})
        self.assertEqual(parse("  \n", dict), {})

    def test_dataclass(self) -> None:
        p = parse(
            '{"column": "price", "mode": "reduce", "ratio": 2, "tags": ["x"], "limit": 5,'
            ' "inner": {"depth": 3}, "weights": {"a": 0.5}, "kind": "b", "either": "s"}',
            Params,
        )
        self.assertEqual(p.column, "price")
        self.assertIs(p.mode, Mode.REDUCE)
        self.assertEqual(p.ratio, 2.0)
        self.assertIsInstance(p.ratio, float)
        self.assertEqual(p.tags, ["x"])
        self.assertEqual(p.limit, 5)
        self.assertEqual(p.inner, Inner(3))
        self.assertEqual(p.weights, {"a": 0.5})
        self.assertEqual((p.kind, p.either), ("b", "s"))
        d = parse('{"column": "c"}', Params)
        self.assertEqual((d.mode, d.ratio, d.tags, d.limit, d.inner), (Mode.MAP, 1.0, [], None, Inner(1)))
        self.assertIsNone(parse('{"column": "c", "limit": null}', Params).limit)

    def test_unknown_key(self) -> None:
        msg = fails('{"column": "c", "colum": 1}')
        self.assertTrue(msg.startswith("invalid task parameters: unknown field 'colum'"), msg)
        self.assertIn("'column'", msg)
        self.assertTrue(msg.endswith('(parameters: {"column": "c", "colum": 1})'), msg)
        self.assertIn("unknown field 'x' in 'inner'", fails('{"column": "c", "inner": {"x": 1}}'))

    def test_missing_field(self) -> None:
        self.assertEqual(fails("{}"), "invalid task parameters: missing field 'column' (parameters: {})")
        self.assertEqual(fails(""), "invalid task parameters: missing field 'column' (parameters: {})")

    def test_enum_by_value(self) -> None:
        msg = fails('{"column": "c", "mode": "MAP"}')
        self.assertIn("field 'mode': expected one of \"map\", \"reduce\", got string \"MAP\"", msg)
        self.assertIn("expected one of", fails('{"column": "c", "mode": 1}'))

    def test_enum_members_are_found_by_value_not_name(self) -> None:
        self.assertIs(parse('{"speed": "lo"}', WithSpeed).speed, Speed.SLOW)
        self.assertIs(parse('{"speed": 2}', WithSpeed).speed, Speed.FAST)
        for bad in ('"SLOW"', '"slow"', '"2"', "2.0", "true"):
            msg = fails(f'{{"speed": {bad}}}', WithSpeed)
            self.assertIn("field 'speed': expected one of \"lo\", 2, got", msg)

    def test_types_are_checked(self) -> None:
        self.assertIn("field 'column': expected a string, got number 3", fails('{"column": 3}'))
        self.assertIn("field 'limit': expected an integer, got boolean true", fails('{"column": "c", "limit": true}'))
        self.assertIn("field 'ratio': expected a number", fails('{"column": "c", "ratio": "1"}'))
        self.assertIn("field 'tags[1]': expected a string", fails('{"column": "c", "tags": ["a", 2]}'))
        self.assertIn("field 'inner.depth'", fails('{"column": "c", "inner": {"depth": 1.5}}'))
        self.assertIn("field 'kind'", fails('{"column": "c", "kind": "z"}'))

    def test_bad_json(self) -> None:
        msg = fails('{"column": ', dict)
        self.assertTrue(msg.startswith("invalid task parameters: Expecting value"), msg)
        self.assertTrue(msg.endswith('(parameters: {"column": )'), msg)
        self.assertIn("expected a JSON object, got an array", fails("[1]", dict))
        # A task that takes no parameters still wants valid JSON, as the Rust sdk.
        self.assertIsNone(parse("[1]", None))
        with self.assertRaises(Fatal):
            parse("{", None)

    def test_through_a_task(self) -> None:
        seen = []

        @task
        def f(input, params: Params, outputs):
            seen.append(params)

        run(f, [Item("a", b"")], params={"column": "x", "mode": "reduce"}).check()
        self.assertEqual(seen[0].mode, Mode.REDUCE)

        r = run(f, [Item("a", b"")], params={"colum": "x"})
        self.assertEqual(r.failure.call, "start")
        self.assertFalse(r.failure.retryable)
        self.assertEqual(
            r.failure.message,
            "invalid task parameters: unknown field 'colum' (expected: 'column', 'mode', 'ratio', 'tags', 'limit',"
            " 'inner', 'weights', 'kind', 'either') (parameters: {\"colum\": \"x\"})",
        )
        # Explicit form, and plain dict params by default.
        got = []

        @task(params=Inner)
        def g(input, params):
            got.append(params)

        @task
        def h(input, params):
            got.append(params)

        run(g, [Item("a")], params='{"depth": 7}').check()
        run(h, [Item("a")], params={"any": ["thing"]}).check()
        self.assertEqual(got, [Inner(7), {"any": ["thing"]}])

    def test_class_params(self) -> None:
        got = []

        @task
        class C(Task):
            Params = Inner

            def start(self, shard: Shard, params: Inner, outputs) -> None:
                got.append((shard, params))

            def item(self, input):
                pass

        run(C, [Item("a")], params={"depth": 2}, shard=Shard("job-1", 4, 2, 1)).check()
        self.assertEqual(got, [(Shard("job-1", 4, 2, 1), Inner(2))])
        self.assertIn("unknown field", run(C, [Item("a")], params={"x": 1}).failure.message)

    def test_unsupported_params_type_fails_at_declaration(self) -> None:
        class NotAData:
            pass

        with self.assertRaises(TypeError):

            @task(params=NotAData)
            def f(input, params):
                pass

        @dataclass
        class Bad:
            when: complex = 0j

        with self.assertRaises(TypeError):

            @task(params=Bad)
            def g(input, params):
                pass


if __name__ == "__main__":
    unittest.main()
