//! `bpfmasq trace`: one line per packet the datapath decides on, as it
//! decides: program, tuple before and after, verdict and the counter that
//! says why. The trace claims one of the datapath's trace slots ([`slots`]),
//! reads that slot's ring buffer and filters in user space, so the eBPF side
//! stays one check per packet when no trace runs. Lost events (a full ring
//! buffer) are counted by the datapath and reported.

mod event;
mod slots;

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use dataplane_common::{maps, trace::ring_name};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use self::slots::Slot;
pub use self::{
    event::{Clock, Event, TraceFilter},
    slots::{listening, reconcile},
};
use super::Query;
use crate::{
    datapath::instance::{Instance, netns_label},
    privileges::require_root,
};

/// What `trace` shows and when it stops.
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    pub filter: TraceFilter,
    /// Stop after this many matching packets.
    pub count: Option<u64>,
}

/// How often lost events are looked for while the trace runs.
const LOST_CHECK: Duration = Duration::from_secs(1);

fn open(instance: &Instance, name: &str) -> Result<Map> {
    let path = instance.pin(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).map_err(|e| anyhow!("pinned map {}: {e}", path.display()))
}

/// Events of slot `slot` the datapath could not fit in its ring buffer, so far.
fn lost(instance: &Instance, slot: u32) -> Result<u64> {
    let lost: PerCpuArray<MapData, u64> = open(instance, maps::TRACE_LOST)?.try_into()?;
    Ok(lost
        .get(&slot, 0)
        .context("reading the trace's lost events")?
        .iter()
        .sum())
}

pub async fn trace(netns: Option<&str>, query: &Query, options: &TraceOptions) -> Result<()> {
    require_root("bpfmasq trace")?;
    let instance = Instance::find(&netns_label(netns)?, query.uplink.as_deref())?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let slot = Slot::claim(&instance)?;
    let mut ring = RingBuf::try_from(open(&instance, ring_name(slot.index))?)?;
    // What an earlier trace of this slot left unread is not this trace's.
    while ring.next().is_some() {}
    let lost_at_start = lost(&instance, slot.index)?;
    slot.listen()?;
    let clock = Clock::now();
    eprintln!(
        "bpfmasq trace: tracing {} in network namespace `{}` (slot {}); Ctrl-C to stop",
        instance.uplink, instance.netns, slot.index
    );

    // SAFETY: the ring buffer owns its map's fd, which stays open (and is
    // never replaced) until the AsyncFd, which owns the ring, is dropped.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.context("watching the trace's ring buffer")?;
    let mut lost_check = tokio::time::interval(LOST_CHECK);
    let (mut shown, mut lost_reported) = (0u64, 0u64);
    let wanted = options.count.unwrap_or(u64::MAX);
    let stopped_by = 'tracing: loop {
        tokio::select! {
            _ = interrupt.recv() => break "SIGINT",
            _ = terminate.recv() => break "SIGTERM",
            _ = lost_check.tick() => {
                let lost_now = lost(&instance, slot.index)?.saturating_sub(lost_at_start);
                if lost_now > lost_reported {
                    eprintln!(
                        "bpfmasq trace: {} events lost (the ring buffer was full: the system is busier than the trace can print)",
                        lost_now - lost_reported
                    );
                    lost_reported = lost_now;
                }
            }
            ready = ring.readable_mut() => {
                let mut guard = ready.context("waiting for trace events")?;
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(event) = Event::decode(&item) else { continue };
                    if !event.matches(&options.filter) {
                        continue;
                    }
                    if query.json {
                        println!("{}", event.json(&clock));
                    } else {
                        println!("{}", event.line(&clock));
                    }
                    shown += 1;
                    if shown >= wanted {
                        break 'tracing "--count reached";
                    }
                }
                guard.clear_ready();
            }
        }
    };
    drop(ring);
    let lost_total = lost(&instance, slot.index)?.saturating_sub(lost_at_start);
    drop(slot);
    eprintln!("bpfmasq trace: {stopped_by}: {shown} packets shown, {lost_total} events lost");
    Ok(())
}
