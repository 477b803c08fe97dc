//! Who gets a new flow when the table is contended, as nf_conntrack
//! decides it: a pod may hold at most `--ct-max-per-pod` flows, so one pod
//! opening flows to everywhere cannot lock the others out; and a full table
//! drops an unreplied flow to make room (early drop), never an answered one.
//!
//! Unlike nf_conntrack, the packet that found the table full is dropped and
//! the room goes to the next new flow (its sender's retry, typically): the
//! eviction runs at the end of `uplink_egress`, where the verifier checks it
//! once, rather than inside the port search, where it would check it on
//! every path through the NAT (past its million-instruction limit).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use dataplane_common::{
    config::NatConfig, counters::Counter, flow::FlowKey, maps::RECENT_FLOWS_ENTRIES,
};

use crate::{
    conntrack::{self, FlowError},
    counters::count,
    maps::{CONNTRACK, POD_FLOWS, RECENT_CURSOR, RECENT_FLOWS},
};

/// Random slots of [`RECENT_FLOWS`] looked at for an unreplied flow.
const EARLY_DROP_TRIES: u32 = 8;
/// [`RECENT_FLOWS_ENTRIES`] is 2 to this power.
const RECENT_SLOT_BITS: u32 = RECENT_FLOWS_ENTRIES.trailing_zeros();
const RECENT_SLOT_MASK: u32 = RECENT_FLOWS_ENTRIES - 1;
const _: () = assert!(RECENT_FLOWS_ENTRIES == 1 << RECENT_SLOT_BITS);

/// Refuses a new flow of `pod` past its share.
#[inline(always)]
pub fn admit(pod: u32, cfg: &NatConfig) -> Result<(), FlowError> {
    if cfg.ct_max_per_pod == 0 {
        return Ok(());
    }
    // SAFETY: map value read, valid for this run.
    match unsafe { POD_FLOWS.get(pod) } {
        Some(&held) if held >= cfg.ct_max_per_pod => Err(FlowError::PodLimit),
        _ => Ok(()),
    }
}

/// Accounts a flow created for `key`: its pod's share, and a slot of the
/// recent flows early drop looks in.
#[inline(always)]
pub fn created(key: &FlowKey, cfg: &NatConfig) {
    if let Some(cursor) = RECENT_CURSOR.get_ptr_mut(0) {
        // SAFETY: map value pointers, valid for this run. Not atomic: two
        // CPUs may write one slot, and one of the keys is not remembered.
        unsafe {
            if let Some(recent) = RECENT_FLOWS.get_ptr_mut(*cursor & RECENT_SLOT_MASK) {
                *recent = *key;
            }
            *cursor = (*cursor).wrapping_add(1);
        }
    }
    if cfg.ct_max_per_pod == 0 {
        return;
    }
    match POD_FLOWS.get_ptr_mut(key.src_addr) {
        // SAFETY: map value pointer, valid for this run. Not atomic: two
        // CPUs may lose a count, which the next sweep's recount restores.
        Some(held) => unsafe { *held += 1 },
        None => {
            let _ = POD_FLOWS.insert(key.src_addr, 1, 0);
        }
    }
}

/// Removes one unreplied flow found among a few random recent ones, to
/// make room in a full table; returns 1 if it did.
#[inline(never)]
pub fn early_drop() -> u32 {
    let written = RECENT_CURSOR.get(0).copied().unwrap_or(0);
    for _ in 0..EARLY_DROP_TRIES {
        // SAFETY: plain helper call.
        let random = unsafe { bpf_get_prandom_u32() } & RECENT_SLOT_MASK;
        // A slot among those written so far: scaled, not divided (a
        // division by a number the verifier cannot prove non-zero is
        // rejected on older kernels).
        let slot = if written >= RECENT_FLOWS_ENTRIES {
            random
        } else {
            (random * written) >> RECENT_SLOT_BITS
        };
        let Some(&key) = RECENT_FLOWS.get(slot) else {
            continue;
        };
        let Some(original) = conntrack::original(&key) else {
            continue;
        };
        // SAFETY: map value pointer, valid for this run.
        let reply_key =
            unsafe { key.reply_after_snat((*original).rewrite_addr, (*original).rewrite_port) };
        // SAFETY: map value read, valid for this run.
        let answered = unsafe { CONNTRACK.get(reply_key) }.is_none_or(|reply| reply.packets != 0);
        if answered {
            continue;
        }
        // Original half first: once it is gone nothing uses the port.
        let _ = CONNTRACK.remove(key);
        let _ = CONNTRACK.remove(reply_key);
        count(Counter::FlowsEarlyDropped);
        return 1;
    }
    0
}
