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

fn main() -> ExitCode {
    let seeds = match chaos::seeds("chaos", KINDS.len()) {
        Ok(Some(seeds)) => seeds,
        Ok(None) => return ExitCode::SUCCESS,
        Err(code) => return code,
    };

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
