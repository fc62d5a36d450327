//! One attempt at a shard (`mayfly_core::attempt`), driven directly with a
//! real component: the shape a worker and `mayfly replay` share. Each test
//! fails if its rule is changed: which call runs when, which item a failure
//! blames, what a driver's stop keeps.

use std::sync::Arc;

use mayfly_core::attempt::{self, Driver, Ended, Stage};
use mayfly_core::config::Isolation;
use mayfly_core::host::{BytesInput, Call, InputSource, Limits};
use mayfly_model::plan::Item;
use mayfly_tests::{runtime, scratch, task};

const STATEFUL: &str = "tests/guests/stateful";

fn item(name: &str) -> Item {
    Item { object: name.to_owned(), start: 0, len: 5, whole: true }
}

/// A driver that serves each item's name as its bytes, can fail an input or
/// stop before an item, and records every call.
#[derive(Default)]
struct Script {
    stop_before: Option<usize>,
    input_error: Option<(usize, std::io::ErrorKind)>,
    calls: Vec<String>,
    asked: Vec<usize>,
}

impl Driver for Script {
    type Stop = &'static str;

    fn before(&mut self, index: usize) -> Option<&'static str> {
        self.asked.push(index);
        (self.stop_before == Some(index)).then_some("held")
    }

    fn input(&mut self, index: usize, item: &Item) -> std::io::Result<Arc<dyn InputSource>> {
        match self.input_error {
            Some((i, kind)) if i == index => Err(std::io::Error::new(kind, "as scripted")),
            _ => Ok(Arc::new(BytesInput::new(item.object.clone(), item.object.clone().into_bytes()))),
        }
    }

    fn called(&mut self, stage: Stage<'_>, call: &Call) {
        let ok = if call.result.is_ok() { "ok" } else { "failed" };
        self.calls.push(match stage {
            Stage::Start => format!("start {ok}"),
            Stage::Item(key) => format!("{key} {ok}"),
            Stage::Finish => format!("finish {ok}"),
        });
    }
}

fn attempt(name: &str, params: &str, isolation: Isolation, items: &[&str], driver: &mut Script) -> Ended<&'static str> {
    let staging = scratch(name).join("staging");
    let shard = attempt::Shard {
        job: "j",
        shard: 7,
        attempt: 1,
        params: Arc::from(params),
        limits: Limits::default(),
        isolation,
        staging: &staging,
        key: mayfly_core::job::shard_key(7),
        partitions: 1,
    };
    let items: Vec<Item> = items.iter().map(|n| item(n)).collect();
    // As the binary's: a multi-thread runtime drives its timers for a caller's `block_on`.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
    attempt::run(rt.handle(), runtime(), &task(STATEFUL), &shard, &items, driver)
}

#[test]
fn a_shard_runs_through_one_instance_and_stages_item_and_shard_outputs() {
    let mut d = Script::default();
    let Ended::Done(outputs) = attempt("attempt-shard", "{}", Isolation::Shard, &["a", "b", "c"], &mut d) else {
        panic!("{:?}", d.calls)
    };
    assert_eq!(d.calls, ["start ok", "a ok", "b ok", "c ok", "finish ok"]);
    let mut keys: Vec<_> = outputs.iter().map(|o| format!("{}/{}", o.key, o.name)).collect();
    keys.sort();
    assert_eq!(keys, ["_shards/000007/seen.txt", "a/copy.bin", "b/copy.bin", "c/copy.bin"]);
    let seen = outputs.iter().find(|o| o.name == "seen.txt").unwrap();
    assert_eq!(std::fs::read_to_string(&seen.path).unwrap(), "a\nb\nc\n", "one instance saw every item");
}

#[test]
fn with_item_isolation_each_item_has_an_instance_of_its_own() {
    let mut d = Script::default();
    let Ended::Done(outputs) = attempt("attempt-isolated", "{}", Isolation::Item, &["a", "b"], &mut d) else {
        panic!("{:?}", d.calls)
    };
    assert_eq!(d.calls, ["start ok", "a ok", "finish ok", "start ok", "b ok", "finish ok"]);
    for key in ["a", "b"] {
        let seen = outputs.iter().find(|o| o.key == key && o.name == "seen.txt").unwrap();
        assert_eq!(std::fs::read_to_string(&seen.path).unwrap(), format!("{key}\n"));
    }
}

#[test]
fn a_failing_item_ends_the_attempt_and_is_blamed() {
    let mut d = Script::default();
    let params = r#"{"fatal_on":"poison"}"#;
    let Ended::Failed(f) = attempt("attempt-poison", params, Isolation::Shard, &["a", "poison", "c"], &mut d) else {
        panic!("{:?}", d.calls)
    };
    assert_eq!(d.calls, ["start ok", "a ok", "poison failed"], "nothing runs after the failure");
    assert_eq!(f.blamed_item(), Some("poison"));
    assert!(!f.retryable && f.error.contains("item poison: task") && f.error.contains("poison is poisoned"), "{f:?}");
}

#[test]
fn a_failing_start_or_finish_blames_no_item() {
    for (name, stage, calls) in [
        ("attempt-start", "start", &["start failed"][..]),
        ("attempt-finish", "finish", &["start ok", "a ok", "finish failed"][..]),
    ] {
        let mut d = Script::default();
        let params = format!(r#"{{"panic_in":"{stage}"}}"#);
        let Ended::Failed(f) = attempt(name, &params, Isolation::Shard, &["a"], &mut d) else { panic!("{stage}") };
        assert_eq!(d.calls, calls);
        assert_eq!((f.at, f.blamed), (None, false), "{stage}");
        assert!(f.error.contains(&format!("{stage}: panicked")), "{}", f.error);
    }
}

#[test]
fn an_input_gone_for_good_is_blamed_and_a_storage_error_is_retried() {
    let mut d = Script { input_error: Some((1, std::io::ErrorKind::NotFound)), ..Script::default() };
    let Ended::Failed(f) = attempt("attempt-gone", "{}", Isolation::Shard, &["a", "b"], &mut d) else { panic!() };
    assert_eq!((f.blamed_item(), f.retryable), (Some("b"), false), "{f:?}");
    let mut d = Script { input_error: Some((1, std::io::ErrorKind::TimedOut)), ..Script::default() };
    let Ended::Failed(f) = attempt("attempt-timeout", "{}", Isolation::Shard, &["a", "b"], &mut d) else { panic!() };
    assert_eq!((f.at.as_deref(), f.blamed, f.retryable), (Some("b"), false, true), "{f:?}");
    assert!(f.error.starts_with("input b: as scripted"), "{}", f.error);
}

#[test]
fn a_drivers_stop_ends_the_attempt_between_items_keeping_nothing() {
    let mut d = Script { stop_before: Some(1), ..Script::default() };
    let ended = attempt("attempt-stop", "{}", Isolation::Shard, &["a", "b", "c"], &mut d);
    assert!(matches!(ended, Ended::Stopped("held")), "{ended:?}");
    assert_eq!(d.asked, [0, 1]);
    assert_eq!(d.calls, ["start ok", "a ok"]);
    let staging = mayfly_tests::target_dir().join("test-scratch").join(std::process::id().to_string());
    assert!(staging.join("attempt-stop").is_dir());
    let staged: Vec<_> = walk(&staging.join("attempt-stop"));
    assert!(staged.is_empty(), "a stopped attempt keeps no staged file: {staged:?}");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
