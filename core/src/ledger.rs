//! The ledger: the state of every shard, leases with fencing tokens, attempts
//! and the retry policy. The master owns it; it is the only place that decides.
//!
//! ```text
//! pending ──lease──► leased(worker, token, expiry, attempt) ──commit──► committed
//!    ▲                   │ expired / failed (retryable, attempts left)
//!    └───────────────────┘ failed (not retryable, or attempts used up) ──► failed
//! ```
//!
//! An attempt that fails on one item names it. The item is *quarantined*
//! (the shard goes on without it, as Hadoop's skip mode does) when its
//! failure is not retryable, when it failed in [`QUARANTINE_AFTER`] attempts,
//! or when its failure would use up the shard's last attempt: the shard goes
//! back to pending without the failure counting, and its next attempt is
//! leased without the item. Once the job's bound on quarantined items
//! (`max_failed_items`) is reached, a failing item is no longer set aside:
//! its attempt fails as any other (retried, then the shard fails), and the
//! error says the bound was reached.
//!
//! A job with a reduce has two stages in one table: the map's shards
//! (`0..map`), then the reduce's partitions (`map..map + R`, see
//! [`Ledger::with_reduce`]). A partition is leased only once every map shard
//! is committed; a map shard failed for good ends the job without its reduce
//! ([`Ledger::is_done`]). A partition's failure is never an item's: its one
//! input is every map output of the partition, so nothing is quarantined.
//!
//! Every lease gets a fresh fencing token (one counter for the whole job, so a
//! token is never reused); a heartbeat, commit, failure or release that does not
//! carry the current token of a leased shard is refused and changes nothing.
//! Durability is the master's business ([`crate::master`]): it journals each
//! decision and writes commit markers; [`Ledger::replay`] rebuilds from them.
//!
//! In `mayfly-core`'s flow (`core/tests/flow.rs` checks it) it must not import `api` or
//! anything above, nor its peers `tls` and `build`; like its crate, it must not import
//! `mayfly-ops` or the binary.

use serde::{Deserialize, Serialize};

use mayfly_model::policy::Millis;

/// An item failing in this many attempts of its shard is quarantined.
pub const QUARANTINE_AFTER: u32 = 2;

/// One output of a committed shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOutput {
    /// Whose output it is (where it goes): an item's key, or the shard's
    /// ([`crate::job::shard_key`]) for an output of the shard as a whole.
    pub key: String,
    /// The output's name as the task gave it.
    pub name: String,
    /// Its length.
    pub bytes: u64,
}

/// Where a shard is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ShardState {
    /// Waiting for a worker.
    Pending,
    /// A worker holds it.
    Leased {
        /// The worker.
        worker: String,
        /// The fencing token of this lease.
        token: u64,
        /// When the lease ends unless renewed.
        expires_at: Millis,
    },
    /// Done; its outputs are visible.
    Committed {
        /// Outputs of its items.
        outputs: Vec<CommittedOutput>,
    },
    /// Given up on.
    Failed {
        /// The last attempt's error.
        error: String,
    },
}

/// One shard's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Its state.
    pub state: ShardState,
    /// Leases granted so far (the current attempt's number when leased).
    pub attempts: u32,
    /// Attempts that failed or expired (count toward `max_attempts`).
    pub failures: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// Items left out of the shard for good, in the order they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quarantined: Vec<Quarantined>,
    /// Attempts that failed on each item not (yet) quarantined.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub item_failures: std::collections::BTreeMap<String, u32>,
}

impl ShardRecord {
    fn pending() -> Self {
        ShardRecord {
            state: ShardState::Pending,
            attempts: 0,
            failures: 0,
            last_error: None,
            quarantined: Vec::new(),
            item_failures: Default::default(),
        }
    }
}

/// An item left out of its shard because it kept failing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The item's key.
    pub key: String,
    /// Its last error.
    pub error: String,
    /// Attempts that failed on it.
    pub attempts: u32,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The shard.
    pub shard: u32,
    /// Its fencing token.
    pub token: u64,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// When it ends unless renewed.
    pub expires_at: Millis,
}

/// Why the ledger refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No such shard.
    #[error("shard {0} does not exist")]
    NoShard(u32),
    /// The token is not the shard's current lease (a stale or replayed request).
    #[error("shard {shard}: token {token} is not the current lease (stale or replayed)")]
    Stale {
        /// The shard.
        shard: u32,
        /// The token presented.
        token: u64,
    },
}

/// A decision, as written to the journal and replayed on resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A lease was granted.
    Lease {
        /// The shard.
        shard: u32,
        /// The worker.
        worker: String,
        /// Its token.
        token: u64,
        /// The attempt number.
        attempt: u32,
    },
    /// An attempt failed or its lease expired.
    AttemptFailed {
        /// The shard.
        shard: u32,
        /// The token.
        token: u64,
        /// Why.
        error: String,
        /// Whether the shard is now failed for good.
        final_failure: bool,
        /// The item the attempt failed on, when it names one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<String>,
        /// Whether that item is now quarantined (the failure then does not
        /// count against the shard).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        quarantined: bool,
    },
    /// The lease was handed back without a failure (a draining worker).
    Released {
        /// The shard.
        shard: u32,
        /// The token.
        token: u64,
    },
    /// The shard was committed (its marker exists).
    Committed {
        /// The shard.
        shard: u32,
        /// The token.
        token: u64,
        /// Its outputs.
        outputs: Vec<CommittedOutput>,
    },
}

/// Shards by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Waiting.
    pub pending: u32,
    /// Held by a worker.
    pub leased: u32,
    /// Done.
    pub committed: u32,
    /// Given up.
    pub failed: u32,
}

/// The shard table.
///
/// Two indexes keep every request O(log n) rather than a scan of all shards:
/// the set of pending shards (the lowest is leased first) and a lower bound
/// on the earliest lease expiry (no scan for expired leases before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    shards: Vec<ShardRecord>,
    next_token: u64,
    max_attempts: u32,
    pending: std::collections::BTreeSet<u32>,
    earliest_expiry: Millis,
    /// Pending shards that may not be leased before a time (their last
    /// attempt could not be recorded: the job's storage failed).
    not_before: std::collections::BTreeMap<u32, Millis>,
    /// How many items may be quarantined in the whole job.
    max_failed_items: u64,
    /// The map stage's shards (`0..map`); the rest are reduce partitions.
    map: u32,
    /// Map shards committed or failed, and failed.
    map_settled: u32,
    map_failed: u32,
    /// Shards of either stage committed or failed for good: the job is done
    /// when it counts them all (kept, not scanned: every lease asks).
    settled: u32,
}

/// Which stage a shard belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// A shard of the map's plan.
    #[default]
    Map,
    /// Reduce partition `partition`.
    Reduce {
        /// The partition, from 0.
        partition: u32,
    },
}

impl Ledger {
    /// A ledger of `shards` pending shards.
    pub fn new(shards: u32, max_attempts: u32) -> Self {
        Ledger {
            shards: vec![ShardRecord::pending(); shards as usize],
            next_token: 1,
            max_attempts: max_attempts.max(1),
            pending: (0..shards).collect(),
            earliest_expiry: Millis::MAX,
            not_before: Default::default(),
            max_failed_items: u64::MAX,
            map: shards,
            map_settled: 0,
            map_failed: 0,
            settled: 0,
        }
    }

    /// Adds a reduce stage of `partitions` shards after the map's, leased once
    /// the map stage is committed.
    pub fn with_reduce(mut self, partitions: u32) -> Self {
        let first = self.shards.len() as u32;
        self.shards.extend(std::iter::repeat_n(ShardRecord::pending(), partitions as usize));
        self.pending.extend(first..first + partitions);
        self
    }

    /// The stage of `shard`.
    pub fn stage(&self, shard: u32) -> Stage {
        if shard < self.map { Stage::Map } else { Stage::Reduce { partition: shard - self.map } }
    }

    /// The map stage's shards.
    pub fn map_shards(&self) -> u32 {
        self.map
    }

    /// Pending shards a worker could be leased now or once a retry's delay
    /// passes: the map's, or the reduce's once the map is committed.
    pub fn leasable(&self) -> u32 {
        if self.map_committed() { self.pending.len() as u32 } else { self.pending.range(..self.map).count() as u32 }
    }

    /// Whether the reduce's partitions wait for map shards still running
    /// (workers asking for work now will have some).
    pub fn reduce_waits(&self) -> bool {
        !self.map_committed() && self.map_failed == 0 && (self.map as usize) < self.shards.len()
    }

    /// Whether every map shard is committed (the reduce may start).
    pub fn map_committed(&self) -> bool {
        self.map_settled == self.map && self.map_failed == 0
    }

    /// Bounds the items that may be quarantined in the whole job.
    pub fn with_max_failed_items(mut self, max: u64) -> Self {
        self.max_failed_items = max;
        self
    }

    /// Every item quarantined so far, with its shard.
    pub fn quarantined(&self) -> impl Iterator<Item = (u32, &Quarantined)> {
        self.shards.iter().enumerate().flat_map(|(i, s)| s.quarantined.iter().map(move |q| (i as u32, q)))
    }

    /// Rebuilds the indexes from the records (after a replay).
    fn reindex(&mut self) {
        let settled = |s: &&ShardRecord| matches!(s.state, ShardState::Committed { .. } | ShardState::Failed { .. });
        let map = &self.shards[..self.map as usize];
        self.map_settled = map.iter().filter(settled).count() as u32;
        self.map_failed = map.iter().filter(|s| matches!(s.state, ShardState::Failed { .. })).count() as u32;
        self.settled = self.shards.iter().filter(settled).count() as u32;
        self.pending =
            (0..self.shards.len() as u32).filter(|&i| self.shards[i as usize].state == ShardState::Pending).collect();
        self.earliest_expiry = self
            .shards
            .iter()
            .filter_map(|s| match s.state {
                ShardState::Leased { expires_at, .. } => Some(expires_at),
                _ => None,
            })
            .min()
            .unwrap_or(Millis::MAX);
    }

    /// Sets a shard's state, keeping the pending index true.
    fn set_state(&mut self, shard: u32, state: ShardState) {
        if let Some(r) = self.shards.get(shard as usize) {
            let settled = |s: &ShardState| matches!(s, ShardState::Committed { .. } | ShardState::Failed { .. });
            let failed = |s: &ShardState| matches!(s, ShardState::Failed { .. });
            let now_settled = u32::from(settled(&state));
            let was_settled = u32::from(settled(&r.state));
            self.settled = self.settled + now_settled - was_settled;
            if shard < self.map {
                self.map_settled = self.map_settled + now_settled - was_settled;
                self.map_failed = self.map_failed + u32::from(failed(&state)) - u32::from(failed(&r.state));
            }
        }
        if state == ShardState::Pending {
            self.pending.insert(shard);
        } else {
            self.pending.remove(&shard);
        }
        if let ShardState::Leased { expires_at, .. } = state {
            self.earliest_expiry = self.earliest_expiry.min(expires_at);
        }
        if let Some(r) = self.shards.get_mut(shard as usize) {
            r.state = state;
        }
    }

    /// The records, by shard id.
    pub fn shards(&self) -> &[ShardRecord] {
        &self.shards
    }

    /// Shards by state, of both stages.
    pub fn counts(&self) -> Counts {
        Self::count(&self.shards)
    }

    /// The map stage's shards by state.
    pub fn map_counts(&self) -> Counts {
        Self::count(&self.shards[..self.map as usize])
    }

    /// The reduce stage's partitions by state, if it has any.
    pub fn reduce_counts(&self) -> Option<Counts> {
        let reduce = &self.shards[self.map as usize..];
        (!reduce.is_empty()).then(|| Self::count(reduce))
    }

    fn count(shards: &[ShardRecord]) -> Counts {
        let mut c = Counts::default();
        for s in shards {
            match s.state {
                ShardState::Pending => c.pending += 1,
                ShardState::Leased { .. } => c.leased += 1,
                ShardState::Committed { .. } => c.committed += 1,
                ShardState::Failed { .. } => c.failed += 1,
            }
        }
        c
    }

    /// Whether every shard is committed or failed; or, with a reduce stage,
    /// every map shard is and one failed (the reduce will not run).
    pub fn is_done(&self) -> bool {
        // No partition was leased once a map shard failed: they wait for a
        // committed map stage.
        (self.map_failed > 0 && self.map_settled == self.map) || self.settled as usize == self.shards.len()
    }

    /// Leases the lowest pending shard that may be leased at `now` to
    /// `worker` until `expires_at`.
    pub fn lease(&mut self, worker: &str, now: Millis, expires_at: Millis) -> Option<(Lease, Event)> {
        let shard = if self.not_before.is_empty() {
            *self.pending.first()?
        } else {
            self.not_before.retain(|_, at| *at > now);
            *self.pending.iter().find(|s| !self.not_before.contains_key(s))?
        };
        if shard >= self.map && !self.map_committed() {
            // The reduce waits for the whole map stage.
            return None;
        }
        self.not_before.remove(&shard);
        let token = self.next_token;
        self.next_token += 1;
        self.shards[shard as usize].attempts += 1;
        let attempt = self.shards[shard as usize].attempts;
        self.set_state(shard, ShardState::Leased { worker: worker.to_owned(), token, expires_at });
        let lease = Lease { shard, token, attempt, expires_at };
        Some((lease, Event::Lease { shard, worker: worker.to_owned(), token, attempt }))
    }

    fn current(&mut self, shard: u32, token: u64) -> Result<&mut ShardRecord, Refused> {
        let record = self.shards.get_mut(shard as usize).ok_or(Refused::NoShard(shard))?;
        match record.state {
            ShardState::Leased { token: t, .. } if t == token => Ok(record),
            _ => Err(Refused::Stale { shard, token }),
        }
    }

    /// Checks that `token` is the current lease of `shard`.
    pub fn check(&mut self, shard: u32, token: u64) -> Result<(), Refused> {
        self.current(shard, token).map(|_| ())
    }

    /// Extends a lease.
    pub fn heartbeat(&mut self, shard: u32, token: u64, expires_at: Millis) -> Result<(), Refused> {
        if let ShardState::Leased { expires_at: e, .. } = &mut self.current(shard, token)?.state {
            *e = expires_at;
        }
        self.earliest_expiry = self.earliest_expiry.min(expires_at);
        Ok(())
    }

    /// Records a commit (after the marker was written).
    pub fn commit(&mut self, shard: u32, token: u64, outputs: Vec<CommittedOutput>) -> Result<Event, Refused> {
        self.current(shard, token)?;
        self.set_state(shard, ShardState::Committed { outputs: outputs.clone() });
        Ok(Event::Committed { shard, token, outputs })
    }

    /// Records a commit whose marker was just created by the token's holder:
    /// the marker is the truth, so the shard is committed even if its lease
    /// expired while the marker was being written (a later holder's own marker
    /// will then be refused). The marker's quarantined items are the shard's:
    /// an item quarantined after the marker's attempt was leased was
    /// committed by it, not left out.
    pub fn commit_marked(
        &mut self,
        shard: u32,
        token: u64,
        outputs: Vec<CommittedOutput>,
        quarantined: Vec<Quarantined>,
    ) -> Result<Event, Refused> {
        let record = self.shards.get_mut(shard as usize).ok_or(Refused::NoShard(shard))?;
        record.quarantined = quarantined;
        record.item_failures.clear();
        self.set_state(shard, ShardState::Committed { outputs: outputs.clone() });
        Ok(Event::Committed { shard, token, outputs })
    }

    /// Records a failed attempt: back to pending, or failed for good when the
    /// error is not retryable or the attempts are used up.
    pub fn fail(&mut self, shard: u32, token: u64, error: &str, retryable: bool) -> Result<Event, Refused> {
        let max = self.max_attempts;
        let record = self.current(shard, token)?;
        record.failures += 1;
        record.last_error = Some(error.to_owned());
        let final_failure = !retryable || record.failures >= max;
        let state = if final_failure { ShardState::Failed { error: error.to_owned() } } else { ShardState::Pending };
        self.set_state(shard, state);
        Ok(Event::AttemptFailed {
            shard,
            token,
            error: error.to_owned(),
            final_failure,
            item: None,
            quarantined: false,
        })
    }

    /// Records an attempt that failed on one item. The item is quarantined
    /// (the shard goes back to pending without it, the failure not counted)
    /// when the failure is not retryable, when the item failed in
    /// [`QUARANTINE_AFTER`] attempts, or when the failure would use up the
    /// shard's attempts, unless `max_failed_items` items already are: then
    /// this is [`Ledger::fail`], as without quarantine.
    pub fn fail_item(
        &mut self,
        shard: u32,
        token: u64,
        error: &str,
        retryable: bool,
        item: &str,
    ) -> Result<Event, Refused> {
        if shard >= self.map {
            // A partition has one input, all of its map outputs: no item to set aside.
            return self.fail(shard, token, error, retryable);
        }
        let (max, bound) = (self.max_attempts, self.max_failed_items);
        let total = self.quarantined().count() as u64;
        let record = self.current(shard, token)?;
        let failed_on_it = record.item_failures.get(item).copied().unwrap_or(0) + 1;
        let known = record.quarantined.iter().any(|q| q.key == item);
        let wants = !retryable || failed_on_it >= QUARANTINE_AFTER || record.failures + 1 >= max;
        if known || !wants || total >= bound {
            record.item_failures.insert(item.to_owned(), failed_on_it);
            let error = if wants && !known {
                format!("{error} (not quarantined: {total} items already are, the job's max_failed_items)")
            } else {
                error.to_owned()
            };
            let mut event = self.fail(shard, token, &error, retryable)?;
            if let Event::AttemptFailed { item: i, .. } = &mut event {
                *i = Some(item.to_owned());
            }
            return Ok(event);
        }
        record.item_failures.remove(item);
        record.last_error = Some(error.to_owned());
        record.quarantined.push(Quarantined { key: item.to_owned(), error: error.to_owned(), attempts: failed_on_it });
        self.set_state(shard, ShardState::Pending);
        Ok(Event::AttemptFailed {
            shard,
            token,
            error: error.to_owned(),
            final_failure: false,
            item: Some(item.to_owned()),
            quarantined: true,
        })
    }

    /// Keeps `shard` from being leased again before `at` (its attempt's
    /// commit could not be recorded; retrying at once would fail the same way).
    pub fn delay(&mut self, shard: u32, at: Millis) {
        self.not_before.insert(shard, at);
    }

    /// Hands a lease back without counting a failure.
    pub fn release(&mut self, shard: u32, token: u64) -> Result<Event, Refused> {
        self.current(shard, token)?;
        self.set_state(shard, ShardState::Pending);
        Ok(Event::Released { shard, token })
    }

    /// Expires every lease past its expiry at `now`: each counts as a failed
    /// attempt (its worker was lost). Returns the events, with the old tokens.
    pub fn expire(&mut self, now: Millis) -> Vec<Event> {
        if now < self.earliest_expiry {
            return Vec::new();
        }
        // Scan, and learn the new earliest expiry on the way.
        self.earliest_expiry = Millis::MAX;
        for s in &self.shards {
            if let ShardState::Leased { expires_at, .. } = s.state
                && expires_at > now
            {
                self.earliest_expiry = self.earliest_expiry.min(expires_at);
            }
        }
        let expired: Vec<(u32, u64, String)> = self
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.state {
                ShardState::Leased { token, expires_at, worker } if *expires_at <= now => {
                    Some((i as u32, *token, worker.clone()))
                }
                _ => None,
            })
            .collect();
        expired
            .into_iter()
            .filter_map(|(shard, token, worker)| {
                self.fail(shard, token, &format!("lease expired: worker {worker} stopped heartbeating"), true).ok()
            })
            .collect()
    }

    /// Makes every future token at least `floor`: a restarted master starts
    /// above any token its predecessor may have issued without journaling.
    pub fn raise_token_floor(&mut self, floor: u64) {
        self.next_token = self.next_token.max(floor);
    }

    /// The live lease of `shard`, if any.
    pub fn lease_of(&self, shard: u32) -> Option<(String, u64, Millis)> {
        match &self.shards.get(shard as usize)?.state {
            ShardState::Leased { worker, token, expires_at } => Some((worker.clone(), *token, *expires_at)),
            _ => None,
        }
    }

    /// Rebuilds a ledger from its journal and the commit markers (the truth for
    /// what is committed). A lease that was live when the master stopped is
    /// returned to pending: its worker may be alive, but its token is void, so
    /// its commit will be refused and the shard redone once.
    pub fn replay(
        shards: u32,
        partitions: u32,
        max_attempts: u32,
        max_failed_items: u64,
        journal: &[Event],
        markers: &[(u32, Vec<CommittedOutput>, Vec<Quarantined>)],
    ) -> Self {
        let mut ledger =
            Ledger::new(shards, max_attempts).with_max_failed_items(max_failed_items).with_reduce(partitions);
        for event in journal {
            match event {
                Event::Lease { shard, worker, token, attempt } => {
                    ledger.next_token = ledger.next_token.max(token + 1);
                    if let Some(r) = ledger.shards.get_mut(*shard as usize) {
                        r.attempts = *attempt;
                        r.state = ShardState::Leased { worker: worker.clone(), token: *token, expires_at: 0 };
                    }
                }
                Event::AttemptFailed { shard, error, final_failure, item, quarantined, .. } => {
                    if let Some(r) = ledger.shards.get_mut(*shard as usize) {
                        r.last_error = Some(error.clone());
                        match (item, quarantined) {
                            (Some(key), true) => {
                                let attempts = r.item_failures.remove(key).unwrap_or(0) + 1;
                                r.quarantined.push(Quarantined { key: key.clone(), error: error.clone(), attempts });
                            }
                            (Some(key), false) => {
                                *r.item_failures.entry(key.clone()).or_insert(0) += 1;
                                r.failures += 1;
                            }
                            (None, _) => r.failures += 1,
                        }
                        r.state = if *final_failure {
                            ShardState::Failed { error: error.clone() }
                        } else {
                            ShardState::Pending
                        };
                    }
                }

                Event::Released { shard, .. } => {
                    if let Some(r) = ledger.shards.get_mut(*shard as usize) {
                        r.state = ShardState::Pending;
                    }
                }
                Event::Committed { shard, outputs, .. } => {
                    if let Some(r) = ledger.shards.get_mut(*shard as usize) {
                        r.state = ShardState::Committed { outputs: outputs.clone() };
                    }
                }
            }
        }
        for (shard, outputs, quarantined) in markers {
            if let Some(r) = ledger.shards.get_mut(*shard as usize) {
                r.state = ShardState::Committed { outputs: outputs.clone() };
                // The marker is the truth for what its shard left out too.
                r.quarantined = quarantined.clone();
            }
        }
        for r in &mut ledger.shards {
            if matches!(r.state, ShardState::Leased { .. }) {
                r.state = ShardState::Pending;
            }
        }
        ledger.reindex();
        ledger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(key: &str) -> Vec<CommittedOutput> {
        vec![CommittedOutput { key: key.into(), name: "counts.tsv".into(), bytes: 3 }]
    }

    #[test]
    fn the_indexes_agree_with_the_records_under_random_operations() {
        // 50 map shards and 4 partitions: the counters of both stages.
        let mut l = Ledger::new(50, 3).with_reduce(4);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 0;
        let mut live: Vec<Lease> = Vec::new();
        for _ in 0..5000 {
            now += next() % 5;
            match next() % 6 {
                0 | 1 => {
                    if let Some((lease, _)) = l.lease("w", now, now + next() % 20) {
                        live.push(lease);
                    }
                }
                2 if !live.is_empty() => {
                    let lease = live.swap_remove((next() % live.len() as u64) as usize);
                    let _ = l.commit(lease.shard, lease.token, out("x"));
                }
                3 if !live.is_empty() => {
                    let lease = live.swap_remove((next() % live.len() as u64) as usize);
                    let _ = l.fail(lease.shard, lease.token, "e", next() % 2 == 0);
                }
                4 if !live.is_empty() => {
                    let lease = live[(next() % live.len() as u64) as usize];
                    let _ = l.heartbeat(lease.shard, lease.token, now + 10);
                }
                _ => {
                    l.expire(now);
                }
            }
            let scan: std::collections::BTreeSet<u32> =
                (0..54).filter(|&i| l.shards()[i as usize].state == ShardState::Pending).collect();
            assert_eq!(l.pending, scan);
            // The map stage's counters, kept as states change, agree with a recount.
            let mut recounted = l.clone();
            recounted.reindex();
            assert_eq!(
                (l.map_settled, l.map_failed, l.settled),
                (recounted.map_settled, recounted.map_failed, recounted.settled)
            );
            let all_settled =
                l.shards().iter().all(|s| matches!(s.state, ShardState::Committed { .. } | ShardState::Failed { .. }));
            assert_eq!(l.is_done(), all_settled || (l.map_failed > 0 && l.map_settled == l.map));
            let earliest = l
                .shards()
                .iter()
                .filter_map(|s| match s.state {
                    ShardState::Leased { expires_at, .. } => Some(expires_at),
                    _ => None,
                })
                .min();
            if let Some(e) = earliest {
                assert!(l.earliest_expiry <= e, "the bound must never be above a live lease's expiry");
            }
        }
    }

    #[test]
    fn a_delayed_shard_waits_and_the_others_go_first() {
        let mut l = Ledger::new(2, 3);
        let (a, _) = l.lease("w1", 0, 100).unwrap();
        l.delay(a.shard, 50);
        l.release(a.shard, a.token).unwrap();
        assert_eq!(l.shards()[0].failures, 0, "a release uses no attempt");
        let (b, _) = l.lease("w2", 10, 100).unwrap();
        assert_eq!(b.shard, 1, "shard 0 waits until 50");
        assert!(l.lease("w3", 49, 100).is_none(), "nothing may be leased before 50");
        let (c, _) = l.lease("w3", 50, 100).unwrap();
        assert_eq!((c.shard, c.attempt), (0, 2));
    }

    #[test]
    fn lease_commit_and_fencing() {
        let mut l = Ledger::new(2, 3);
        let (a, _) = l.lease("w1", 0, 100).unwrap();
        let (b, _) = l.lease("w2", 0, 100).unwrap();
        assert_eq!((a.shard, b.shard), (0, 1));
        assert_ne!(a.token, b.token);
        assert!(l.lease("w3", 0, 100).is_none(), "nothing pending");
        assert_eq!(l.commit(0, b.token, out("x")), Err(Refused::Stale { shard: 0, token: b.token }));
        l.commit(0, a.token, out("a")).unwrap();
        // A replayed commit is refused and changes nothing.
        assert!(l.commit(0, a.token, out("again")).is_err());
        assert_eq!(l.shards()[0].state, ShardState::Committed { outputs: out("a") });
        assert_eq!(l.counts(), Counts { pending: 0, leased: 1, committed: 1, failed: 0 });
        assert!(!l.is_done());
        l.commit(1, b.token, out("b")).unwrap();
        assert!(l.is_done());
    }

    #[test]
    fn an_expired_lease_returns_the_shard_and_voids_the_token() {
        let mut l = Ledger::new(1, 3);
        let (a, _) = l.lease("w1", 0, 100).unwrap();
        l.heartbeat(0, a.token, 200).unwrap();
        assert!(l.expire(199).is_empty());
        assert_eq!(l.expire(200).len(), 1);
        assert_eq!(l.shards()[0].state, ShardState::Pending);
        let (b, _) = l.lease("w2", 0, 300).unwrap();
        assert_eq!(b.attempt, 2);
        // The zombie's heartbeat and commit are refused.
        assert!(l.heartbeat(0, a.token, 999).is_err());
        assert!(l.commit(0, a.token, out("zombie")).is_err());
        l.commit(0, b.token, out("b")).unwrap();
    }

    #[test]
    fn retries_until_max_attempts_then_failed_with_the_last_error() {
        let mut l = Ledger::new(1, 2);
        let (a, _) = l.lease("w", 0, 10).unwrap();
        l.fail(0, a.token, "first", true).unwrap();
        let (b, _) = l.lease("w", 0, 10).unwrap();
        let ev = l.fail(0, b.token, "second", true).unwrap();
        assert!(matches!(ev, Event::AttemptFailed { final_failure: true, .. }));
        assert_eq!(l.shards()[0].state, ShardState::Failed { error: "second".into() });
        assert!(l.is_done());
        // Not retryable: failed at once.
        let mut l = Ledger::new(1, 5);
        let (a, _) = l.lease("w", 0, 10).unwrap();
        l.fail(0, a.token, "bad data", false).unwrap();
        assert_eq!(l.counts().failed, 1);
    }

    #[test]
    fn release_does_not_count_as_a_failure() {
        let mut l = Ledger::new(1, 1);
        let (a, _) = l.lease("w", 0, 10).unwrap();
        l.release(0, a.token).unwrap();
        let (b, _) = l.lease("w", 0, 10).unwrap();
        assert_eq!(b.attempt, 2);
        assert_eq!(l.shards()[0].failures, 0);
    }

    #[test]
    fn replay_rebuilds_from_journal_and_markers_and_voids_live_leases() {
        let mut l = Ledger::new(3, 3);
        let mut journal = Vec::new();
        let (a, e) = l.lease("w1", 0, 10).unwrap();
        journal.push(e);
        let (b, e) = l.lease("w2", 0, 10).unwrap();
        journal.push(e);
        journal.push(l.fail(b.shard, b.token, "trap", true).unwrap());
        let (c, e) = l.lease("w2", 0, 10).unwrap();
        journal.push(e);
        // Shard 0 committed per its marker, though its journal line was lost.
        let replayed = Ledger::replay(3, 0, 3, u64::MAX, &journal, &[(a.shard, out("a"), vec![])]);
        assert_eq!(replayed.shards()[0].state, ShardState::Committed { outputs: out("a") });
        assert_eq!(replayed.shards()[1].state, ShardState::Pending, "a live lease is void after a restart");
        assert_eq!(replayed.shards()[1].failures, 1);
        assert_eq!(replayed.shards()[2].state, ShardState::Pending);
        // New tokens never collide with old ones.
        let mut replayed = replayed;
        let (d, _) = replayed.lease("w3", 0, 10).unwrap();
        assert!(d.token > c.token);
    }

    #[test]
    fn an_item_that_fails_for_good_is_quarantined_and_the_shard_goes_on_without_it() {
        let mut l = Ledger::new(1, 3);
        let (a, _) = l.lease("w", 0, 10).unwrap();
        let ev = l.fail_item(0, a.token, "bad.csv: not a csv", false, "bad.csv").unwrap();
        assert!(matches!(ev, Event::AttemptFailed { quarantined: true, final_failure: false, .. }), "{ev:?}");
        let r = &l.shards()[0];
        assert_eq!(r.state, ShardState::Pending);
        assert_eq!(r.failures, 0, "a quarantine does not use up an attempt");
        assert_eq!(
            r.quarantined,
            vec![Quarantined { key: "bad.csv".into(), error: "bad.csv: not a csv".into(), attempts: 1 }]
        );
        let (b, _) = l.lease("w", 0, 10).unwrap();
        l.commit(0, b.token, out("good.csv")).unwrap();
        assert_eq!(l.quarantined().map(|(s, q)| (s, q.key.as_str())).collect::<Vec<_>>(), vec![(0, "bad.csv")]);
    }

    #[test]
    fn a_trap_is_retried_once_then_its_item_is_quarantined() {
        let mut l = Ledger::new(1, 5);
        let (a, _) = l.lease("w", 0, 10).unwrap();
        let ev = l.fail_item(0, a.token, "trapped", true, "x").unwrap();
        assert!(matches!(ev, Event::AttemptFailed { quarantined: false, final_failure: false, .. }), "{ev:?}");
        assert_eq!(l.shards()[0].failures, 1);
        let (b, _) = l.lease("w", 0, 10).unwrap();
        let ev = l.fail_item(0, b.token, "trapped", true, "x").unwrap();
        assert!(matches!(ev, Event::AttemptFailed { quarantined: true, .. }), "{ev:?}");
        assert_eq!(l.shards()[0].quarantined[0].attempts, QUARANTINE_AFTER);
        // The last attempt's failure quarantines rather than failing the shard.
        let mut l = Ledger::new(1, 1);
        let (a, _) = l.lease("w", 0, 10).unwrap();
        let ev = l.fail_item(0, a.token, "timed out", true, "slow").unwrap();
        assert!(matches!(ev, Event::AttemptFailed { quarantined: true, .. }), "{ev:?}");
    }

    #[test]
    fn past_max_failed_items_an_item_fails_its_shard_as_without_quarantine() {
        let mut l = Ledger::new(2, 3).with_max_failed_items(1);
        let (a, _) = l.lease("w", 0, 10).unwrap();
        let (b, _) = l.lease("w", 0, 10).unwrap();
        l.fail_item(a.shard, a.token, "bad", false, "one").unwrap();
        let ev = l.fail_item(b.shard, b.token, "bad too", false, "two").unwrap();
        match ev {
            Event::AttemptFailed { final_failure: true, quarantined: false, error, .. } => {
                assert!(error.contains("not quarantined: 1 items already are"), "{error}")
            }
            other => panic!("expected a final failure, got {other:?}"),
        }
        assert!(matches!(l.shards()[b.shard as usize].state, ShardState::Failed { .. }));
        assert_eq!(l.quarantined().count(), 1);
    }

    #[test]
    fn replay_rebuilds_quarantined_items_from_the_journal_and_the_markers() {
        let mut l = Ledger::new(2, 3);
        let (a, ev) = l.lease("w", 0, 10).unwrap();
        let mut journal = vec![ev];
        journal.push(l.fail_item(a.shard, a.token, "trapped", true, "t").unwrap());
        let (b, ev) = l.lease("w", 0, 10).unwrap();
        journal.push(ev);
        journal.push(l.fail_item(b.shard, b.token, "trapped", true, "t").unwrap());
        let marker_q = vec![Quarantined { key: "m".into(), error: "e".into(), attempts: 1 }];
        let replayed = Ledger::replay(2, 0, 3, u64::MAX, &journal, &[(1, out("k"), marker_q.clone())]);
        assert_eq!(replayed.shards()[0].quarantined.iter().map(|q| q.key.as_str()).collect::<Vec<_>>(), ["t"]);
        assert_eq!(replayed.shards()[0].quarantined[0].attempts, 2);
        assert_eq!(replayed.shards()[0].failures, 1);
        assert_eq!(replayed.shards()[1].quarantined, marker_q);
        // The journal line says so for old and new readers alike.
        let line = serde_json::to_string(&journal[3]).unwrap();
        assert!(line.contains("\"quarantined\":true") && line.contains("\"item\":\"t\""), "{line}");
        let old: Event =
            serde_json::from_str(r#"{"event":"attempt_failed","shard":0,"token":1,"error":"e","final_failure":false}"#)
                .unwrap();
        assert!(matches!(old, Event::AttemptFailed { item: None, quarantined: false, .. }));
    }

    #[test]
    fn a_marker_adopted_late_says_what_its_shard_left_out() {
        // Attempt 1's commit was decided, then its lease expired and attempt 2
        // quarantined an item attempt 1 had processed; attempt 1's marker wins.
        let mut l = Ledger::new(1, 3);
        let (a, _) = l.lease("w1", 0, 10).unwrap();
        l.expire(20);
        let (b, _) = l.lease("w2", 20, 30).unwrap();
        l.fail_item(0, b.token, "bad", false, "x").unwrap();
        assert_eq!(l.quarantined().count(), 1);
        l.commit_marked(0, a.token, out("x"), Vec::new()).unwrap();
        assert_eq!(l.quarantined().count(), 0, "x was committed by the marker's attempt, not left out");
    }

    #[test]
    fn reduce_partitions_wait_for_the_whole_map_stage_and_never_quarantine() {
        let mut l = Ledger::new(2, 3).with_reduce(3);
        assert_eq!((l.shards().len(), l.map_shards()), (5, 2));
        assert_eq!((l.stage(1), l.stage(3)), (Stage::Map, Stage::Reduce { partition: 1 }));
        let (a, _) = l.lease("w", 0, 100).unwrap();
        let (b, _) = l.lease("w", 0, 100).unwrap();
        assert_eq!((a.shard, b.shard), (0, 1));
        assert!(l.lease("w", 0, 100).is_none(), "no partition while map shards are leased");
        l.commit(0, a.token, out("a")).unwrap();
        // A retried map shard keeps the reduce waiting.
        l.fail(1, b.token, "flaky", true).unwrap();
        let (b2, _) = l.lease("w", 1, 100).unwrap();
        assert_eq!(b2.shard, 1);
        assert!(l.lease("w", 1, 100).is_none());
        assert!(!l.map_committed() && !l.is_done());
        l.commit(1, b2.token, out("b")).unwrap();
        assert!(l.map_committed());
        let leases: Vec<Lease> = (0..3).map(|_| l.lease("w", 2, 100).unwrap().0).collect();
        assert_eq!(leases.iter().map(|l| l.shard).collect::<Vec<_>>(), [2, 3, 4]);
        // A partition's failure names no item to set aside: it is the attempt's.
        let event = l.fail_item(2, leases[0].token, "bad line", false, "map outputs").unwrap();
        assert!(matches!(event, Event::AttemptFailed { final_failure: true, quarantined: false, .. }));
        assert_eq!(l.quarantined().count(), 0);
        l.commit(3, leases[1].token, out("r1")).unwrap();
        assert!(!l.is_done());
        l.commit(4, leases[2].token, out("r2")).unwrap();
        assert!(l.is_done());
        assert_eq!(l.counts(), Counts { pending: 0, leased: 0, committed: 4, failed: 1 });
    }

    #[test]
    fn a_failed_map_shard_ends_the_job_without_its_reduce_and_a_replay_agrees() {
        let mut l = Ledger::new(2, 1).with_reduce(2);
        let mut journal = Vec::new();
        let (a, e) = l.lease("w", 0, 100).unwrap();
        journal.push(e);
        let (b, e) = l.lease("w", 0, 100).unwrap();
        journal.push(e);
        journal.push(l.fail(0, a.token, "broken", false).unwrap());
        assert!(!l.is_done(), "shard 1 still runs");
        journal.push(l.commit(1, b.token, out("b")).unwrap());
        assert!(l.is_done() && !l.map_committed());
        assert!(l.lease("w", 1, 100).is_none(), "the reduce never starts");
        let mut replayed = Ledger::replay(2, 2, 1, u64::MAX, &journal, &[]);
        assert_eq!(replayed.shards(), l.shards());
        assert!(replayed.is_done() && replayed.lease("w", 1, 100).is_none());
        // Replayed with the map committed, the partitions are leasable again.
        let mut l = Ledger::new(1, 3).with_reduce(1);
        let (a, e) = l.lease("w", 0, 100).unwrap();
        let journal = vec![e, l.commit(0, a.token, out("a")).unwrap()];
        let mut replayed = Ledger::replay(1, 1, 3, u64::MAX, &journal, &[(0, out("a"), vec![])]);
        assert_eq!(replayed.lease("w", 1, 100).map(|(l, _)| l.shard), Some(1));
    }
}
