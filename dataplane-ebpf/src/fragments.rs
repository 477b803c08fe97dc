//! IP fragments through the NAT, without reassembly.
//!
//! Only a datagram's first fragment carries the ports flows are keyed on.
//! Outgoing, the later fragments need nothing but the NAT address as their
//! source, so they are translated whatever order they come in; the state is
//! a claim on the datagram's IP ID towards its destination, so two pods'
//! datagrams never merge at the peer. Incoming, the later fragments need to
//! know their pod, which only the first fragment tells: the first fragment
//! records it for the rest, and fragments that arrive before it are held
//! (parked) and sent on, translated, when it arrives. All of it is bounded
//! and short-lived (see [`dataplane_common::fragments`]); what outside
//! senders can create is kept apart from the outgoing claims and bounded per
//! source, so a flood of fragments cannot push out anyone else's state.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_RECOMPUTE_CSUM, BPF_NOEXIST},
    helpers::{bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use dataplane_common::{
    checksum::replace32,
    counters::Counter,
    fragments::{
        DatagramEntry, DatagramKey, MAX_PARKED_PER_DATAGRAM, PARKED_MAX_LEN, ParkedFragment,
        ParkedKey, SourceBudget, verifier_len,
    },
};
use network_types::eth::EthHdr;

use crate::{
    counters::count,
    maps::{FRAG_CLAIMS, FRAG_DATAGRAMS, FRAG_PARKED, FRAG_SCRATCH, FRAG_SOURCES},
    offsets::{IPV4_CHECK, IPV4_DST, IPV4_MIN_LEN},
    packet::Ipv4,
    rewrite::{Endpoint, rewrite_address},
    verdict::{Drop, Outcome, Verdict},
};

const ETH_LEN: u32 = EthHdr::LEN as u32;
/// Keeps a CHECKSUM_COMPLETE skb's sum right when bytes are replaced.
const RECOMPUTE: u64 = BPF_F_RECOMPUTE_CSUM as u64;
/// skb mark of the clones [`release`] sends back into the interface's
/// ingress: already translated, to be let through once, untouched.
const RELEASED_MARK: u32 = u32::from_be_bytes(*b"frag");

/// Claims the outgoing datagram's IP ID towards its destination for the pod
/// sending it; a fresh claim by another pod means a collision, and the
/// fragment is dropped rather than merged into someone else's datagram.
#[inline(always)]
pub fn claim_outgoing(ip: &Ipv4, nat_addr: u32, now_ns: u64) -> Result<(), Drop> {
    let key = DatagramKey::new(nat_addr, ip.dst, ip.id, ip.proto);
    let mut flags = BPF_NOEXIST as u64;
    if let Some(entry) = FRAG_CLAIMS.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this run.
        let entry = unsafe { &*entry };
        if entry.is_fresh(now_ns) {
            return if entry.addr == ip.src {
                Ok(())
            } else {
                Err(Drop(Counter::DropFragment))
            };
        }
        flags = 0; // a stale claim is taken over
    }
    FRAG_CLAIMS
        .insert(key, DatagramEntry::new(ip.src, now_ns), flags)
        .map_err(|_| Drop(Counter::DropFragment))
}

/// An outgoing fragment after the first: only its source address changes
/// (the transport checksum lives in the first fragment).
#[inline(always)]
pub fn snat_later(ctx: &TcContext, ip: &Ipv4, nat_addr: u32) -> Outcome {
    rewrite_address(ctx, ip, Endpoint::Source, (ip.src, nat_addr))?;
    Ok(Verdict::Translated(Counter::TranslatedFragment))
}

/// An incoming fragment after the first, addressed to the NAT address.
#[inline(always)]
pub fn unsnat_later(ctx: &TcContext, ip: &Ipv4, now_ns: u64) -> Outcome {
    let key = DatagramKey::new(ip.src, ip.dst, ip.id, ip.proto);
    let Some(entry) = fresh_or_new(&key, now_ns) else {
        return Ok(Verdict::Pass(Counter::PassedFragmentNotHeld));
    };
    // SAFETY: map value pointer, valid for this run.
    let mut addr = unsafe { (*entry).addr };
    if addr == 0 {
        match park(ctx, ip, &key, entry) {
            Parked::Held(verdict) => return Ok(verdict),
            // The first fragment came while this one was being held, too
            // late to release it: it goes on now, like any later fragment.
            Parked::FirstCame(first_addr) => addr = first_addr,
        }
    }
    if addr == ip.dst {
        // The first fragment was for the host itself.
        return Ok(Verdict::Pass(Counter::PassedNoFlow));
    }
    rewrite_address(ctx, ip, Endpoint::Destination, (ip.dst, addr))?;
    // Not `Translated`: a fragment never takes the fast path.
    Ok(Verdict::Pass(Counter::TranslatedFragment))
}

/// After an incoming first fragment went through the NAT (it is passed:
/// translated to a pod, or left to the host, as `counter` says), records
/// where the rest of its datagram goes and sends on the fragments that
/// waited for it. Returns the verdict on the first fragment itself (never
/// `Translated`: a fragment never takes the fast path).
#[inline(always)]
pub fn first_incoming(ctx: &TcContext, ip: &Ipv4, now_ns: u64, counter: Counter) -> Verdict {
    let passed = Verdict::Pass(counter);
    // Where the NAT core sent it: a pod, or still the NAT address.
    let Ok(addr) = ctx.load::<u32>(ip.l3_off + IPV4_DST) else {
        return passed;
    };
    let key = DatagramKey::new(ip.src, ip.dst, ip.id, ip.proto);
    let Some(entry) = fresh_or_new(&key, now_ns) else {
        return passed; // later fragments will be held, then expire
    };
    // SAFETY: map value pointer, valid for this run.
    let parked = unsafe {
        // A repeated first fragment, or a reused IP ID: the latest first
        // fragment says where the rest goes.
        let known = (*entry).addr != 0;
        (*entry).addr = addr;
        if known {
            return passed;
        }
        core::mem::replace(&mut (*entry).parked, 0)
    };
    if parked == 0 || !release(ctx, &key, addr, parked) {
        return passed;
    }
    // It went on as a clone, ahead of the fragments that waited for it.
    Verdict::Taken(counter)
}

/// Whether this packet is one [`release`] sent back into this ingress: it
/// is let through as it is (its mark cleared; ingress packets carry none).
#[inline(always)]
pub fn is_released(ctx: &TcContext) -> bool {
    // SAFETY: reading the skb's mark.
    if unsafe { (*ctx.skb.skb).mark } != RELEASED_MARK {
        return false;
    }
    ctx.set_mark(0);
    true
}

/// The fresh entry of `key`, or a new empty one in its place if its source
/// is within its budget.
#[inline(always)]
fn fresh_or_new(key: &DatagramKey, now_ns: u64) -> Option<*mut DatagramEntry> {
    if let Some(entry) = FRAG_DATAGRAMS.get_ptr_mut(key) {
        // SAFETY: map value pointer, valid for this run.
        if unsafe { (*entry).is_fresh(now_ns) } {
            return Some(entry);
        }
    }
    if !source_admits(key.src_addr, now_ns) {
        return None;
    }
    FRAG_DATAGRAMS
        .insert(key, DatagramEntry::new(0, now_ns), 0)
        .ok()?;
    FRAG_DATAGRAMS.get_ptr_mut(key)
}

/// Counts a new incoming datagram against its source's budget.
#[inline(always)]
fn source_admits(src: u32, now_ns: u64) -> bool {
    match FRAG_SOURCES.get_ptr_mut(src) {
        // SAFETY: map value pointer, valid for this run. Not atomic: two
        // CPUs may each count one datagram as the same.
        Some(budget) => unsafe { (*budget).admit(now_ns) },
        None => FRAG_SOURCES
            .insert(src, SourceBudget::first(now_ns), 0)
            .is_ok(),
    }
}

/// What [`park`] did with a fragment.
enum Parked {
    /// Held (`Taken`) or left to the host (`Pass`).
    Held(Verdict),
    /// The datagram's first fragment arrived meanwhile, with this address
    /// for the rest; the fragment was not held.
    FirstCame(u32),
}

/// Holds a fragment whose datagram's first fragment has not arrived: copies
/// it into `FRAG_PARKED` and drops the original.
///
/// The first fragment may arrive on another CPU while this runs, and
/// release the held fragments it finds: one held after that would wait
/// for nothing. So once held, the datagram is looked at again; if its first
/// fragment came, the copy is taken back (unless the release already sent
/// it) and the fragment goes on as it is.
// The scratch value is passed by reference on purpose: a copy of it would
// not fit the 512-byte BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn park(ctx: &TcContext, ip: &Ipv4, key: &DatagramKey, entry: *mut DatagramEntry) -> Parked {
    // Left to the host as before bpfmasq: its own datagrams still reassemble
    // there; one for a pod is lost either way.
    const REFUSED: Parked = Parked::Held(Verdict::Pass(Counter::PassedFragmentNotHeld));
    // SAFETY: map value pointer, valid for this run.
    let slot = unsafe { (*entry).parked };
    let len = ip.total_len as u32;
    if slot >= MAX_PARKED_PER_DATAGRAM
        || len == 0
        || len as usize > PARKED_MAX_LEN
        || (ip.l3_off as u32 + len) > ctx.len()
    {
        return REFUSED;
    }
    let Some(scratch) = FRAG_SCRATCH.get_ptr_mut(0) else {
        return REFUSED;
    };
    // SAFETY: per-CPU map value, only this run uses it; `len` is checked
    // against the buffer above.
    unsafe {
        (*scratch).len = len;
        let to = (*scratch).bytes.as_mut_ptr().cast();
        let at = ip.l3_off as u32;
        if bpf_skb_load_bytes(ctx.skb.skb.cast(), at, to, verifier_len(len)) != 0 {
            return REFUSED;
        }
        let parked_key = ParkedKey {
            datagram: *key,
            slot,
        };
        if FRAG_PARKED.insert(parked_key, &*scratch, 0).is_err() {
            return REFUSED;
        }
        (*entry).parked = slot + 1;
        let first_addr = (*entry).addr;
        if first_addr != 0 && FRAG_PARKED.remove(parked_key).is_ok() {
            return Parked::FirstCame(first_addr);
        }
    }
    Parked::Held(Verdict::Taken(Counter::ParkedFragment))
}

/// Sends the first fragment and then every held one of its datagram, each
/// as a clone re-entering this interface's ingress with its destination
/// rewritten to `addr`: the working skb takes each held fragment's bytes in
/// turn. Returns whether the first fragment went out so; then everything
/// the working skb carried went out as clones, and it is to be consumed.
#[inline(never)]
fn release(ctx: &TcContext, key: &DatagramKey, addr: u32, parked: u32) -> bool {
    // SAFETY: reading the skb's own interface index.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    ctx.set_mark(RELEASED_MARK);
    if ctx.clone_redirect(ifindex, BPF_F_INGRESS as u64).is_err() {
        ctx.set_mark(0);
        return false; // the held fragments expire
    }
    for slot in 0..MAX_PARKED_PER_DATAGRAM {
        if slot >= parked {
            break;
        }
        let parked_key = ParkedKey {
            datagram: *key,
            slot,
        };
        if let Some(fragment) = FRAG_PARKED.get_ptr_mut(parked_key) {
            if resend(ctx, fragment, key.dst_addr, addr, ifindex) {
                count(Counter::ReleasedFragment);
            }
            let _ = FRAG_PARKED.remove(parked_key);
        }
    }
    true
}

/// Puts a held fragment, its destination rewritten from `old` to `new`, in
/// the working skb and sends a clone of it.
#[inline(always)]
fn resend(
    ctx: &TcContext,
    fragment: *mut ParkedFragment,
    old: u32,
    new: u32,
    ifindex: u32,
) -> bool {
    // SAFETY: map value pointer, valid for this run; offsets are constants
    // inside the 20-byte minimum IPv4 header; `len` is bounded below.
    unsafe {
        let bytes = &mut (*fragment).bytes;
        let len = (*fragment).len;
        if (len as usize) < IPV4_MIN_LEN || len as usize > PARKED_MAX_LEN {
            return false;
        }
        if old != new {
            let check = u16::from_ne_bytes([bytes[IPV4_CHECK], bytes[IPV4_CHECK + 1]]);
            let check = replace32(check, old, new);
            bytes[IPV4_CHECK..IPV4_CHECK + 2].copy_from_slice(&check.to_ne_bytes());
            bytes[IPV4_DST..IPV4_DST + 4].copy_from_slice(&new.to_ne_bytes());
        }
        let skb = ctx.skb.skb.cast();
        bpf_skb_change_tail(skb, ETH_LEN + len, 0) == 0
            && bpf_skb_store_bytes(
                skb,
                ETH_LEN,
                bytes.as_ptr().cast(),
                verifier_len(len),
                RECOMPUTE,
            ) == 0
            && ctx.clone_redirect(ifindex, BPF_F_INGRESS as u64).is_ok()
    }
}
