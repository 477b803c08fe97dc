//! Prometheus metrics of `bpfmasq run --metrics-address ADDR:PORT`: every
//! datapath counter (one series per counter, derived from its family in
//! `dataplane_common::counters`), the flows by protocol and state, table and
//! map fill, NAT port pressure per destination, and the daemon's garbage
//! collection. Served as the Prometheus text format on `GET /metrics`
//! ([`http`]) from the daemon's runtime.
//!
//! A scrape reads the datapath on a blocking thread, never on the runtime
//! the GC runs on; concurrent scrapes share one reading (at most one per
//! [`FRESH_FOR`]), so a flood of requests cannot multiply the reads.

mod http;
mod sample;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

pub use self::http::serve;
pub use self::sample::{Sample, TOP_DESTINATIONS, port_usage};
use crate::datapath::{gc::SweepReport, instance::Instance};

/// The `Content-Type` of what [`Exposition::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A rendering younger than this is served again instead of reading the
/// datapath anew (Prometheus scrapes every 15 s or so).
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// The daemon's own garbage-collection metrics, updated after each sweep.
#[derive(Clone, Debug)]
pub struct GcMetrics {
    runs: Counter,
    failures: Counter,
    duration: Histogram,
    removed: Family<[(&'static str, &'static str); 1], Counter>,
    orphans: Counter,
}

/// Why the GC removes a flow: `expired` (idle past its timeout) or
/// `address_change` (bound to a NAT address the uplink no longer has).
const REMOVED_EXPIRED: [(&str, &str); 1] = [("reason", "expired")];
const REMOVED_ADDRESS_CHANGE: [(&str, &str); 1] = [("reason", "address_change")];

impl Default for GcMetrics {
    fn default() -> Self {
        let metrics = Self {
            runs: Counter::default(),
            failures: Counter::default(),
            // 0.5 ms (a small table) to 8 s (millions of entries).
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 15,
            )),
            removed: Family::default(),
            orphans: Counter::default(),
        };
        // Both reasons present from the start, at 0.
        for reason in [REMOVED_EXPIRED, REMOVED_ADDRESS_CHANGE] {
            metrics.removed.get_or_create(&reason).inc_by(0);
        }
        metrics
    }
}

impl GcMetrics {
    /// Counts a completed sweep.
    pub fn record(&self, report: &SweepReport) {
        self.runs.inc();
        self.duration.observe(report.duration.as_secs_f64());
        self.removed
            .get_or_create(&REMOVED_EXPIRED)
            .inc_by(report.expired as u64);
        self.removed
            .get_or_create(&REMOVED_ADDRESS_CHANGE)
            .inc_by(report.rebound as u64);
        self.orphans.inc_by(report.orphans as u64);
    }

    /// Counts a sweep that failed (it is retried at the next tick).
    pub fn record_failure(&self) {
        self.failures.inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "gc_runs",
            "Garbage-collection sweeps completed",
            self.runs.clone(),
        );
        registry.register(
            "gc_failures",
            "Garbage-collection sweeps that failed (retried at the next interval)",
            self.failures.clone(),
        );
        registry.register_with_unit(
            "gc_duration",
            "Time one garbage-collection sweep took (reading the table, removing flows)",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register(
            "gc_removed_flows",
            "Flows the garbage collector removed, by reason: expired (idle past their timeout) or address_change (bound to an old NAT address)",
            self.removed.clone(),
        );
        registry.register(
            "gc_removed_orphan_entries",
            "Conntrack entries without their other half (a flow interrupted while being created or removed) the garbage collector removed",
            self.orphans.clone(),
        );
    }
}

/// What `GET /metrics` returns for one datapath.
#[derive(Debug)]
pub struct Exposition {
    instance: Instance,
    gc: GcMetrics,
    /// The last rendering and when it was made.
    last: Mutex<Option<(Instant, Arc<str>)>>,
}

impl Exposition {
    pub fn new(instance: Instance, gc: GcMetrics) -> Self {
        Self {
            instance,
            gc,
            last: Mutex::new(None),
        }
    }

    /// The metrics in the Prometheus text format. Blocking (reads the
    /// maps): call it on a blocking thread. Scrapes arriving meanwhile wait
    /// for this reading and share it.
    pub fn render(&self) -> Result<Arc<str>> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, text)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Arc::clone(text));
        }
        let sample = Sample::read(&self.instance).context("reading the datapath")?;
        let mut registry = Registry::with_prefix("bpfmasq");
        registry.register_collector(Box::new(sample));
        self.gc.register(&mut registry);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry)
            .map_err(|_| anyhow!("encoding the metrics failed"))?;
        let text: Arc<str> = text.into();
        *last = Some((Instant::now(), Arc::clone(&text)));
        Ok(text)
    }
}
