//! What a task author sees from `mayfly build` and `mayfly exec`.

use std::process::{Command, Output};

use mayfly_tests::{cache_dir, component, mayfly_bin, root, scratch};

fn mayfly(args: &[&str]) -> Output {
    Command::new(mayfly_bin()).args(args).current_dir(root()).env("MAYFLY_CACHE_DIR", cache_dir()).output().unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn build_prints_the_component_path() {
    let out = mayfly(&["build", "tasks/sha256"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let path = stdout.trim();
    assert!(path.ends_with("wasm32-wasip2/release/sha256.wasm"), "{path}");
    assert_eq!(std::fs::read(path).unwrap()[..4], *b"\0asm");
}

#[test]
fn build_of_a_directory_without_a_crate_says_so() {
    let dir = scratch("not-a-crate");
    let out = mayfly(&["build", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a task: it has no Cargo.toml (a Rust task crate), and no app.py"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_of_a_task_directory_builds_runs_and_prints_outputs_and_logs() {
    let dir = scratch("exec-wc");
    let input = dir.join("words.txt");
    std::fs::write(&input, "b a b\nc b").unwrap();
    let out_dir = dir.join("out");
    let out =
        mayfly(&["exec", "tasks/wordcount", "--input", input.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("task     wordcount"), "{stdout}");
    assert!(stdout.contains("input    words.txt (9 bytes)"), "{stdout}");
    assert!(stdout.contains("result   ok in"), "{stdout}");
    assert!(stdout.contains(&format!("{}  (12 bytes)", out_dir.join("counts.tsv").display())), "{stdout}");
    assert!(stdout.contains("INFO Map done distinct=3 items=1 bytes=9"), "{stdout}");
    assert_eq!(std::fs::read_to_string(out_dir.join("counts.tsv")).unwrap(), "b\t3\na\t1\nc\t1\n");
    // Nothing but the output is left in the output directory.
    let names: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["counts.tsv"]);
}

#[test]
fn exec_passes_params_and_ranges() {
    let dir = scratch("exec-grep");
    let input = dir.join("log.txt");
    std::fs::write(&input, "skip me\nERROR one\nok\nerror two\n").unwrap();
    let wasm = component("tasks/grep");
    let out_dir = dir.join("out");
    let out = mayfly(&[
        "exec",
        wasm.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "--param",
        "pattern=^error",
        "--param",
        "ignore_case=true",
        "--range",
        "8..31",
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(out_dir.join("matches.txt")).unwrap(),
        "log.txt:1:ERROR one\nlog.txt:3:error two\n"
    );
}

/// `mayfly exec` of the misbehaving guest in `mode` over a one-byte input.
fn exec_misbehave(name: &str, mode: &str, extra: &[&str]) -> (Output, std::path::PathBuf) {
    let dir = scratch(name);
    let input = dir.join("in.txt");
    std::fs::write(&input, "x").unwrap();
    let wasm = component("tests/guests/misbehave");
    let out_dir = dir.join("out");
    let mode = format!("mode={mode}");
    let mut args = vec!["exec", wasm.to_str().unwrap(), "--input", input.to_str().unwrap(), "--param", &mode];
    args.extend_from_slice(&["--out", out_dir.to_str().unwrap()]);
    args.extend_from_slice(extra);
    (mayfly(&args), out_dir)
}

#[test]
fn exec_of_a_failing_task_exits_1_naming_task_input_and_cause_and_publishes_nothing() {
    let (out, out_dir) = exec_misbehave("exec-fail", "trap-mid-output", &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: task guest_misbehave failed on in.txt: trapped:"), "{stderr}");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "no partial output, no staging left");
}

#[test]
fn exec_json_is_machine_readable() {
    let (out, _) = exec_misbehave("exec-json", "loop", &["--timeout", "300ms", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["failure"]["kind"], "timeout");
    assert_eq!(json["retryable"], true);
    assert_eq!(json["error"], "timed out after 300ms (limit `attempt_time`)");
}

#[test]
fn exec_bad_arguments_exit_2_with_what_was_wrong() {
    let wasm = component("tasks/wordcount");
    let w = wasm.to_str().unwrap();
    for (args, expect) in [
        (vec!["exec", w, "--input", "/nonexistent/in.txt"], "cannot read input /nonexistent/in.txt"),
        (vec!["exec", w, "--input", "README.md", "--param", "novalue"], "--param \"novalue\": expected KEY=VALUE"),
        (vec!["exec", w, "--input", "README.md", "--range", "9..3"], "END is before START"),
        (vec!["exec", "Cargo.toml", "--input", "README.md"], "task Cargo: not a WebAssembly component"),
        (vec!["exec", w, "--input", "README.md", "--memory", "lots"], "invalid size \"lots\""),
    ] {
        let out = mayfly(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(expect), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn build_adds_a_missing_wasm_target_and_says_so() {
    // A toolchain whose sysroot lacks the target: a `rustc` that answers
    // `--print sysroot` with an empty directory (and is the real one otherwise),
    // and a `rustup` that records what it was asked.
    let dir = scratch("missing-target");
    let bin = dir.join("bin");
    std::fs::create_dir_all(dir.join("sysroot/lib/rustlib")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let real_rustc =
        String::from_utf8(Command::new("rustup").args(["which", "rustc"]).current_dir(root()).output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
    let script = |name: &str, body: String| {
        use std::os::unix::fs::PermissionsExt;
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "rustc",
        format!(
            "if [ \"$1\" = --print ] && [ \"$2\" = sysroot ]; then echo {}; else exec {real_rustc} \"$@\"; fi",
            dir.join("sysroot").display()
        ),
    );
    script("rustup", format!("echo \"$@\" >> {}", dir.join("rustup-calls").display()));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(mayfly_bin())
        .args(["build", "tasks/sha256"])
        .current_dir(root())
        .env("PATH", path)
        .env("RUSTC", &real_rustc)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the wasm32-wasip2 target is missing; adding it (rustup target add wasm32-wasip2)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(dir.join("rustup-calls")).unwrap(), "target add wasm32-wasip2\n");
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = mayfly(&["--version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version = text(&out.stdout);
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(root()).output().unwrap();
    let head = text(&head.stdout);
    assert_eq!(head.trim().len(), 12, "this test runs in mayfly's git checkout");
    assert!(version.starts_with("mayfly 0.") && version.contains(&format!("({} ", head.trim())), "{version}");
}

#[test]
fn completions_are_scripts_each_shell_reads() {
    for shell in ["bash", "zsh", "fish"] {
        let out = mayfly(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for command in ["run", "status", "logs", "completions", "follow"] {
            assert!(script.contains(command), "{shell}'s script does not complete {command}");
        }
        if shell == "bash" {
            // What `mayfly <TAB>` offers: every command.
            let offered = script.lines().find(|l| l.contains("opts=\"-h -V --help --version ")).unwrap_or_default();
            assert!(offered.contains(" deploy ") && offered.contains(" completions "), "{offered}");
        }
        // The shell itself reads it without a syntax error, where it is
        // installed (bash always is here; zsh and fish may not be).
        let (program, flag) = match shell {
            "fish" => ("fish", "--no-execute"),
            other => (other, "-n"),
        };
        let path = scratch(&format!("completions-{shell}")).join("mayfly");
        std::fs::write(&path, &script).unwrap();
        match Command::new(program).arg(flag).arg(&path).output() {
            Ok(read) => assert!(read.status.success(), "{program} {flag}: {}", text(&read.stderr)),
            Err(_) if shell != "bash" => eprintln!("{shell} is not installed: its script's syntax is not checked"),
            Err(e) => panic!("bash: {e}"),
        }
    }
    let out = mayfly(&["completions", "powerpoint"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("possible values: bash"), "{}", text(&out.stderr));
}

#[test]
fn colors_only_when_asked_and_never_with_no_color() {
    let help = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(mayfly_bin());
        cmd.args(["run", "--bogus"]).env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        text(&out.stderr)
    };
    // Not a terminal: plain text.
    assert!(!help(&[]).contains('\x1b'), "{}", help(&[]));
    // Forced, colors appear (so the next line could fail)...
    assert!(help(&[("CLICOLOR_FORCE", "1")]).contains('\x1b'));
    // ...and NO_COLOR wins over it (https://no-color.org).
    assert!(!help(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]).contains('\x1b'));
}

#[test]
fn prices_of_a_provider_without_a_price_list_are_a_clear_error_and_an_empty_cache_says_how_to_fill_it() {
    let out = mayfly(&["prices", "refresh", "local"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the local provider has no price list to fetch from"), "{}", text(&out.stderr));
    let empty = scratch("prices-empty-cache");
    let out = Command::new(mayfly_bin()).args(["prices", "show"]).env("MAYFLY_CACHE_DIR", &empty).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no prices cached in"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("`mayfly prices refresh <provider>` fetches them"), "{}", text(&out.stdout));
}
