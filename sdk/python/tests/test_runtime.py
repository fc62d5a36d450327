"""The glue: task forms, failures, outputs, logs and print, through the fake host."""

from __future__ import annotations

import logging
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mayfly_sdk import (  # noqa: E402
    Fatal,
    HostIOError,
    Input,
    Output,
    Outputs,
    Retryable,
    Shard,
    StorageError,
    Task,
    log,
    progress,
    task,
)
from mayfly_sdk import _runtime  # noqa: E402
from mayfly_sdk._host import NoHostError  # noqa: E402
from mayfly_sdk.testing import Item, check_output_name, run  # noqa: E402


def fail_with(exc: BaseException):
    @task
    def f(input):
        raise exc

    return run(f, [Item("a.txt", b"x")]).failure


class TaskFormsTest(unittest.TestCase):
    def test_function_arguments_are_optional_from_the_end(self) -> None:
        calls = []

        @task
        def none():
            calls.append(())

        @task
        def one(input):
            calls.append((input.name,))

        @task
        def two(input, params):
            calls.append((input.name, params))

        @task
        def three(input, params, outputs):
            calls.append((input.name, params, type(outputs).__name__))

        for t in (none, one, two, three):
            run(t, [Item("a", b"")], params={"k": 1}).check()
        self.assertEqual(calls, [(), ("a",), ("a", {"k": 1}), ("a", {"k": 1}, "Outputs")])

    def test_too_many_arguments_fails_at_declaration(self) -> None:
        with self.assertRaises(TypeError):

            @task
            def f(input, params, outputs, extra):
                pass

        with self.assertRaises(TypeError):

            @task
            class NotATask:
                def item(self, input):
                    pass

        with self.assertRaises(TypeError):

            @task
            class NoItem(Task):
                pass

    def test_class_lifecycle(self) -> None:
        events = []

        @task
        class Combine(Task):
            def __init__(self) -> None:
                events.append("init")
                self.total = 0

            def start(self, shard: Shard, params, outputs: Outputs) -> None:
                events.append(("start", shard.items, params))
                self.out = outputs.create("log.txt")  # the shard's, kept across items

            def item(self, input: Input, outputs: Outputs) -> None:
                data = input.read()
                self.total += len(data)
                self.out.write(input.name.encode() + b"\n")
                events.append(("item", input.name))

            def finish(self, outputs: Outputs) -> None:
                events.append("finish")
                with outputs.create_text("total.txt") as out:
                    out.write(f"{self.total}\n")

        r = run(Combine, [Item("a", b"12"), Item("b", b"345")]).check()
        self.assertEqual(events, ["init", ("start", 2, {}), ("item", "a"), ("item", "b"), "finish"])
        self.assertEqual(r.shard_outputs, {"log.txt": b"a\nb\n", "total.txt": b"5\n"})
        self.assertEqual(r.item_outputs, {})

    def test_short_method_signatures(self) -> None:
        @task
        class Short(Task):
            def start(self, shard):
                self.n = 0

            def item(self, input):
                self.n += 1

            def finish(self):
                log.info("n", n=self.n)

        r = run(Short, [Item("a"), Item("b")], params={"ignored": True}).check()
        self.assertEqual(r.logs[0].fields, {"n": "2"})

    def test_item_isolation_gives_each_item_an_instance(self) -> None:
        @task
        class Count(Task):
            def start(self, shard, params, outputs):
                self.items = 0
                self.shard_items = shard.items

            def item(self, input, outputs):
                self.items += 1

            def finish(self, outputs):
                with outputs.create("n.txt") as o:
                    o.write(b"%d of %d" % (self.items, self.shard_items))

        r = run(Count, [Item("a"), Item("b")], isolation="item").check()
        self.assertEqual(r.shard_outputs, {})
        self.assertEqual(r.item_outputs, {"a": {"n.txt": b"1 of 1"}, "b": {"n.txt": b"1 of 1"}})

    def test_item_before_start(self) -> None:
        @task
        def f(input):
            pass

        session = _runtime.Session(_runtime.spec_of(f))
        failure = _runtime.call(session, "item", None)
        self.assertEqual(failure, _runtime.Failure("the task was given an item before its shard started", False))

    def test_no_host_outside_a_component(self) -> None:
        with self.assertRaises(NoHostError):
            log.info("x")

    def test_input_is_closed_after_the_item(self) -> None:
        kept = []

        @task
        class Keep(Task):
            def item(self, input):
                kept.append(input)

            def finish(self):
                kept[0].read()

        r = run(Keep, [Item("a", b"abc")])
        self.assertEqual(r.failure.call, "finish")
        self.assertIn("ValueError", r.failure.message)
        self.assertTrue(kept[0].closed)


class FailureTest(unittest.TestCase):
    def test_retryable_and_fatal_carry_their_message_only(self) -> None:
        f = fail_with(Retryable("try again"))
        self.assertEqual(
            (f.message, f.retryable, f.call, f.item, f.kind), ("try again", True, "item", "a.txt", "task_error")
        )
        f = fail_with(Fatal("bad data at line 3"))
        self.assertEqual((f.message, f.retryable), ("bad data at line 3", False))

    def test_storage_error_is_retryable(self) -> None:
        @task
        def f(input):
            input.read()

        r = run(f, [Item("a.txt", b"x" * 1000, fail_at=10)])
        self.assertTrue(r.failure.retryable)
        self.assertTrue(r.failure.message.startswith("host storage error: a.txt: injected"), r.failure.message)
        self.assertTrue(fail_with(StorageError("disk gone")).retryable)

    def test_other_exceptions_carry_their_traceback(self) -> None:
        def helper():
            return {}["missing"]

        @task
        def f(input):
            helper()

        f_ = run(f, [Item("a.txt")]).failure
        self.assertFalse(f_.retryable)
        lines = f_.message.splitlines()
        self.assertEqual(lines[0], "KeyError: 'missing'")
        self.assertEqual(lines[1], "Traceback (most recent call last):")
        self.assertIn("in f", f_.message)
        self.assertIn("in helper", f_.message)
        self.assertIn('return {}["missing"]', f_.message)  # source lines, on the host at least
        self.assertNotIn("mayfly_sdk", f_.message)  # the sdk's own frames are left out
        self.assertEqual(lines[-1], "KeyError: 'missing'")

    def test_host_errors_point_at_the_tasks_line(self) -> None:
        @task
        def f(input, params, outputs):
            outputs.create("../up")

        msg = run(f, [Item("a")]).failure.message
        lines = msg.splitlines()
        self.assertEqual(lines[0], 'mayfly_sdk.HostIOError: output name "../up" has an empty, `.` or `..` part')
        frames = [line.strip() for line in lines if line.strip().startswith("File ")]
        self.assertTrue(frames[-1].endswith(", in f"), frames)  # the last frame is the task's call
        self.assertIn('outputs.create("../up")', msg)
        self.assertNotIn("mayfly_sdk/", msg)

    def test_chained_exceptions_and_custom_types(self) -> None:
        class MyError(Exception):
            pass

        @task
        def f(input):
            try:
                int("x")
            except ValueError as e:
                raise MyError("wrapped") from e

        msg = run(f, [Item("a")]).failure.message
        self.assertTrue(msg.splitlines()[0].endswith("MyError: wrapped"), msg)
        self.assertIn("invalid literal for int()", msg)
        self.assertIn("direct cause", msg)

    def test_long_messages_keep_their_head_and_tail(self) -> None:
        f = fail_with(ValueError("x" * 20000 + "END"))
        self.assertLessEqual(len(f.message), _runtime.MAX_MESSAGE + 100)
        self.assertTrue(f.message.startswith("ValueError: xxx"))
        self.assertTrue(f.message.endswith("END"))
        self.assertIn("characters cut", f.message)

    def test_system_exit(self) -> None:
        self.assertEqual(fail_with(SystemExit(3)).message, "the task called sys.exit(3)")
        self.assertFalse(fail_with(SystemExit(0)).retryable)

        @task
        def f(input):
            sys.exit("bye")

        self.assertEqual(run(f, [Item("a")]).failure.message, "the task called sys.exit('bye')")

    def test_keyboard_interrupt_and_other_base_exceptions_are_caught(self) -> None:
        self.assertTrue(fail_with(KeyboardInterrupt()).message.startswith("KeyboardInterrupt"))

    def test_memory_error_traps_after_reporting(self) -> None:
        f = fail_with(MemoryError())
        self.assertEqual((f.kind, f.message), ("panic", "MemoryError (out of memory)"))

    def test_start_and_finish_failures(self) -> None:
        @task
        class S(Task):
            def start(self, shard, params, outputs):
                if params.get("fail") == "start":
                    raise Fatal("no start")

            def item(self, input, outputs):
                outputs.create("x")

            def finish(self, outputs):
                raise Retryable("no finish")

        r = run(S, [Item("a")], params={"fail": "start"})
        self.assertEqual((r.failure.call, r.failure.item, r.failure.message), ("start", None, "no start"))
        r = run(S, [Item("a")])
        self.assertEqual((r.failure.call, r.failure.retryable), ("finish", True))
        self.assertEqual((r.shard_outputs, r.item_outputs), ({}, {}))  # a failed attempt keeps nothing

    def test_failed_item_stops_the_run(self) -> None:
        seen = []

        @task
        def f(input, params, outputs):
            seen.append(input.name)
            with outputs.create("o") as o:
                o.write(b"x")
            if input.name == "b":
                raise Fatal("b is bad")

        r = run(f, [Item("a"), Item("b"), Item("c")])
        self.assertEqual(seen, ["a", "b"])
        self.assertEqual((r.failure.item, r.failure.message), ("b", "b is bad"))
        self.assertEqual(r.item_outputs, {})


class OutputsTest(unittest.TestCase):
    def test_binary_and_text_outputs(self) -> None:
        @task
        def f(input, params, outputs):
            out = outputs.create("bin/data.bin")
            self.assertIsInstance(out, Output)
            self.assertEqual(out.name, "bin/data.bin")
            out.write(b"\x00\xff")
            text = outputs.create_text("t.csv")
            text.write("é\n")
            print("printed", file=text)

        r = run(f, [Item("in")]).check()
        self.assertEqual(r.item_outputs, {"in": {"bin/data.bin": b"\x00\xff", "t.csv": "é\nprinted\n".encode()}})

    def test_outputs_are_closed_at_the_end_of_their_call(self) -> None:
        kept = []

        @task
        class K(Task):
            def start(self, shard, params, outputs):
                self.shard_out = outputs.create("shard.txt")

            def item(self, input, outputs):
                out = outputs.create("item.txt")
                out.write(b"data")  # left open, still buffered
                kept.append(out)
                self.shard_out.write(input.name.encode())

            def finish(self, outputs):
                self.assert_item_closed = kept[0].closed
                self.shard_open = not self.shard_out.closed
                outputs.create_text("f.txt").write("unflushed text")
                log.info("state", item_closed=self.assert_item_closed, shard_open=self.shard_open)

        r = run(K, [Item("a"), Item("b")]).check()
        self.assertEqual(r.logs[0].fields, {"item_closed": "True", "shard_open": "True"})
        self.assertEqual(r.item_outputs, {"a": {"item.txt": b"data"}, "b": {"item.txt": b"data"}})
        self.assertEqual(r.shard_outputs, {"shard.txt": b"ab", "f.txt": b"unflushed text"})
        self.assertTrue(kept[1].closed)

    def test_bad_names_and_twice(self) -> None:
        errors = []

        @task
        def f(input, params, outputs):
            for name in ("", "a//b", "../x", "_x", ".hidden", "sp ace", "é", "x" * 256, "ok.txt", "ok.txt"):
                try:
                    outputs.create(name)
                except HostIOError as e:
                    errors.append((name, e.errno, str(e)))

        run(f, [Item("a")]).check()
        names = ["", "a//b", "../x", "_x", ".hidden", "sp ace", "é", "x" * 256, "ok.txt"]
        self.assertEqual([n for n, _, _ in errors], names)
        self.assertTrue(all(code == 22 for _, code, _ in errors))
        self.assertEqual(errors[-1][2], 'output "ok.txt" is already open')
        self.assertIsNone(check_output_name("by-day/2024-01-01.csv"))

    def test_same_name_in_two_items_and_for_the_shard(self) -> None:
        @task
        class T(Task):
            def item(self, input, outputs):
                outputs.create("same").write(input.name.encode())

            def finish(self, outputs):
                outputs.create("same").write(b"shard")

        r = run(T, [Item("a"), Item("b")]).check()
        self.assertEqual(r.item_outputs, {"a": {"same": b"a"}, "b": {"same": b"b"}})
        self.assertEqual(r.shard_outputs, {"same": b"shard"})

    def test_write_after_close(self) -> None:
        @task
        def f(input, params, outputs):
            out = outputs.create("x")
            out.close()
            out.write(b"late")

        self.assertIn("ValueError", run(f, [Item("a")]).failure.message)

    def test_output_limit_is_a_trap(self) -> None:
        @task
        def f(input, params, outputs):
            with outputs.create("x") as o:
                o.write(b"y" * 1000)

        r = run(f, [Item("a")], output_limit=100)
        self.assertEqual((r.failure.kind, r.failure.message), ("output_limit", "output limit exceeded"))


class LogTest(unittest.TestCase):
    def test_levels_and_fields(self) -> None:
        @task
        def f(input):
            log.trace("t")
            log.debug("d", a=1)
            log.info("i", file=input.name, n=3, ok=True)
            log.warn("w")
            log.error("e", message="a field named message")
            log.log("info", "by name")

        r = run(f, [Item("x.txt")]).check()
        self.assertEqual(
            [(line.level, line.message, line.fields, line.source) for line in r.logs],
            [
                ("trace", "t", {}, "task"),
                ("debug", "d", {"a": "1"}, "task"),
                ("info", "i", {"file": "x.txt", "n": "3", "ok": "True"}, "task"),
                ("warn", "w", {}, "task"),
                ("error", "e", {"message": "a field named message"}, "task"),
                ("info", "by name", {}, "task"),
            ],
        )

    def test_print_becomes_log_lines(self) -> None:
        @task
        def f(input):
            print("hello", input.name)
            print("two\nlines")
            print("to stderr", file=sys.stderr)
            print("no newline", end="")

        r = run(f, [Item("a")]).check()
        self.assertEqual(
            [(line.level, line.message, line.source) for line in r.logs],
            [
                ("info", "hello a", "stdout"),
                ("info", "two", "stdout"),
                ("info", "lines", "stdout"),
                ("warn", "to stderr", "stderr"),
                ("info", "no newline", "stdout"),
            ],
        )

    def test_logging_handler(self) -> None:
        logger = logging.getLogger("mytask")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        handler = log.Handler()
        logger.addHandler(handler)
        try:

            @task
            def f(input):
                logger.debug("dbg")
                logger.info("rows %d", 5, extra={"file": input.name})
                logger.warning("careful")
                try:
                    1 / 0  # noqa: B018
                except ZeroDivisionError:
                    logger.exception("oops")

            r = run(f, [Item("a")]).check()
        finally:
            logger.removeHandler(handler)
        self.assertEqual([line.level for line in r.logs], ["debug", "info", "warn", "error"])
        self.assertEqual(r.logs[1].message, "rows 5")
        self.assertEqual(r.logs[1].fields, {"logger": "mytask", "file": "a"})
        self.assertIn("ZeroDivisionError", r.logs[3].message)

    def test_log_limit_is_a_trap(self) -> None:
        @task
        def f(input):
            for i in range(100):
                log.info("line %d" % i)

        r = run(f, [Item("a")], log_limit=50)
        self.assertEqual(r.failure.kind, "log_limit")

        @task
        def g(input):
            for i in range(100):
                print("line", i)

        self.assertEqual(run(g, [Item("a")], log_limit=50).failure.kind, "log_limit")

    def test_progress(self) -> None:
        @task
        def f(input):
            progress(1, 2)
            progress(-5, 2**70)

        self.assertEqual(run(f, [Item("a")]).check().progress, [(1, 2), (0, 2**64 - 1)])


class ImportsTest(unittest.TestCase):
    def test_imports_at_run_time_fail_as_in_a_component(self) -> None:
        @task
        def f(input):
            import this_module_does_not_exist_anywhere  # noqa: F401

        msg = run(f, [Item("a")]).failure.message
        self.assertIn("at the top of your module", msg)

        @task
        def g(input):
            import json  # already imported: fine  # noqa: F401

        run(g, [Item("a")]).check()


if __name__ == "__main__":
    unittest.main()
