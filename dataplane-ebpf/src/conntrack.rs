//! The conntrack table: finding a flow, creating one (claiming a port), and
//! accounting packets against it.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32, programs::TcContext};
use dataplane_common::{
    config::NatConfig,
    conntrack::{SEEN_ACK, SEEN_FIN, SEEN_RST, SEEN_SYN},
    counters::Counter,
    flow::{Direction, FlowEntry, FlowKey},
    ports::{MAX_PORT_ATTEMPTS, candidate_port},
};

use crate::{admission, counters::count, host_sockets::host_would_receive, maps::CONNTRACK};

const EEXIST: i32 = 17;

/// Why no flow could be had for a new connection.
pub enum FlowError {
    /// Every candidate port for this destination is taken.
    NoPort,
    /// The table has no room for two more entries.
    TableFull,
    /// The pod holds its `--ct-max-per-pod` flows already.
    PodLimit,
}

/// The original-direction entry of the flow `key` (a pod's outgoing packet),
/// created on first sight. A flow still bound to a previous NAT address (the
/// uplink's address changed) is replaced, as MASQUERADE forgets such flows.
#[inline(always)]
pub fn original_entry(
    ctx: &TcContext,
    key: &FlowKey,
    cfg: &NatConfig,
    now_ns: u64,
) -> Result<*mut FlowEntry, FlowError> {
    if let Some(entry) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this run.
        let (addr, port) = unsafe { ((*entry).rewrite_addr, (*entry).rewrite_port) };
        if addr == cfg.nat_addr {
            return Ok(entry);
        }
        // Reply half first: once it is gone no reply reaches the stale mapping.
        let _ = CONNTRACK.remove(key.reply_after_snat(addr, port));
        let _ = CONNTRACK.remove(key);
    }
    admission::admit(key.src_addr, cfg)?;
    create_flow(ctx, key, cfg, now_ns)?;
    admission::created(key, cfg);
    // Looked up again here rather than returned by `create_flow`: a map
    // value pointer handed back from a BPF-to-BPF call travels through the
    // caller's stack, where verifiers before 6.2 lose track of it.
    CONNTRACK.get_ptr_mut(key).ok_or(FlowError::TableFull)
}

/// A new SYN on a tuple whose last connection closed (FIN/RST seen) starts a
/// new connection: forget the old one's flags in both directions.
#[inline(always)]
pub fn restart_if_reused(key: &FlowKey, entry: *mut FlowEntry, seen: u8) {
    // SAFETY: map value pointers, valid for this run.
    unsafe {
        if seen & (SEEN_SYN | SEEN_ACK) != SEEN_SYN || (*entry).state & (SEEN_FIN | SEEN_RST) == 0 {
            return;
        }
        (*entry).state = 0;
        let reply_key = key.reply_after_snat((*entry).rewrite_addr, (*entry).rewrite_port);
        if let Some(reply) = CONNTRACK.get_ptr_mut(reply_key) {
            (*reply).state = 0;
        }
    }
}

/// The reply-direction entry for a packet arriving at the NAT address.
#[inline(always)]
pub fn reply_entry(key: &FlowKey) -> Option<*mut FlowEntry> {
    CONNTRACK
        .get_ptr_mut(key)
        .filter(|&entry| unsafe { (*entry).direction } == Direction::Reply as u8)
}

/// The original-direction entry of a flow, by the pod's packet's key.
#[inline(always)]
pub fn original(key: &FlowKey) -> Option<*mut FlowEntry> {
    CONNTRACK
        .get_ptr_mut(key)
        .filter(|&entry| unsafe { (*entry).direction } == Direction::Original as u8)
}

/// Claims a translated port and inserts both halves of a flow, trying up
/// to [`MAX_PORT_ATTEMPTS`] candidate ports.
#[inline(always)]
fn create_flow(
    ctx: &TcContext,
    key: &FlowKey,
    cfg: &NatConfig,
    now_ns: u64,
) -> Result<(), FlowError> {
    for attempt in 0..MAX_PORT_ATTEMPTS {
        match try_port(ctx, key, cfg, attempt, now_ns) {
            Attempt::Created => return Ok(()),
            Attempt::PortTaken => continue,
            // `uplink_egress` then makes room for the next try
            // (`admission::early_drop`).
            Attempt::TableFull => return Err(FlowError::TableFull),
        }
    }
    Err(FlowError::NoPort)
}

/// How one candidate port went.
#[repr(u32)]
enum Attempt {
    /// The flow exists now (made by us, or by another CPU meanwhile).
    Created,
    /// The port is in use (by a flow, or by a socket of the host): try another.
    PortTaken,
    TableFull,
}

/// Tries the candidate port of `attempt` for the new flow `key`.
///
/// A port the host itself would receive the flow's replies on (a socket of
/// its own on the NAT address) is skipped. The reply entry goes in first
/// with BPF_NOEXIST: that insert *is* the port claim, atomic against other
/// CPUs. Only then is the original entry added; if that fails the claim is
/// released, so no half flow is ever left behind.
///
/// A function of its own, returning a plain number, so that each turn of
/// the caller's loop reaches the verifier in one state: inlined, every path
/// through an attempt multiplied the next one's (818k instructions
/// processed on 6.18, near the 1M limit).
#[inline(never)]
fn try_port(ctx: &TcContext, key: &FlowKey, cfg: &NatConfig, attempt: u32, now_ns: u64) -> Attempt {
    // SAFETY: plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    let original_port = u16::from_be(key.src_port);
    let nat_port =
        candidate_port(attempt, original_port, cfg.port_min, cfg.port_max, random).to_be();
    let reply_key = key.reply_after_snat(cfg.nat_addr, nat_port);
    let peer = (key.dst_addr, key.dst_port);
    if host_would_receive(ctx, key.proto, peer, (cfg.nat_addr, nat_port)) {
        count(Counter::PortSkippedHostSocket);
        return Attempt::PortTaken;
    }
    let reply = FlowEntry::new(Direction::Reply, key.src_addr, key.src_port, now_ns);
    match CONNTRACK.insert(reply_key, reply, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => return Attempt::PortTaken,
        Err(_) => return Attempt::TableFull,
    }
    let original = FlowEntry::new(Direction::Original, cfg.nat_addr, nat_port, now_ns);
    match CONNTRACK.insert(key, original, BPF_NOEXIST as u64) {
        Ok(()) => count(Counter::FlowsCreated),
        Err(e) => {
            let _ = CONNTRACK.remove(reply_key);
            if e != -EEXIST {
                return Attempt::TableFull;
            }
            // Another CPU created this very flow meanwhile: use its entry.
        }
    }
    Attempt::Created
}

/// Accounts one packet of `bytes` to `entry`; `seen` are the
/// [`dataplane_common::conntrack`] bits of its TCP flags.
#[inline(always)]
pub fn touch(entry: *mut FlowEntry, now_ns: u64, bytes: u32, seen: u8) {
    // SAFETY: `entry` points into a map value, valid for this program run.
    // The bpf target has no atomic read-modify-write in Rust's core, so two
    // CPUs handling the same direction of one flow at once may lose a count:
    // the figures are statistics, never used for a decision.
    unsafe {
        (*entry).last_seen_ns = now_ns;
        // A reply entry's creation time becomes its first answer's: the
        // garbage collector tells a UDP stream from a lone answer by it.
        if (*entry).packets == 0 && (*entry).is_reply() {
            (*entry).created_ns = now_ns;
        }
        if (*entry).state | seen != (*entry).state {
            (*entry).state |= seen;
        }
        (*entry).packets += 1;
        (*entry).bytes += bytes as u64;
    }
}
