//! The chaos suite (`harness = false`): a fault-free reference run, then one
//! run per seed with that seed's faults (see `mayfly_tests::chaos`), then the
//! figures. Exits non-zero when any run broke a promise.
//!
//! ```text
//! cargo test -p mayfly-tests --test chaos                   # seeds 1-7 (CI): each fault kind once as the first fault
//! cargo test -p mayfly-tests --test chaos -- --runs 200     # seeds 1-200
//! cargo test -p mayfly-tests --test chaos -- --first 1000 --runs 50
//! cargo test -p mayfly-tests --test chaos -- --seed 17 --seed 42   # reproduce those runs
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use mayfly_tests::chaos::{self, KINDS, Schedule};

fn usage(message: &str) -> ExitCode {
    eprintln!("chaos: {message}\nusage: chaos [--runs N] [--first SEED] [--seed SEED]...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut first, mut seeds) = (KINDS.len() as u64, 1u64, Vec::new());
    let mut filters = Vec::new();
    while let Some(arg) = args.next() {
        let mut number = |name: &str| match args.next().map(|v| v.parse::<u64>()) {
            Some(Ok(n)) => Ok(n),
            _ => Err(usage(&format!("{name} needs a number"))),
        };
        match arg.as_str() {
            "--runs" => match number("--runs") {
                Ok(n) => runs = n,
                Err(code) => return code,
            },
            "--first" => match number("--first") {
                Ok(n) => first = n,
                Err(code) => return code,
            },
            "--seed" => match number("--seed") {
                Ok(n) => seeds.push(n),
                Err(code) => return code,
            },
            // libtest's own flags, as `cargo test -- --nocapture` passes them.
            flag if flag.starts_with("--") => {}
            filter => filters.push(filter.to_owned()),
        }
    }
    // `cargo test some_filter` passes the filter to every test binary.
    if !filters.is_empty() && !filters.iter().any(|f| "chaos".contains(f.as_str())) {
        println!("chaos: filtered out");
        return ExitCode::SUCCESS;
    }
    if seeds.is_empty() {
        seeds = (first..first.saturating_add(runs)).collect();
    }

    let mut out = std::io::stdout();
    let reference = chaos::run(&Schedule { seed: 0, delay_ms: 150, deadline_ms: None, faults: vec![] }, None);
    chaos::print_run(&mut out, &reference);
    if !reference.passed() {
        println!("chaos: the fault-free reference run failed; no seed was run");
        return ExitCode::FAILURE;
    }
    let tree = reference.outputs.clone();

    let mut failed = Vec::new();
    let mut by_kind: BTreeMap<&str, usize> = KINDS.iter().map(|k| (*k, 0)).collect();
    let (mut lost, mut duplicates, mut left, mut resumes) = (0, 0, 0, 0);
    for &seed in &seeds {
        let schedule = Schedule::from_seed(seed);
        let report = chaos::run(&schedule, Some(&tree));
        chaos::print_run(&mut out, &report);
        let _ = out.flush();
        for (kind, _) in &report.injected {
            *by_kind.entry(kind).or_default() += 1;
        }
        if schedule.deadline_ms.is_some() {
            *by_kind.entry("deadline").or_default() += 1;
        }
        lost += report.lost;
        duplicates += report.duplicates;
        left += report.left;
        resumes += report.resumes;
        if !report.passed() {
            failed.push(seed);
        }
    }
    let n = seeds.len();
    println!("\nchaos: {n} runs, {} passed, {} failed", n - failed.len(), failed.len());
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {}; master resumed {resumes} times", kinds.join(", "));
    println!("items lost {lost}, duplicates visible {duplicates}, processes left behind {left}");
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        let list: Vec<String> = failed.iter().map(|s| s.to_string()).collect();
        println!(
            "failed seeds: {} (rerun one: cargo test -p mayfly-tests --test chaos -- --seed <SEED>)",
            list.join(" ")
        );
        ExitCode::FAILURE
    }
}
