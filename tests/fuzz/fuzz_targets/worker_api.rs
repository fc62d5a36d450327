//! The worker API: request bodies decoded as the master decodes them, then
//! applied to a ledger, as a sequence (one request per line: its first byte
//! picks the endpoint). Whatever arrives, nothing panics, a committed shard
//! stays committed, and no shard is committed twice. The workers' decoding
//! of the master's answers runs on the same bytes.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use mayfly_core::api::{
    CommitRequest, FailRequest, HeartbeatReply, HeartbeatRequest, LeaseReply, LeaseRequest, ReleaseRequest, Status,
    decode,
};
use mayfly_core::ledger::{CommittedOutput, Ledger, ShardState};

fuzz_target!(|data: &[u8]| {
    let mut ledger = Ledger::new(4, 3);
    let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut now = 1_000u64;
    for line in data.split(|b| *b == b'\n') {
        let Some((&op, body)) = line.split_first() else { continue };
        now += 50;
        match op % 8 {
            0 => {
                if let Ok(r) = decode::<LeaseRequest>(body) {
                    let expires = now.saturating_add(1000).min(r.credential_expires_at.max(now));
                    let _ = ledger.lease(&r.worker, now, expires);
                }
            }
            1 => {
                if let Ok(r) = decode::<HeartbeatRequest>(body) {
                    let _ = ledger.heartbeat(r.shard, r.token, now + 1000);
                }
            }
            2 => {
                if let Ok(r) = decode::<CommitRequest>(body) {
                    let outputs: Vec<CommittedOutput> = r
                        .outputs
                        .iter()
                        .map(|o| CommittedOutput { key: o.key.clone(), name: o.name.clone(), bytes: o.bytes })
                        .collect();
                    if ledger.commit(r.shard, r.token, outputs).is_ok() {
                        assert!(committed.insert(r.shard, r.token).is_none(), "shard {} committed twice", r.shard);
                    }
                }
            }
            3 => {
                if let Ok(r) = decode::<FailRequest>(body) {
                    let _ = ledger.fail(r.shard, r.token, &r.error, r.retryable);
                }
            }
            4 => {
                if let Ok(r) = decode::<ReleaseRequest>(body) {
                    let _ = ledger.release(r.shard, r.token);
                }
            }
            5 => {
                let _ = ledger.expire(now + 10 * body.len() as u64);
            }
            6 => {
                // What a worker decodes from the master.
                let _ = decode::<LeaseReply>(body);
                let _ = decode::<HeartbeatReply>(body);
            }
            _ => {
                let _ = decode::<Status>(body);
            }
        }
        for shard in committed.keys() {
            assert!(
                matches!(ledger.shards()[*shard as usize].state, ShardState::Committed { .. }),
                "committed shard {shard} changed state"
            );
        }
    }
});
