//! The conntrack map read as flows: each original entry joined with its
//! reply entry, with the flow's state and remaining lifetime. Shared by the
//! inspection CLI and the garbage collector so both agree on expiry.

use std::collections::HashMap as StdHashMap;

use super::batch;
use anyhow::{Context as _, Result};
use aya::maps::{HashMap, IterableMap as _, MapData};
use dataplane_common::{
    conntrack::{Answers, FlowState, IMPORTED, Timeouts, flow_state},
    flow::{Direction, FlowEntry, FlowKey},
};

pub type ConntrackMap = HashMap<MapData, FlowKey, FlowEntry>;

/// One flow: the original entry and, normally, its reply entry.
#[derive(Clone, Debug)]
pub struct FlowView {
    pub key: FlowKey,
    pub original: FlowEntry,
    pub reply_key: FlowKey,
    pub reply: Option<FlowEntry>,
}

impl FlowView {
    pub fn state(&self) -> FlowState {
        let reply = self.reply.unwrap_or_default();
        let answers = if reply.packets == 0 {
            Answers::None
        } else if self.original.last_seen_ns > reply.created_ns {
            // The reply entry's creation time is its first answer's.
            Answers::Continued
        } else {
            Answers::Replied
        };
        flow_state(self.key.proto, self.original.state, reply.state, answers)
    }

    /// Imported from nf_conntrack by a takeover (and not restarted since).
    pub fn imported(&self) -> bool {
        self.original.state & IMPORTED != 0
    }

    /// Last packet in either direction (bpf_ktime_get_ns clock).
    pub fn last_seen_ns(&self) -> u64 {
        self.reply.map_or(self.original.last_seen_ns, |r| {
            r.last_seen_ns.max(self.original.last_seen_ns)
        })
    }

    /// Nanoseconds left before the flow expires (0: expired).
    pub fn remaining_ns(&self, timeouts: &Timeouts, now_ns: u64) -> u64 {
        let timeout_ns =
            u64::from(timeouts.for_state(self.key.proto, self.state())) * 1_000_000_000;
        (self.last_seen_ns() + timeout_ns).saturating_sub(now_ns)
    }
}

/// Everything in the table: the flows, and reply entries without an
/// original (transient while a flow is being created or removed).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub flows: Vec<FlowView>,
    pub orphan_replies: Vec<(FlowKey, FlowEntry)>,
    pub entries: usize,
}

/// Reads the whole table once (one pass of key iteration).
pub fn snapshot(table: &ConntrackMap) -> Result<Snapshot> {
    let mut originals = Vec::new();
    let mut replies = StdHashMap::new();
    for (key, entry) in read_entries(table)? {
        if entry.direction == Direction::Original as u8 {
            originals.push((key, entry));
        } else {
            replies.insert(key, entry);
        }
    }
    let entries = originals.len() + replies.len();
    let flows = originals
        .into_iter()
        .map(|(key, original)| {
            let reply_key = key.reply_after_snat(original.rewrite_addr, original.rewrite_port);
            let reply = replies.remove(&reply_key);
            FlowView {
                key,
                original,
                reply_key,
                reply,
            }
        })
        .collect();
    Ok(Snapshot {
        flows,
        orphan_replies: replies.into_iter().collect(),
        entries,
    })
}

/// Every entry: batched where the kernel can, else key by key.
fn read_entries(table: &ConntrackMap) -> Result<Vec<(FlowKey, FlowEntry)>> {
    match batch::lookup_all(table.map()) {
        Ok(entries) => Ok(entries),
        Err(e) if batch::is_unsupported(&e) => {
            let mut entries = Vec::new();
            for item in table.iter() {
                match item {
                    Ok(kv) => entries.push(kv),
                    // Removed between key and value lookup: skip it.
                    Err(aya::maps::MapError::KeyNotFound) => continue,
                    Err(e) => return Err(e).context("reading the conntrack map"),
                }
            }
            Ok(entries)
        }
        Err(e) => Err(e).context("reading the conntrack map"),
    }
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    })
}
