//! The local cluster's benchmark, every ratio measured in this same run:
//! the planner on a million objects; the framework's overhead per shard and per
//! item (tiny files through an empty task, 2 workers) against reading the same
//! files natively; and the master alone under many simulated workers.
//!
//! Full: `cargo bench -p mayfly-tests --bench cluster`; CI: `... -- --smoke`.

use std::time::{Duration, Instant};

use mayfly_model::plan::{Object, PlanOptions, plan};
use mayfly_tests::cluster::TestJob;

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("mayfly local cluster benchmark ({} mode; {cores} cores)", if smoke { "smoke" } else { "full" });
    // Build the binary and the task before anything is timed.
    mayfly_tests::mayfly_bin();
    mayfly_tests::component("tests/guests/empty");
    // `--only planner|overhead|master` runs one part (for profiling).
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("planner") {
        planner(if smoke { 100_000 } else { 1_000_000 });
    }
    if run("overhead") {
        overhead(if smoke { 500 } else { 10_000 });
    }
    if run("master") {
        master(if smoke { 100 } else { 1000 }, if smoke { 2_000 } else { 20_000 });
    }
}

fn rss_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

fn planner(n: usize) {
    let objects: Vec<Object> = (0..n)
        .map(|i| Object { name: format!("dir{:03}/object-{i:08}.txt", i % 997), size: 1 + (i as u64 * 7919) % 65_536 })
        .collect();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss_kib("self", "VmRSS").unwrap_or(0);
    let started = Instant::now();
    let opts = PlanOptions {
        workers: 16,
        target_shard_bytes: None,
        shards_per_worker: 4,
        split_text: false,
        min_shard_bytes: 0,
    };
    let p = plan(&objects, opts, &mut |_, _, _| Ok(Vec::new())).expect("plan");
    let took = started.elapsed();
    let peak = rss_kib("self", "VmHWM").unwrap_or(0).saturating_sub(before);
    let (max, mean) = p.balance();
    println!(
        "planner   {n} objects -> {} shards in {:.2} s, +{} MiB peak RSS; balance max/mean {:.3} (target: 1M objects < 2 s, < 500 MiB) {}",
        p.shards.len(),
        took.as_secs_f64(),
        peak >> 10,
        max as f64 / mean,
        if n < 1_000_000 || (took < Duration::from_secs(2) && peak < 500 << 10) { "ok" } else { "MISSED" }
    );
}

fn overhead(files: usize) {
    let data: Vec<(String, Vec<u8>)> =
        (0..files).map(|i| (format!("d{}/f{i:05}.txt", i % 10), vec![b'x'; 64])).collect();
    // Baseline: reading every file natively, one process.
    let base = TestJob::new("bench-native", &data);
    let started = Instant::now();
    let mut bytes = 0;
    for (name, _) in &data {
        bytes += std::fs::read(base.dir.join("data").join(name)).expect("read").len();
    }
    let native = started.elapsed();
    assert_eq!(bytes, files * 64);
    let run = |id: &str, sharding: &str| -> Duration {
        let job = TestJob::new(id, &data);
        job.write_job(
            "tests/guests/empty",
            "{}",
            &format!("[cluster]\nworkers = 2\n\n[sharding]\n{sharding}\nsplit_text = false\n"),
        );
        let started = Instant::now();
        let out = job.run();
        let took = started.elapsed();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(job.map_outputs().len(), 0);
        took
    };
    let packed = run("bench-packed", "shards_per_worker = 4");
    let per_file = run("bench-per-file", "target_shard_bytes = 1");
    println!(
        "overhead  {files} tiny files, empty task, 2 workers: packed (8 shards) {:.2} s = {:.0} µs/item; \
         one shard per file {:.2} s = {:.0} shards/s, {:.2} ms/shard (target <= 2 ms) {}; native read of the same files {:.3} s",
        packed.as_secs_f64(),
        packed.as_secs_f64() * 1e6 / files as f64,
        per_file.as_secs_f64(),
        files as f64 / per_file.as_secs_f64(),
        per_file.as_secs_f64() * 1e3 / files as f64,
        if per_file.as_secs_f64() * 1e3 / files as f64 <= 2.0 { "ok" } else { "MISSED" },
        native.as_secs_f64()
    );
}

fn master(workers: usize, shards: usize) {
    let load = mayfly_tests::bench::master_load(workers, shards, Duration::ZERO);
    println!(
        "master    {workers} simulated workers, {shards} shards, no work between lease and commit: {} lease+commit \
         requests in {:.2} s = {:.0} ops/s, p99 {:.1} ms, peak RSS {} MiB (the comparison benchmark checks the targets)",
        load.ops,
        load.took.as_secs_f64(),
        load.rate(),
        load.p99.as_secs_f64() * 1e3,
        load.peak_rss_kib >> 10,
    );
}
