//! The task runtime's benchmark: the example tasks in the sandbox against the
//! same Rust code compiled natively, the host's cost per item, and the memory
//! one attempt takes. Every ratio is measured in this same run.
//!
//! Full size (what the README reports): `cargo bench -p mayfly-tests --bench runtime`
//! Smoke size (CI, seconds):            `cargo bench -p mayfly-tests --bench runtime -- --smoke`

use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_core::host::{Attempt, BytesInput, Limits, Runtime, RuntimeConfig, ShardInfo, ShardStart, Task};
use mayfly_tests::{component, sample_text, scratch};

struct Sizes {
    text_bytes: usize,
    repeats: usize,
    items: usize,
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke") || std::env::var_os("MAYFLY_BENCH_SMOKE").is_some();
    let sizes = if smoke {
        Sizes { text_bytes: 8 << 20, repeats: 1, items: 200 }
    } else {
        Sizes { text_bytes: 256 << 20, repeats: 3, items: 2000 }
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "mayfly task runtime benchmark ({} mode: {} MiB of generated text; {cores} cores)",
        if smoke { "smoke" } else { "full" },
        sizes.text_bytes >> 20
    );

    let cache = scratch("bench-cache");
    let runtime = Runtime::new(&RuntimeConfig { cache_dir: Some(cache), max_concurrent: 4 }).expect("runtime");
    let load = |dir: &str| {
        let path = component(dir);
        runtime.load(&path).unwrap_or_else(|e| panic!("{e}"));
        // Load again so that timings below use a warm compile cache, as a worker would.
        runtime.load(&path).unwrap_or_else(|e| panic!("{e}"))
    };
    let empty = load("tests/guests/empty");
    let wordcount = load("tasks/wordcount");
    let sha256 = load("tasks/sha256");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio");
    let staging = scratch("bench-staging");
    let mut n = 0u64;
    let mut attempt = |task: &Task, input: Arc<BytesInput>, params: &str| {
        n += 1;
        let dir = staging.join(n.to_string());
        let outcome =
            rt.block_on(runtime.run(
                task,
                Attempt { input, params: Arc::from(params), limits: Limits::default(), staging: dir.clone() },
            ));
        if let Err(f) = &outcome.result {
            panic!("task {} failed: {f}", task.name());
        }
        let outputs: Vec<Vec<u8>> =
            outcome.outputs.iter().map(|o| std::fs::read(&o.path).expect("read output")).collect();
        let _ = std::fs::remove_dir_all(&dir);
        (outcome, outputs)
    };

    // Memory first, before the large buffers below inflate the process: the
    // first attempt (pools and fiber stack set up) and a steady-state one.
    let tiny = Arc::new(BytesInput::new("tiny.txt", &b"hello"[..]));
    let mut peak_delta = || {
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let before = rss_kib("VmRSS");
        let (outcome, _) = attempt(&empty, tiny.clone(), "{}");
        match (reset, before, rss_kib("VmHWM")) {
            (true, Some(b), Some(p)) => Some((p.saturating_sub(b), b, outcome.peak_memory >> 10)),
            _ => None,
        }
    };
    match (peak_delta(), peak_delta()) {
        (Some((cold, rest, guest)), Some((warm, _, _))) => println!(
            "memory    one attempt of the empty task: host peak RSS +{cold} KiB (first attempt), +{warm} KiB (later ones) \
             over {rest} KiB at rest; guest linear memory {guest} KiB"
        ),
        _ => println!("memory    (peak RSS not measurable here: /proc/self/clear_refs unavailable)"),
    }

    // Per-item overhead with the instance reused (the default: one instance
    // per shard attempt): one `item` call into a live instance.
    let shard = ShardStart {
        info: ShardInfo { job: "bench".into(), shard: 0, attempt: 1, items: sizes.items as u32 },
        params: Arc::from("{}"),
        limits: Limits::default(),
        staging: staging.join("shard"),
        shard_key: String::new(),
        partitions: 1,
    };
    let (mut session, started) = rt.block_on(runtime.start(&empty, shard));
    started.result.expect("start");
    let mut in_shard: Vec<Duration> = (0..sizes.items * 10)
        .map(|_| {
            let started = Instant::now();
            let call = rt.block_on(session.item(tiny.clone(), None));
            let elapsed = started.elapsed();
            call.result.expect("item");
            elapsed
        })
        .collect();
    rt.block_on(session.finish()).result.expect("finish");
    in_shard.sort();
    let median = in_shard[in_shard.len() / 2];
    println!(
        "per-item  empty task, instance reused (isolation = \"shard\"), {} items: median {:.1} µs, p99 {:.1} µs \
         (target: median <= 10 µs) {}",
        in_shard.len(),
        median.as_secs_f64() * 1e6,
        in_shard[in_shard.len() * 99 / 100].as_secs_f64() * 1e6,
        verdict(median <= Duration::from_micros(10))
    );

    // Per-item overhead with `isolation = "item"`: instantiate from the
    // pre-linked task, start, item, finish, drop.
    let mut per_item: Vec<Duration> = (0..sizes.items)
        .map(|_| {
            let started = Instant::now();
            attempt(&empty, tiny.clone(), "{}");
            started.elapsed()
        })
        .collect();
    per_item.sort();
    let median = per_item[per_item.len() / 2];
    let p99 = per_item[per_item.len() * 99 / 100];
    println!(
        "per-item  empty task, a fresh instance per item (isolation = \"item\"), {} items: median {:.3} ms, p99 {:.3} ms (target: median < 1 ms) {}",
        sizes.items,
        ms(median),
        ms(p99),
        verdict(median < Duration::from_millis(1))
    );

    let text: Arc<[u8]> = Arc::from(sample_text(42, sizes.text_bytes).into_bytes());
    let mib = text.len() as f64 / (1 << 20) as f64;
    let input = Arc::new(BytesInput::new("corpus.txt", text.clone()));
    println!(
        "{:<10} {:>12} {:>12} {:>12}  (throughput, sandbox / native; target: wordcount >= 0.90x, sha256 >= 0.80x)",
        "task", "native", "sandbox", "ratio"
    );

    let native_wc = best(sizes.repeats, || {
        let counts = wordcount::count_words(&text[..], 0).expect("utf8");
        let mut out = Vec::new();
        wordcount::write_counts(&counts, &mut out).expect("write");
        out
    });
    let sandbox_wc = best(sizes.repeats, || attempt(&wordcount, input.clone(), "{}").1.remove(0));
    assert_eq!(native_wc.1, sandbox_wc.1, "wordcount: sandbox and native outputs differ");
    report("wordcount", mib, native_wc.0, sandbox_wc.0, 0.9);

    let native_sha = best(sizes.repeats, || sha256::digest(&text[..]).expect("read"));
    let sandbox_sha = best(sizes.repeats, || attempt(&sha256, input.clone(), "{}").1.remove(0));
    assert_eq!(format!("{}\tcorpus.txt\n", native_sha.1).into_bytes(), sandbox_sha.1, "sha256 outputs differ");
    report("sha256", mib, native_sha.0, sandbox_sha.0, 0.8);
    if cpu_has("sha_ni") {
        println!(
            "          note: this CPU has SHA-NI; native sha2 uses it, while WebAssembly has no such instructions"
        );
    }
}

/// The fastest of `n` runs, and the last result.
fn best<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut fastest = Duration::MAX;
    let mut last = None;
    for _ in 0..n {
        let started = Instant::now();
        let value = f();
        fastest = fastest.min(started.elapsed());
        last = Some(value);
    }
    (fastest, last.expect("at least one run"))
}

fn report(name: &str, mib: f64, native: Duration, sandbox: Duration, target: f64) {
    let rate = |d: Duration| mib / d.as_secs_f64();
    let ratio = native.as_secs_f64() / sandbox.as_secs_f64();
    println!(
        "{name:<10} {:>8.0} MiB/s {:>8.0} MiB/s {:>11.2}x  {}",
        rate(native),
        rate(sandbox),
        ratio,
        verdict(ratio >= target)
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_has(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.split_whitespace().any(|w| w == flag))
}
