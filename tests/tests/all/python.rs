//! Python tasks (sdk/python, built with componentize-py): the sandbox holds for
//! them as for Rust tasks, `wordcount-py` gives the Rust wordcount's bytes,
//! `mayfly build` names the file and the cause of a task that cannot build,
//! and `mayfly init --lang python` makes a task whose tests and job pass at once.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::host::{BytesInput, Failure, Limits, LogSource, Outcome};
use mayfly_model::units::{ByteSize, HumanDuration};
use mayfly_tests::cluster::{TestJob, cluster, text};
use mayfly_tests::{mayfly_bin, root, run, run_bytes, sample_text, scratch};

use crate::sandbox::{misbehave_in, small_limits};

const GUEST: &str = "tests/guests/misbehave-py";
const WORDCOUNT: &str = "tasks/wordcount";
const WORDCOUNT_PY: &str = "tasks/wordcount-py";
const CSVSUM_PY: &str = "tasks/csvsum-py";

fn misbehave(mode: &str, limits: Limits, name: &str) -> (Outcome, std::path::PathBuf) {
    misbehave_in(GUEST, mode, limits, name)
}

fn output(outcome: &Outcome, name: &str) -> Vec<u8> {
    let found = outcome.outputs.iter().find(|o| o.name == name);
    let found = found.unwrap_or_else(|| panic!("no output {name}: {:?} {:?}", outcome.result, outcome.outputs));
    std::fs::read(&found.path).unwrap()
}

#[test]
fn a_python_endless_loop_times_out() {
    let (outcome, staging) = misbehave("loop", small_limits(), "py-loop");
    assert_eq!(outcome.result, Err(Failure::Timeout { limit: HumanDuration(Duration::from_secs(2)) }));
    assert!(!staging.exists());
}

#[test]
fn python_allocating_without_end_is_out_of_memory() {
    let (outcome, staging) = misbehave("alloc", small_limits(), "py-alloc");
    assert_eq!(outcome.result, Err(Failure::OutOfMemory { limit: ByteSize(64 << 20) }), "{:?}", outcome.logs);
    assert!(outcome.peak_memory <= 64 << 20, "peak {}", outcome.peak_memory);
    assert!(!staging.exists());
}

#[test]
fn python_output_and_logs_are_bounded_by_name() {
    let (outcome, staging) = misbehave("output", small_limits(), "py-output");
    assert_eq!(outcome.result, Err(Failure::OutputLimit { limit: ByteSize(1 << 20) }));
    assert!(outcome.outputs.is_empty() && !staging.exists());
    let (outcome, _) = misbehave("log", small_limits(), "py-log");
    assert_eq!(outcome.result, Err(Failure::LogLimit { limit: ByteSize(64 << 10) }));
    let (outcome, _) = misbehave("stdout", small_limits(), "py-stdout");
    assert_eq!(outcome.result, Err(Failure::LogLimit { limit: ByteSize(64 << 10) }));
    assert!(!outcome.logs.is_empty() && outcome.logs.iter().all(|l| l.source == LogSource::Stdout));
}

#[test]
fn a_python_exception_is_the_items_failure_with_its_traceback() {
    let (outcome, _) = misbehave("raise", small_limits(), "py-raise");
    match &outcome.result {
        Err(Failure::TaskError { message, retryable: false }) => {
            assert!(message.contains("ValueError: boom while reading in.txt: b'some input\\n'"), "{message}");
            assert!(message.contains("Traceback") && message.contains("app.py"), "{message}");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    let (outcome, _) = misbehave("retryable", small_limits(), "py-retryable");
    assert_eq!(outcome.result, Err(Failure::TaskError { message: "try me again later".into(), retryable: true }));
}

#[test]
fn a_python_exception_in_start_fails_the_shard_with_its_traceback() {
    let (outcome, _) = misbehave("raise-in-start", small_limits(), "py-start");
    match &outcome.result {
        Err(Failure::TaskError { message, .. }) => {
            assert!(message.contains("RuntimeError: cannot start: the lookup table is missing"), "{message}");
            assert!(message.contains("Traceback") && message.contains("in start"), "{message}");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
}

#[test]
fn print_and_log_become_log_lines() {
    let (outcome, _) = misbehave("print", small_limits(), "py-print");
    assert_eq!(outcome.result, Ok(()), "{:?}", outcome.logs);
    let said =
        |source: LogSource, message: &str| outcome.logs.iter().any(|l| l.source == source && l.message == message);
    assert!(said(LogSource::Stdout, "hello from print"), "{:?}", outcome.logs);
    assert!(said(LogSource::Stderr, "to stderr"), "{:?}", outcome.logs);
    let warn = outcome.logs.iter().find(|l| l.message == "a warning").expect("the log.warn line");
    let fields: Vec<(&str, &str)> = warn.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(fields, [("item", "in.txt"), ("size", "11")]);
}

#[test]
fn python_files_environment_sockets_and_processes_are_denied() {
    let dir = scratch("py-escape");
    let secret = dir.join("secret.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let params = serde_json::json!({ "mode": "escape", "port": port, "path": secret }).to_string();
    let outcome = run(GUEST, Arc::new(BytesInput::new("in.txt", &b""[..])), &params, small_limits(), &dir.join("s"));
    assert_eq!(outcome.result, Ok(()), "{:?}", outcome.logs);
    let report = String::from_utf8(output(&outcome, "report.tsv")).unwrap();
    for what in ["file", "passwd", "dir", "cwd", "env", "home", "tcp", "subprocess", "create"] {
        let line = report.lines().find(|l| l.starts_with(&format!("{what}\t")));
        let line = line.unwrap_or_else(|| panic!("the report misses {what}:\n{report}"));
        assert!(line.contains("\tdenied"), "{what} was not denied: {line}");
    }
    assert!(listener.accept().is_err(), "the guest reached the listening socket");
    assert!(!Path::new("/tmp/mayfly-escape-py").exists());
}

/// Inputs that tell word rules apart: Unicode white space (U+0085, U+00A0,
/// U+2000..U+200A, U+3000), characters Python's `str.split` splits on but
/// that are not White_Space (U+001C..U+001F), and ones neither splits on
/// (U+200B, U+FEFF); words cut by a 1 MiB read; generated multilingual text.
fn word_inputs() -> Vec<(String, Vec<u8>)> {
    let tricky = "a\u{1c}b c\u{1d}d\u{1e}e\u{1f}f x\u{200b}y \u{feff}z g\u{85}h i\u{a0}j k\u{2000}l\u{200a}m\
                  \u{3000}n\u{2028}o\u{2029}p\u{202f}q\u{205f}r\u{1680}s\u{180e}t\r\nend \t\u{b}\u{c}tab\n";
    let mut long = "word ".repeat((1 << 20) / 5 - 1);
    long.push_str("été straße 東京 ");
    long.push_str(&"naïve ".repeat(1000));
    vec![
        ("tricky.txt".into(), tricky.repeat(3).into_bytes()),
        ("sample-1.txt".into(), sample_text(1, 200_000).into_bytes()),
        ("sample-2.txt".into(), sample_text(2, 50_000).into_bytes()),
        ("cut.txt".into(), long.into_bytes()),
        ("empty.txt".into(), Vec::new()),
    ]
}

#[test]
fn wordcount_py_counts_and_merges_byte_for_byte_as_the_rust_wordcount() {
    let dir = scratch("py-words");
    let mut maps = Vec::new();
    for (i, (name, data)) in word_inputs().iter().enumerate() {
        let rust = run_bytes(WORDCOUNT, name, data, r#"{"mode":"map"}"#, &dir.join(format!("r{i}")));
        let py = run_bytes(WORDCOUNT_PY, name, data, r#"{"mode":"map"}"#, &dir.join(format!("p{i}")));
        assert_eq!(rust.result, Ok(()), "{name}");
        assert_eq!(py.result, Ok(()), "{name}: {:?}", py.logs);
        let (r, p) = (output(&rust, "counts.tsv"), output(&py, "counts.tsv"));
        assert!(r == p, "{name}: the counts differ:\nrust:\n{}\npython:\n{}", lossy(&r), lossy(&p));
        maps.extend(r);
    }
    // The reduce over the concatenated maps, and its errors.
    let rust = run_bytes(WORDCOUNT, "maps", &maps, r#"{"mode":"reduce"}"#, &dir.join("rr"));
    let py = run_bytes(WORDCOUNT_PY, "maps", &maps, r#"{"mode":"reduce"}"#, &dir.join("pr"));
    assert_eq!((&rust.result, &py.result), (&Ok(()), &Ok(())), "{:?}", py.logs);
    assert!(output(&rust, "counts.tsv") == output(&py, "counts.tsv"), "the merged counts differ");

    for (mode, name, data) in [
        ("map", "bad.txt", &b"fine words \xff\xfe and more"[..]),
        ("reduce", "bad.tsv", &b"a\t1\nno tab here\n"[..]),
        ("reduce", "neg.tsv", &b"a\t1\nb\t-2\n"[..]),
        ("reduce", "empty-word.tsv", &b"\t3\n"[..]),
    ] {
        let params = format!(r#"{{"mode":"{mode}"}}"#);
        let rust = run_bytes(WORDCOUNT, name, data, &params, &dir.join("re"));
        let py = run_bytes(WORDCOUNT_PY, name, data, &params, &dir.join("pe"));
        assert!(matches!(&rust.result, Err(Failure::TaskError { retryable: false, .. })), "{:?}", rust.result);
        assert_eq!(rust.result, py.result, "{mode} {name}");
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(2000)]).into_owned()
}

/// A job's final `counts.tsv` (map on 2 workers, reduce with `keys`) with `task`.
fn wordcount_job(id: &str, task: &str, files: &[(String, Vec<u8>)], keys: &str) -> (Vec<u8>, TestJob) {
    let job = TestJob::new(id, files);
    let wasm = mayfly_tests::component(task);
    job.write_job(
        task,
        "{ mode = \"map\" }",
        &format!("[reduce]\npath = {:?}\nparams = {{ mode = \"reduce\" }}\n{keys}\n\n{}", wasm, cluster(2, "")),
    );
    let out = job.run();
    assert!(out.status.success(), "{}", text(&out));
    (std::fs::read(job.out().join("reduce/counts.tsv")).unwrap(), job)
}

#[test]
fn a_wordcount_py_job_gives_the_rust_jobs_bytes_on_the_demo_data() {
    let data = scratch("py-demo-data");
    mayfly_ops::demo::write_dataset(&data, 7, 12, 40_000, 3_000).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.extend(word_inputs());
    files.sort();
    let (rust, _) = wordcount_job("py-demo-rust", WORDCOUNT, &files, "");
    let (py, _) = wordcount_job("py-demo-py", WORDCOUNT_PY, &files, "");
    assert!(!rust.is_empty());
    assert!(rust == py, "the Python job's counts differ from the Rust job's");
    // Partitioned: the same bytes, and the Python sdk puts each word where the
    // Rust sdk's `partition` says (one hash in both languages).
    let (parts, job) = wordcount_job("py-demo-py-3", WORDCOUNT_PY, &files, "partitions = 3\norder = \"2nr,1\"");
    assert!(parts == rust, "the Python job's partitioned counts differ from the Rust job's");
    let tables = job.map_outputs();
    assert!(tables.iter().any(|t| t.contains("/part-00002/")), "{tables:?}");
    for table in tables {
        let p: u32 = table.split("/part-").nth(1).and_then(|rest| rest.get(..5)).unwrap().parse().unwrap();
        for line in std::fs::read_to_string(job.out().join("map").join(&table)).unwrap().lines() {
            let word = line.rsplit_once('\t').unwrap().0;
            assert_eq!(mayfly_sdk::partition(word.as_bytes(), 3), p, "{word:?} in {table}");
        }
    }
}

#[test]
fn a_bad_csv_row_is_that_items_failure_and_the_job_goes_on_without_it() {
    let files = vec![
        ("a.csv".to_owned(), b"name,amount\n\"Smith, J\",10\nLee,5\n".to_vec()),
        ("b.csv".to_owned(), b"amount,name\n7,x\n".to_vec()),
        ("c.csv".to_owned(), b"name,amount\nok,1\nbad,twelve\n".to_vec()),
    ];
    let job = TestJob::new("py-csv", &files);
    let wasm = mayfly_tests::component(CSVSUM_PY);
    job.write_job(
        CSVSUM_PY,
        "{ column = \"amount\" }",
        &format!(
            "[reduce]\npath = {:?}\nparams = {{ column = \"amount\", mode = \"reduce\" }}\n\n{}\n[limits]\nmax_failed_items = 1\n",
            wasm,
            cluster(2, "")
        ),
    );
    let out = job.run();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("1 item quarantined"), "{all}");
    assert!(all.contains("c.csv") && all.contains("line 3"), "the failure names the file and line: {all}");
    let sums = String::from_utf8(std::fs::read(job.out().join("reduce/sums.tsv")).unwrap()).unwrap();
    assert!(sums.contains("amount\t22\t3"), "{sums}");
}

/// `mayfly build` of a Python task directory holding `app` as app.py: its
/// output and whether it succeeded.
fn build(name: &str, app: &str, args: &[&str]) -> (bool, String) {
    let dir = scratch(name);
    std::fs::write(dir.join("app.py"), app).unwrap();
    let out = Command::new(mayfly_bin())
        .arg("build")
        .arg(&dir)
        .args(args)
        .env("MAYFLY_COMPONENTIZE_PY", mayfly_tests::componentize_py())
        .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

#[test]
fn a_python_task_that_cannot_build_is_named_with_its_file_and_cause() {
    let (ok, said) = build("py-syntax", "from mayfly_sdk import task\n\n@task\ndef f(input):\n    return (\n", &[]);
    assert!(!ok && said.contains("app.py:5") && said.contains("SyntaxError"), "{said}");
    let (ok, said) = build("py-no-sdk", "def f(input):\n    pass\n", &[]);
    assert!(!ok && said.contains("does not build: RuntimeError: app.py declares no task"), "{said}");
    let (ok, said) =
        build("py-native", "import numpy\nfrom mayfly_sdk import task\n@task\ndef f(input):\n    pass\n", &[]);
    assert!(!ok && said.contains("app.py:1") && said.contains("No module named 'numpy'"), "{said}");
    assert!(said.contains("[project] dependencies") && said.contains("native code"), "{said}");
    // pip is in the host Python's site-packages, which componentize-py would
    // otherwise add: a package the task did not declare is never bundled.
    let (ok, said) =
        build("py-host-package", "import pip\nfrom mayfly_sdk import task\n@task\ndef f(input):\n    pass\n", &[]);
    assert!(!ok && said.contains("app.py:1") && said.contains("No module named 'pip'"), "{said}");
    let (ok, said) = build("py-ok", "from mayfly_sdk import task\n@task\ndef f(input):\n    pass\n", &[]);
    assert!(ok, "{said}");
    assert!(said.lines().next().is_some_and(|l| l.ends_with("py-ok/target/mayfly/py-ok.wasm")), "{said}");
    assert!(said.contains("an instance starts with") && said.contains("(limit 512MiB)"), "{said}");
    // 100 MiB held from import on: the snapshot's memory, in every instance.
    let big = "from mayfly_sdk import task\nBIG = bytearray(100 << 20)\nBIG[::4096] = b'x' * len(BIG[::4096])\n\
               @task\ndef f(input):\n    pass\n";
    let (ok, said) = build("py-big", big, &["--memory", "64MiB"]);
    assert!(!ok && said.contains("is too large for the sandbox") && said.contains("(limit `memory`)"), "{said}");
}

#[test]
fn mayfly_init_python_makes_a_task_whose_tests_and_job_pass_at_once() {
    let parent = scratch("py-init");
    let out =
        Command::new(mayfly_bin()).args(["init", "tally", "--lang", "python", "--dir"]).arg(&parent).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let dir = parent.join("tally");
    for f in ["app.py", "test_app.py", "pyproject.toml", "job.toml", "data/sample.txt", "README.md"] {
        assert!(dir.join(f).is_file(), "{f} is missing: {}", text(&out));
    }
    let tests = Command::new("python3").args(["-m", "unittest", "-v"]).current_dir(&dir).output().unwrap();
    assert!(tests.status.success(), "{}", text(&tests));
    assert!(text(&tests).contains("Ran 4 tests"), "{}", text(&tests));

    let run = Command::new(mayfly_bin())
        .args(["run", "job.toml"])
        .current_dir(&dir)
        .env("MAYFLY_COMPONENTIZE_PY", mayfly_tests::componentize_py())
        .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    // One line per item; the job may have split the file into ranges.
    let mut totals = [0u64; 3];
    for out in walk(&dir.join("out")).into_iter().filter(|p| p.ends_with("counts.tsv")) {
        let line = std::fs::read_to_string(&out).unwrap();
        let fields: Vec<&str> = line.trim_end().split('\t').collect();
        assert_eq!((fields.len(), fields[0]), (4, "sample.txt"), "{line:?}");
        for (total, field) in totals.iter_mut().zip(&fields[1..]) {
            *total += field.parse::<u64>().unwrap();
        }
    }
    assert_eq!(totals, [5, 51, std::fs::metadata(dir.join("data/sample.txt")).unwrap().len()]);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { found.extend(walk(&path)) } else { found.push(path) }
    }
    found
}

#[test]
fn the_python_tasks_own_tests_pass_in_plain_python() {
    for (dir, tests) in [("sdk/python", "tests"), (WORDCOUNT_PY, "."), (CSVSUM_PY, ".")] {
        let out = Command::new("python3")
            .args(["-m", "unittest", "discover", "-v", "-s", tests])
            .current_dir(root().join(dir))
            .env("PYTHONPATH", root().join("sdk/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{dir}: {}", text(&out));
    }
}

/// Writes a wheel `name-1.0-tag.whl` into `dir` holding `name/__init__.py`
/// = `init` (with Python's zipfile: a wheel is a zip with three metadata files).
fn wheel(dir: &Path, name: &str, tag: &str, init: &str) -> std::path::PathBuf {
    let script = r#"
import base64, hashlib, sys, zipfile
out, name, tag, init = sys.argv[1:]
info = f"{name}-1.0.dist-info"
files = {f"{name}/__init__.py": init,
         f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
         f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
record = "".join(
    f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b'=').decode()},{len(c)}\n"
    for p, c in files.items()) + f"{info}/RECORD,,\n"
with zipfile.ZipFile(out, "w") as z:
    for p, c in {**files, f"{info}/RECORD": record}.items():
        z.writestr(p, c)
"#;
    let path = dir.join(format!("{name}-1.0-{tag}.whl"));
    let out = Command::new("python3").arg("-c").arg(script).arg(&path).args([name, tag, init]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    path
}

#[test]
fn declared_pure_python_dependencies_are_vendored_and_native_ones_refused() {
    let dir = scratch("py-deps");
    let wheels = dir.join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    let greet = wheel(&wheels, "greet", "py3-none-any", "def hello(name):\n    return f'hello {name}'\n");
    let natty = wheel(&wheels, "natty", "cp314-cp314-linux_x86_64", "x = 1\n");
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    let app = "import greet\nfrom mayfly_sdk import task\n\n@task\ndef f(input, params, outputs):\n    \
               with outputs.create('hello.txt') as out:\n        out.write(greet.hello(input.name).encode())\n";
    std::fs::write(task.join("app.py"), app).unwrap();
    let pyproject = |dep: &Path, name: &str| {
        format!("[project]\nname = \"deps\"\ndependencies = [\"{name} @ file://{}\"]\n\n[tool.mayfly]\n", dep.display())
    };
    std::fs::write(task.join("pyproject.toml"), pyproject(&greet, "greet")).unwrap();
    std::fs::write(dir.join("in.txt"), "x").unwrap();
    let mayfly = |args: &[&str]| {
        Command::new(mayfly_bin())
            .args(args)
            .current_dir(&dir)
            .env("MAYFLY_COMPONENTIZE_PY", mayfly_tests::componentize_py())
            .env("MAYFLY_CACHE_DIR", mayfly_tests::cache_dir())
            .output()
            .unwrap()
    };
    let out = mayfly(&["exec", "task", "--input", "in.txt", "--out", "out"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(dir.join("out/hello.txt")).unwrap(), "hello in.txt");

    std::fs::write(task.join("pyproject.toml"), pyproject(&natty, "natty")).unwrap();
    let out = mayfly(&["build", "task"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("could not be vendored") && said.contains("natty"), "{said}");
    assert!(said.contains("not a supported wheel") && said.contains("only pure-Python packages"), "{said}");
}
