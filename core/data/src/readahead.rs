//! Reading a shard's items ahead of the task.
//!
//! While the task processes item k, a few fetch threads (one set per shard
//! attempt, never one per item) read the next items whole into memory, so a
//! shard of many small objects waits for one round trip at its start, not one
//! per item. Two bounds hold at all times:
//!
//! - **requests in flight**: at most `requests` fetches run at once, and no
//!   fetch starts more than `2 × requests` items past the one the task is on;
//! - **memory**: the bytes fetched and not yet handed back stay within
//!   `memory`. An item larger than that is never fetched ahead: the task reads
//!   it from the store as it goes, a window at a time (as without read-ahead).
//!
//! Items come out in the shard's order. A fetch that fails is that item's
//! failure, delivered when the task reaches it.
//!
//! Rejected alternative: async fetches on the worker's runtime. That runtime
//! drives the sandbox on one thread, and an object store's blocking calls
//! already run on their own runtime; a few plain threads keep the two apart.
//!
//! In `mayfly-data`'s flow (`core/tests/flow.rs` checks it) it must not import `provider`
//! or anything above, nor its peers `nodelog` and `plugin`; like its crate, it must not
//! import `mayfly-core`, `mayfly-ops` or the binary.

use std::io;
use std::sync::{Arc, Condvar, Mutex};

use mayfly_model::plan::Item;
use mayfly_sandbox::{BytesInput, InputSource};

/// How much a worker reads ahead (`[input] read_ahead`, `read_ahead_memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAheadConfig {
    /// Fetches in flight at once (0 turns read-ahead off).
    pub requests: u32,
    /// Bytes held in memory at once.
    pub memory: u64,
}

impl ReadAheadConfig {
    /// The job's settings, else defaults by the kind of store: 32 requests
    /// for an object store (each a round trip), 2 for local files (the disk
    /// and the page cache gain little from more); 64 MiB.
    pub fn for_store(requests: Option<u32>, memory: Option<u64>, local: bool) -> Self {
        ReadAheadConfig { requests: requests.unwrap_or(if local { 2 } else { 32 }), memory: memory.unwrap_or(64 << 20) }
    }
}

/// Reads an item's bytes whole.
pub type Fetch = Arc<dyn Fn(&Item) -> io::Result<Vec<u8>> + Send + Sync>;
/// Opens an item to be read as the task goes (too large to fetch ahead).
pub type Open = Arc<dyn Fn(&Item) -> io::Result<Arc<dyn InputSource>> + Send + Sync>;

enum Slot {
    Waiting,
    Fetching,
    Ready(io::Result<Arc<dyn InputSource>>),
    Taken,
}

struct State {
    slots: Vec<Slot>,
    /// The next item a fetch thread takes up.
    next: usize,
    /// The item the task takes next.
    consumed: usize,
    /// Bytes fetched and not yet released, and the most ever.
    held: u64,
    peak: u64,
    stop: bool,
}

struct Shared {
    items: Vec<Item>,
    config: ReadAheadConfig,
    state: Mutex<State>,
    changed: Condvar,
}

/// The items of one shard attempt, fetched ahead of the task.
pub struct ReadAhead {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    open: Open,
    /// The bytes of the item last handed out, held until the next is taken.
    handed_out: Option<u64>,
    /// Items handed out from memory, and items opened to be read as the task goes.
    fetched: usize,
    opened: usize,
}

/// What a shard attempt's read-ahead did (the worker logs it with the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAheadStats {
    /// Fetches in flight at most (0: read-ahead off).
    pub requests: u32,
    /// Items handed to the task from memory, fetched ahead.
    pub fetched: usize,
    /// Items opened to be read as the task went (read-ahead off, or too large).
    pub opened: usize,
    /// The most bytes held at once.
    pub peak: u64,
}

impl std::fmt::Display for ReadAheadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requests == 0 {
            return write!(f, "read-ahead off");
        }
        write!(
            f,
            "{} items read ahead ({} requests, peak {} held)",
            self.fetched,
            self.requests,
            mayfly_model::units::ByteSize(self.peak)
        )?;
        if self.opened > 0 {
            write!(f, ", {} read as the task went (larger than the read-ahead memory)", self.opened)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("items", &self.shared.items.len())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl ReadAhead {
    /// Starts fetching `items` ahead.
    pub fn new(items: Vec<Item>, config: ReadAheadConfig, fetch: Fetch, open: Open) -> Self {
        let n = items.len();
        let shared = Arc::new(Shared {
            items,
            config,
            state: Mutex::new(State {
                slots: (0..n).map(|_| Slot::Waiting).collect(),
                next: 0,
                consumed: 0,
                held: 0,
                peak: 0,
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let threads = (0..(config.requests as usize).min(n))
            .filter_map(|i| {
                let (shared, fetch) = (shared.clone(), fetch.clone());
                std::thread::Builder::new()
                    .name(format!("mayfly-read-ahead-{i}"))
                    .spawn(move || fetch_loop(&shared, &fetch))
                    .ok()
            })
            .collect();
        ReadAhead { shared, threads, open, handed_out: None, fetched: 0, opened: 0 }
    }

    /// Item `index` (taken in order): fetched, or opened to be read as the
    /// task goes. The item before it is done with: its bytes are released.
    pub fn take(&mut self, index: usize) -> io::Result<Arc<dyn InputSource>> {
        let item = self.shared.items.get(index).cloned().ok_or_else(|| io::Error::other("no such item"))?;
        if self.threads.is_empty() {
            self.opened += 1;
            return (self.open)(&item);
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        // The task is done with the item handed out before: its memory is free.
        state.held = state.held.saturating_sub(self.handed_out.take().unwrap_or(0));
        state.consumed = state.consumed.max(index);
        self.shared.changed.notify_all();
        loop {
            match std::mem::replace(&mut state.slots[index], Slot::Taken) {
                Slot::Ready(result) => {
                    state.consumed = index + 1;
                    self.shared.changed.notify_all();
                    return match result {
                        Ok(input) => {
                            self.handed_out = Some(item.len);
                            self.fetched += 1;
                            Ok(input)
                        }
                        // Not fetched ahead (too large to be): open it the usual way.
                        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                            drop(state);
                            self.opened += 1;
                            (self.open)(&item)
                        }
                        Err(e) => Err(e),
                    };
                }
                Slot::Taken => return Err(io::Error::other(format!("item {index} was taken twice"))),
                other => {
                    state.slots[index] = other;
                    state = self.shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.shared.state.lock().map(|s| s.peak).unwrap_or(0)
    }

    /// What it did so far.
    pub fn stats(&self) -> ReadAheadStats {
        ReadAheadStats {
            requests: self.shared.config.requests,
            fetched: self.fetched,
            opened: self.opened,
            peak: self.peak(),
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stop = true;
        }
        self.shared.changed.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether `item` is fetched whole ahead of the task (else it is opened).
fn fetched_ahead(item: &Item, config: &ReadAheadConfig) -> bool {
    item.len <= config.memory
}

fn fetch_loop(shared: &Shared, fetch: &Fetch) {
    let window = 2 * shared.config.requests.max(1) as usize;
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if state.stop || state.next >= shared.items.len() {
            return;
        }
        let index = state.next;
        let item = &shared.items[index];
        let whole = fetched_ahead(item, &shared.config);
        let too_far = index >= state.consumed + window;
        let no_room = whole && state.held > 0 && state.held + item.len > shared.config.memory;
        if too_far || no_room {
            state = shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            continue;
        }
        state.next += 1;
        state.slots[index] = Slot::Fetching;
        if whole {
            state.held += item.len;
            state.peak = state.peak.max(state.held);
        }
        drop(state);
        let result: io::Result<Arc<dyn InputSource>> = if whole {
            // A fetch that panics is its item's error, not a slot left
            // `Fetching` for the task to wait on forever.
            let fetched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fetch(item)))
                .unwrap_or_else(|_| Err(io::Error::other(format!("{}: reading it ahead panicked", item.key()))));
            fetched.and_then(|bytes| {
                if bytes.len() as u64 != item.len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: {} bytes were read where {} were listed; it changed since the job was planned",
                            item.key(),
                            bytes.len(),
                            item.len
                        ),
                    ));
                }
                let input = BytesInput::new(item.object.clone(), bytes).at_offset(item.start);
                Ok(Arc::new(input) as Arc<dyn InputSource>)
            })
        } else {
            Err(io::Error::new(io::ErrorKind::Unsupported, "larger than the read-ahead memory"))
        };
        state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if whole && result.is_err() {
            state.held = state.held.saturating_sub(item.len);
        }
        state.slots[index] = Slot::Ready(result);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn item(name: &str, len: u64) -> Item {
        Item { object: name.into(), start: 0, len, whole: true }
    }

    fn read_all(input: &dyn InputSource) -> Vec<u8> {
        let mut buf = vec![0; input.size() as usize];
        let mut at = 0;
        while at < buf.len() {
            at += input.read_at(at as u64, &mut buf[at..]).unwrap();
        }
        buf
    }

    #[test]
    fn items_come_in_order_and_memory_never_passes_the_budget() {
        // Small items around a few huge ones, with a budget of 3 small ones.
        let mut items: Vec<Item> = (0..40).map(|i| item(&format!("s{i}"), 100)).collect();
        for at in [5, 17, 30] {
            items.insert(at, item(&format!("huge{at}"), 1 << 20));
        }
        let config = ReadAheadConfig { requests: 8, memory: 300 };
        // What the fetches hold, counted independently of the read-ahead's own count.
        let in_memory = Arc::new(AtomicU64::new(0));
        let most = Arc::new(AtomicU64::new(0));
        let (held, peak) = (in_memory.clone(), most.clone());
        let fetch: Fetch = Arc::new(move |it: &Item| {
            assert!(!it.object.starts_with("huge"), "a huge item is never fetched ahead");
            let now = held.fetch_add(it.len, Ordering::SeqCst) + it.len;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            Ok(vec![it.object.as_bytes()[1]; it.len as usize])
        });
        let opened = Arc::new(AtomicU64::new(0));
        let count = opened.clone();
        let open: Open = Arc::new(move |it: &Item| {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(BytesInput::new(it.object.clone(), vec![b'H'; 8])) as Arc<dyn InputSource>)
        });
        let mut ra = ReadAhead::new(items.clone(), config, fetch, open);
        for (i, it) in items.iter().enumerate() {
            let input = ra.take(i).unwrap();
            assert_eq!(input.name(), it.object);
            if it.object.starts_with("huge") {
                assert_eq!(read_all(&*input), vec![b'H'; 8]);
            } else {
                assert_eq!(read_all(&*input), vec![it.object.as_bytes()[1]; 100], "{}", it.object);
                // The task is done with it: the next take releases it.
                in_memory.fetch_sub(it.len, Ordering::SeqCst);
            }
        }
        assert_eq!(opened.load(Ordering::SeqCst), 3, "the huge items were opened, not fetched");
        assert!(ra.peak() <= 300, "read-ahead held {} bytes, over its budget of 300", ra.peak());
        assert!(most.load(Ordering::SeqCst) <= 300 + 100, "fetches held {}", most.load(Ordering::SeqCst));
    }

    #[test]
    fn a_failed_fetch_is_that_items_failure_and_a_short_read_says_the_object_changed() {
        let items = vec![item("a", 3), item("gone", 3), item("short", 3), item("b", 3)];
        let fetch: Fetch = Arc::new(|it: &Item| match it.object.as_str() {
            "gone" => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
            "short" => Ok(vec![1]),
            _ => Ok(vec![7; 3]),
        });
        let open: Open = Arc::new(|_: &Item| panic!("nothing is opened"));
        let mut ra = ReadAhead::new(items, ReadAheadConfig { requests: 2, memory: 1 << 20 }, fetch, open);
        assert!(ra.take(0).is_ok());
        assert_eq!(ra.take(1).err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
        let e = ra.take(2).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("1 bytes were read where 3 were listed"), "{e}");
        assert!(ra.take(3).is_ok());
    }

    #[test]
    fn without_read_ahead_every_item_is_opened_as_it_comes() {
        let fetch: Fetch = Arc::new(|_: &Item| panic!("nothing is fetched"));
        let open: Open =
            Arc::new(|it: &Item| Ok(Arc::new(BytesInput::new(it.object.clone(), vec![1])) as Arc<dyn InputSource>));
        let mut ra = ReadAhead::new(vec![item("a", 1)], ReadAheadConfig { requests: 0, memory: 0 }, fetch, open);
        assert_eq!(ra.take(0).unwrap().name(), "a");
    }
}
