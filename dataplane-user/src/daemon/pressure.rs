//! Telling the operator when the datapath starts refusing new flows (no free
//! port for a destination, a full table), like nf_conntrack's "table full,
//! dropping packet": read from the datapath's counters once per sweep, one
//! line for each interval in which they grew. The datapath itself only
//! counts; it never logs per packet.

use dataplane_common::counters::Counter;

use crate::{datapath::instance::Instance, inspect::counter_totals};

/// The counters that mean new flows are being refused, and what they mean.
const REFUSALS: [(Counter, &str); 2] = [
    (Counter::DropNoPort, "no free port"),
    (Counter::DropTableFull, "the table is full"),
];

/// The refusal counters as last seen.
pub struct PressureWatch {
    seen: [u64; REFUSALS.len()],
}

impl PressureWatch {
    /// Starts from the counters as they are now: refusals from before this
    /// daemon started are not reported again.
    pub fn new(instance: &Instance) -> Self {
        let mut watch = Self {
            seen: [0; REFUSALS.len()],
        };
        watch.check(instance);
        watch
    }

    /// The warning to print when new flows were refused since the last
    /// check, e.g. `12 new flows refused since the last check: 12 no free
    /// port (drop_no_port)`.
    pub fn check(&mut self, instance: &Instance) -> Option<String> {
        let totals = counter_totals(instance).ok()?;
        let mut parts = Vec::new();
        let mut all = 0;
        for ((counter, what), seen) in REFUSALS.iter().zip(&mut self.seen) {
            let now = totals
                .iter()
                .find(|(c, _)| c == counter)
                .map_or(*seen, |(_, v)| *v);
            let grown = now.saturating_sub(*seen);
            *seen = now;
            if grown > 0 {
                all += grown;
                parts.push(format!("{grown} {what} ({})", counter.name()));
            }
        }
        (all > 0).then(|| {
            format!(
                "{all} new flows refused since the last check: {}",
                parts.join(", ")
            )
        })
    }
}
