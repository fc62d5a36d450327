//! The comparison a user makes before choosing mayfly, on this machine, in one
//! run: the same wordcount (map + reduce) over the same generated files by
//! 1. the physical limit (the task's code compiled natively, `xargs -P2`, a native merge),
//! 2. mayfly on the local provider with 2 workers,
//! 3. Lithops in localhost mode (installed from PyPI into a virtual environment),
//! 4. one `mayfly exec` over a single file holding all the data (the sandbox, no framework);
//! 5. mayfly with the same wordcount written in Python (tasks/wordcount-py), beside Lithops;
//!
//! then mayfly's scaling with 1, 2 and 4 workers, the partitioned reduce (R = 1,
//! 2, 4 partitions on 2 workers, 1 and 4 on 4: each stage's time), a worker's read path over
//! the small files in moto's S3 with 0 and 20 ms added per request, and the
//! master alone under 1,000 and 10,000 simulated workers. Every contender's result is checked
//! equal to the others' before any time is printed.
//!
//! Full: `cargo bench -p mayfly-tests --bench compare` (1 GiB in 2,000 files,
//! and 50,000 files of 1-4 KiB; about ten minutes, the first time more to
//! generate the data and install Lithops). CI: `... -- --smoke` (about three
//! minutes, most of it Lithops' start-up and the simulated workers).
//! `--runs N` timed runs per contender (the best is shown; default 3, smoke 1);
//! `--only compare|scaling|reduce|readahead|master`; `--data 1|2` one corpus only; `--no-lithops`
//! to leave Lithops out.

// A benchmark: a panic is how a step reports failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mayfly_model::units::ByteSize;
use mayfly_tests::bench::{self, Corpus, Cost, Dataset, Sizes};

/// The Python wordcount (sdk/python, componentize-py): a row of its own.
const WORDCOUNT_PY: &str = "tasks/wordcount-py";

struct Args {
    smoke: bool,
    runs: usize,
    only: Option<String>,
    data: Option<usize>,
    lithops: bool,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let value = |flag: &str| argv.iter().skip_while(|a| *a != flag).nth(1).cloned();
    let smoke = argv.iter().any(|a| a == "--smoke");
    let args = Args {
        smoke,
        runs: value("--runs").and_then(|r| r.parse().ok()).unwrap_or(if smoke { 1 } else { 3 }).max(1),
        only: value("--only"),
        data: value("--data").and_then(|d| d.parse().ok()),
        lithops: !argv.iter().any(|a| a == "--no-lithops"),
    };
    let part = |p: &str| args.only.as_deref().is_none_or(|o| o == p);
    println!("mayfly comparison benchmark ({} mode)", if smoke { "smoke" } else { "full" });
    println!("machine: {}", machine());

    // Everything is built (and Lithops installed) before anything is timed.
    mayfly_tests::mayfly_bin();
    mayfly_tests::component("tasks/wordcount");
    mayfly_tests::component(WORDCOUNT_PY);
    let native_bin = bench::native_wordcount();
    let lithops =
        if args.lithops {
            Some(bench::lithops_python().unwrap_or_else(|e| {
                panic!("Lithops could not be installed ({e}); run with --no-lithops to leave it out")
            }))
        } else {
            None
        };
    let root = mayfly_tests::target_dir().join("bench-compare");
    // What an interrupted run set aside (see `bench::set_aside`).
    bench::empty_trash(&root.join("runs"));
    let cache = root.join("component-cache");

    let corpora = if smoke {
        [
            (
                "16 MiB in 64 files (mixed sizes)",
                Corpus { seed: 1, files: 64, total: 16 << 20, sizes: Sizes::Mixed, vocabulary: 20_000 },
            ),
            (
                "2,000 files of 1-4 KiB",
                Corpus {
                    seed: 2,
                    files: 2_000,
                    total: 0,
                    sizes: Sizes::Range { min: 1024, max: 4096 },
                    vocabulary: 20_000,
                },
            ),
        ]
    } else {
        [
            (
                "1 GiB in 2,000 files (mixed sizes)",
                Corpus { seed: 1, files: 2_000, total: 1 << 30, sizes: Sizes::Mixed, vocabulary: 50_000 },
            ),
            (
                "50,000 files of 1-4 KiB",
                Corpus {
                    seed: 2,
                    files: 50_000,
                    total: 0,
                    sizes: Sizes::Range { min: 1024, max: 4096 },
                    vocabulary: 50_000,
                },
            ),
        ]
    };
    let mut datasets = Vec::new();
    for (title, corpus) in &corpora {
        let started = std::time::Instant::now();
        let dir = root.join(format!("data-{}-{}-{}", corpus.seed, corpus.files, corpus.total));
        let data = corpus.generate(&dir).expect("generating the corpus");
        println!(
            "data {}: {} files, {}, largest {}, smallest {} (ready in {:.1} s)",
            title,
            data.files.len(),
            ByteSize(data.bytes()),
            ByteSize(data.files[0].1),
            ByteSize(data.files[data.files.len() - 1].1),
            started.elapsed().as_secs_f64()
        );
        datasets.push((*title, data));
    }

    if part("compare") {
        for (i, (title, data)) in datasets.iter().enumerate() {
            if args.data.is_none_or(|d| d == i + 1) {
                compare(&args, title, data, &native_bin, lithops.as_deref(), &root.join("runs"), &cache, i == 0);
            }
        }
    }
    // The native result of the first corpus, when this run made it: what the
    // scaling and reduce rows must equal (else they must equal each other).
    let native = (part("compare") && args.data.is_none_or(|d| d == 1)).then(|| root.join("runs/results-1/native.tsv"));
    if part("scaling") {
        scaling(&args, &datasets[0], &root.join("runs"), &cache, native.as_deref());
    }
    if part("reduce") {
        reduce(&args, &datasets[0], &root.join("runs"), &cache, native.as_deref());
        // Where the reduce is most of the work: millions of distinct words.
        let (title, corpus) = if smoke {
            (
                "8 MiB in 64 files, 500,000-word vocabulary",
                Corpus { seed: 3, files: 64, total: 8 << 20, sizes: Sizes::Mixed, vocabulary: 500_000 },
            )
        } else {
            (
                "256 MiB in 256 files, 3,000,000-word vocabulary",
                Corpus { seed: 3, files: 256, total: 256 << 20, sizes: Sizes::Mixed, vocabulary: 3_000_000 },
            )
        };
        let dir = root.join(format!("data-{}-{}-{}", corpus.seed, corpus.files, corpus.total));
        let data = corpus.generate(&dir).expect("generating the corpus");
        let (cost, native) = bench::native(&native_bin, &data, 2, &root.join("runs/native-wide"));
        println!();
        println!("data {title}: native baseline (xargs -P2 + merge) {:.2}s", cost.wall.as_secs_f64());
        reduce(&args, &(title, data), &root.join("runs"), &cache, Some(&native));
    }
    if part("readahead") {
        read_ahead(&args, &datasets[1], &root.join("runs"));
    }
    bench::empty_trash(&root.join("runs"));
    if part("master") {
        master(&args);
    }
}

/// The CPU, its cores and the memory, for the table's caption.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    format!("{model}, {cores} cores, {:.0} GiB", mem_kib as f64 / (1u64 << 20) as f64)
}

/// Runs `f` (untimed once first, in full mode, so that the page cache and the
/// component cache are warm for every contender alike), then `runs` times;
/// keeps the fastest run and checks each run's result equals the first's.
fn best(args: &Args, mut f: impl FnMut() -> (Cost, PathBuf), keep: &Path) -> Cost {
    if !args.smoke {
        f();
    }
    let mut best: Option<Cost> = None;
    for _ in 0..args.runs {
        let (cost, result) = f();
        let bytes = std::fs::read(&result).unwrap_or_else(|e| panic!("reading {}: {e}", result.display()));
        match std::fs::read(keep) {
            Ok(kept) => assert!(kept == bytes, "{} differs from an earlier run's result", result.display()),
            Err(_) => std::fs::write(keep, &bytes).unwrap(),
        }
        if best.is_none_or(|b| cost.wall < b.wall) {
            best = Some(cost);
        }
    }
    best.unwrap()
}

#[allow(clippy::too_many_arguments)]
fn compare(
    args: &Args,
    title: &str,
    data: &Dataset,
    native_bin: &Path,
    lithops: Option<&Path>,
    runs: &Path,
    cache: &Path,
    big: bool,
) {
    let results = runs.join(format!("results-{}", if big { 1 } else { 2 }));
    let _ = std::fs::remove_dir_all(&results);
    std::fs::create_dir_all(&results).unwrap();
    let mut rows: Vec<(&str, Cost, PathBuf)> = Vec::new();
    let keep = |name: &str| results.join(format!("{name}.tsv"));
    let c = best(args, || bench::native(native_bin, data, 2, &runs.join("native")), &keep("native"));
    rows.push(("native, xargs -P2 + merge", c, keep("native")));
    let c = best(args, || bench::mayfly(data, 2, &runs.join("mayfly"), cache), &keep("mayfly"));
    rows.push(("mayfly, local, 2 workers", c, keep("mayfly")));
    if let Some(python) = lithops {
        let c = best(args, || bench::lithops(python, data, 2, &runs.join("lithops")), &keep("lithops"));
        rows.push(("Lithops localhost, 2 procs", c, keep("lithops")));
    }
    let c = best(args, || bench::exec(data, &runs.join("exec"), cache), &keep("exec"));
    rows.push(("mayfly exec, one file", c, keep("exec")));
    let c =
        best(args, || bench::mayfly_with(WORDCOUNT_PY, data, 2, &runs.join("mayfly-py"), cache), &keep("mayfly-py"));
    rows.push(("mayfly, wordcount-py, 2 w", c, keep("mayfly-py")));

    // The results first: every contender must have counted the same words.
    let reference = std::fs::read(&rows[0].2).unwrap();
    assert!(!reference.is_empty(), "the native word count produced nothing");
    for (name, _, result) in &rows[1..] {
        assert!(
            std::fs::read(result).unwrap() == reference,
            "{name}'s result {} differs from the native one {}",
            result.display(),
            rows[0].2.display()
        );
    }
    let lines = reference.iter().filter(|&&b| b == b'\n').count();

    let fastest = rows.iter().map(|r| r.1.wall).min().unwrap();
    let mib = data.bytes() as f64 / (1 << 20) as f64;
    println!();
    println!(
        "wordcount over {title}: all {} results equal ({lines} distinct words); best of {} run(s)",
        rows.len(),
        args.runs
    );
    println!("{:<28} {:>9} {:>9} {:>10} {:>10} {:>9}", "contender", "wall", "CPU", "peak RSS", "MiB/s", "vs best");
    for (name, cost, _) in &rows {
        println!(
            "{name:<28} {:>8.2}s {:>8.2}s {:>7} MiB {:>10.0} {:>8.2}x",
            cost.wall.as_secs_f64(),
            cost.cpu.as_secs_f64(),
            cost.peak_rss_kib >> 10,
            mib / cost.wall.as_secs_f64(),
            cost.wall.as_secs_f64() / fastest.as_secs_f64()
        );
    }
    let wall = |prefix: &str| rows.iter().find(|r| r.0.starts_with(prefix)).map(|r| r.1.wall.as_secs_f64());
    let (native, mayfly) = (wall("native").unwrap(), wall("mayfly,").unwrap());
    let limit = if big { 1.25 } else { 1.5 };
    let verdict = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("target: mayfly within {limit}x of native: {:.2}x {}", mayfly / native, verdict(mayfly / native <= limit));
    if let Some(l) = wall("Lithops") {
        println!("target: mayfly at least 5x faster than Lithops: {:.1}x {}", l / mayfly, verdict(l / mayfly >= 5.0));
        let py = wall("mayfly, wordcount-py").unwrap();
        println!(
            "target: mayfly with the Python wordcount at least 2x faster than Lithops (also Python): {:.1}x {}",
            l / py,
            verdict(l / py >= 2.0)
        );
    }
}

fn scaling(args: &Args, (title, data): &(&str, Dataset), runs: &Path, cache: &Path, native: Option<&Path>) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "scaling: mayfly, local, wordcount over {title} (this machine has {cores} cores: more workers than cores share them)"
    );
    println!("{:<10} {:>9} {:>9} {:>10} {:>9}", "workers", "wall", "CPU", "peak RSS", "speedup");
    // Every worker count's result must equal the native one (when the
    // comparison ran) and each other's.
    let keep = runs.join("results-scaling.tsv");
    let _ = std::fs::remove_file(&keep);
    if let Some(native) = native {
        std::fs::copy(native, &keep).unwrap();
    }
    let mut one = None;
    for workers in [1, 2, 4] {
        let cost = best(args, || bench::mayfly(data, workers, &runs.join("scaling"), cache), &keep);
        let base = *one.get_or_insert(cost.wall);
        println!(
            "{workers:<10} {:>8.2}s {:>8.2}s {:>6} MiB {:>8.2}x",
            cost.wall.as_secs_f64(),
            cost.cpu.as_secs_f64(),
            cost.peak_rss_kib >> 10,
            base.as_secs_f64() / cost.wall.as_secs_f64()
        );
    }
}

/// The reduce stage with R partitions on the workers: the job's wall time and
/// where it went (map; reduce partitions; the end, where the master merges the
/// R sorted parts), each R's result equal to the native one.
fn reduce(args: &Args, (title, data): &(&str, Dataset), runs: &Path, cache: &Path, native: Option<&Path>) {
    println!();
    println!("partitioned reduce: mayfly, local, wordcount over {title} (merged by order 2nr,1 into one counts.tsv)");
    println!(
        "{:<8} {:>3} {:>9} {:>9} {:>9} {:>9} {:>13} {:>15}",
        "workers", "R", "wall", "map", "reduce", "merge", "reduce share", "reduce speedup"
    );
    let keep = runs.join("results-reduce.tsv");
    let _ = std::fs::remove_file(&keep);
    if let Some(native) = native {
        std::fs::copy(native, &keep).unwrap();
    }
    let work = runs.join("reduce");
    for (workers, rs) in [(2usize, &[1u32, 2, 4][..]), (4, &[1, 4][..])] {
        let mut one = None;
        for &r in rs {
            if !args.smoke {
                bench::mayfly_partitioned(data, workers, r, &work, cache);
            }
            let mut best: Option<(Cost, bench::Stages)> = None;
            for _ in 0..args.runs {
                let (cost, result) = bench::mayfly_partitioned(data, workers, r, &work, cache);
                let bytes = std::fs::read(&result).unwrap();
                match std::fs::read(&keep) {
                    Ok(kept) => assert!(kept == bytes, "R = {r}: {} differs from the others'", result.display()),
                    Err(_) => std::fs::write(&keep, &bytes).unwrap(),
                }
                let stages = bench::stages(&work);
                if best.is_none_or(|(b, _)| cost.wall < b.wall) {
                    best = Some((cost, stages));
                }
            }
            let (cost, s) = best.unwrap();
            let secs = |ms: u64| ms as f64 / 1000.0;
            let reduce_time = *one.get_or_insert(s.reduce + s.end);
            println!(
                "{workers:<8} {r:>3} {:>8.2}s {:>8.2}s {:>8.2}s {:>8.2}s {:>12.0}% {:>14.2}x",
                cost.wall.as_secs_f64(),
                secs(s.map),
                secs(s.reduce),
                secs(s.end),
                (s.reduce + s.end) as f64 / 10.0 / cost.wall.as_secs_f64(),
                reduce_time as f64 / (s.reduce + s.end).max(1) as f64
            );
        }
    }
}

/// A worker's read path (read-ahead, sandbox) over the small files stored in
/// moto's S3, reached through a proxy that adds 0 or 20 ms to each request.
fn read_ahead(args: &Args, (title, data): &(&str, Dataset), runs: &Path) {
    use mayfly_data::readahead::ReadAheadConfig;
    use mayfly_tests::moto::{DelayProxy, Moto, S3};

    let n = if args.smoke { 400 } else { 5_000 };
    let files_dir = data.dir.join("files");
    let files: Vec<(String, u64)> = data
        .files
        .iter()
        .step_by((data.files.len() / n).max(1))
        .take(n)
        .map(|(p, len)| (p.strip_prefix(&files_dir).unwrap().to_string_lossy().into_owned(), *len))
        .collect();
    let started = std::time::Instant::now();
    let moto = Moto::start(&[]);
    moto.create_bucket("mayfly-bench");
    let url = "s3://mayfly-bench/small";
    let direct = S3::store(&moto.endpoint, url);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                while let Some((name, _)) = files.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                    direct.put(name, std::fs::read(files_dir.join(name)).unwrap()).unwrap();
                }
            });
        }
    });
    println!();
    println!(
        "read-ahead: {} of the {title} (every k-th) in moto's S3 ({} uploaded in {:.1} s), read by 2 worker threads, \
         4 shards each, each shard through one wordcount instance with the worker's read-ahead; every request \
         through a proxy that adds the latency shown before passing it on",
        files.len(),
        ByteSize(files.iter().map(|f| f.1).sum()),
        started.elapsed().as_secs_f64()
    );
    let ms = Duration::from_millis;
    let (near, far) = (DelayProxy::start(&moto.endpoint, ms(0)), DelayProxy::start(&moto.endpoint, ms(20)));
    let (near, far) = (S3::store(&near.endpoint, url), S3::store(&far.endpoint, url));
    let requests = ReadAheadConfig::for_store(None, None, false).requests;
    let staging = runs.join("readahead");
    // Untimed: the component compiled, moto's first answers.
    bench::read_ahead(&near, &files[..files.len().min(100)], 2, 4, requests, &staging);
    let rate = |store, files: &[(String, u64)], ahead| {
        (0..args.runs)
            .map(|_| bench::read_ahead(store, files, 2, 4, ahead, &staging))
            .max_by(|a, b| a.per_second().total_cmp(&b.per_second()))
            .unwrap()
    };
    println!("{:<34} {:>8} {:>8} {:>10} {:>12}", "read-ahead", "latency", "items", "items/s", "peak held");
    let row = |label: &str, latency: u64, r: bench::ReadRate| {
        println!(
            "{label:<34} {latency:>6}ms {:>8} {:>10.0} {:>12}",
            r.items,
            r.per_second(),
            ByteSize(r.peak_held).to_string()
        );
        r
    };
    let label = format!("{requests} requests (object store default)");
    let base = row(&label, 0, rate(&near, &files, requests));
    let slow = row(&label, 20, rate(&far, &files, requests));
    row("none (read_ahead = 0)", 0, rate(&near, &files, 0));
    // Without read-ahead every item waits a round trip: a few hundred items say enough.
    row("none (read_ahead = 0)", 20, rate(&far, &files[..files.len().min(200)], 0));
    let ratio = base.per_second() / slow.per_second();
    println!(
        "target: with 20 ms added per request, within 2x of the 0 ms figure: {ratio:.2}x {}",
        if ratio <= 2.0 { "ok" } else { "MISSED" }
    );
}

fn master(args: &Args) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    println!(
        "master: one real master process; simulated workers (tokio tasks in one process, on one thread, each with \
         its own keep-alive TLS connection) on loopback lease a one-object shard, work on it for `think`, commit it, \
         and lease again (no task runs; they share the machine's {cores} cores with the master; their starts are \
         spread over the first think time). Offered load = 2 x workers / think."
    );
    println!(
        "{:<8} {:>8} {:>7} {:>9} {:>9} {:>8} {:>9} {:>12} {:>10} {:>9} {:>10} {:>7}",
        "workers",
        "shards",
        "think",
        "offered",
        "ops/s",
        "p50",
        "p99",
        "master CPU",
        "sim CPU",
        "peak RSS",
        "connect",
        "target"
    );
    let ms = Duration::from_millis;
    // (workers, shards, think): 10,000 requests/s offered by 1,000 and by
    // 10,000 workers, then 1,000 workers with no think time (saturation).
    let loads: &[(usize, usize, Duration)] = if args.smoke {
        &[(100, 2_000, ms(20)), (1_000, 4_000, ms(200)), (100, 2_000, ms(0))]
    } else {
        // Forty rounds of lease and commit per worker at 1,000 and ten at
        // 10,000: the starts, spread over the first think time, are a small
        // part of the run.
        &[(1_000, 40_000, ms(200)), (10_000, 100_000, ms(2_000)), (1_000, 20_000, ms(0))]
    };
    for &(workers, shards, think) in loads {
        let load = bench::master_load(workers, shards, think);
        let offered = if think.is_zero() {
            "max".to_owned()
        } else {
            format!("{:.0}", 2.0 * workers as f64 / think.as_secs_f64())
        };
        // A smoke run's rows are too short to judge (its rounds are few, so the
        // spread starts weigh on the rate): the full run's row is the measure.
        let target = if workers == 1_000 && !think.is_zero() && !args.smoke {
            if load.rate() >= 0.95 * 10_000.0 && load.p99 < ms(50) { "ok" } else { "MISSED" }
        } else {
            "-"
        };
        println!(
            "{workers:<8} {shards:>8} {:>5}ms {offered:>9} {:>9.0} {:>6.1}ms {:>7.1}ms {:>7.0}µs/op {:>5.0}µs/op {:>5} MiB {:>9.2}s {target:>7}",
            think.as_millis(),
            load.rate(),
            load.p50.as_secs_f64() * 1e3,
            load.p99.as_secs_f64() * 1e3,
            load.master_cpu.as_secs_f64() * 1e6 / load.ops.max(1) as f64,
            load.sim_cpu.as_secs_f64() * 1e6 / load.ops.max(1) as f64,
            load.peak_rss_kib >> 10,
            load.slowest_connect.as_secs_f64(),
        );
        if !load.failures.is_empty() {
            println!(
                "         {} request(s) got no answer and were sent again; the first: {}",
                load.failures.len(),
                load.failures[0]
            );
        }
    }
    println!(
        "target: with 1,000 workers, 10,000 lease+commit requests/s offered, the master answers them (>= 95%) with p99 < 50 ms"
    );
    println!(
        "(master CPU: the master process's CPU time per request while the clock ran; sim CPU: the simulated \
         workers' process's; connect: the slowest first connection when every worker connects at once, before the \
         clock starts)"
    );
}
