use dataplane_common::counters::Counter;

use crate::maps::COUNTERS;

/// Adds one to `counter` on this CPU (per-CPU slot: no atomics needed).
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU value, only this program on this CPU writes it.
        unsafe { *slot += 1 };
    }
}
