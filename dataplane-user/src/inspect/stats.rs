//! `bpfmasq stats`: every counter, summed over CPUs; `--watch` refreshes in
//! place with rates.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use dataplane_common::counters::Counter;

use super::Query;
use crate::datapath::{
    instance::{Instance, netns_label},
    pinned,
};

/// Every counter, summed over CPUs, in [`Counter::ALL`] order.
pub fn counter_totals(instance: &Instance) -> Result<Vec<(Counter, u64)>> {
    let counters = pinned::counters(instance)?;
    Counter::ALL
        .iter()
        .map(|&c| {
            let per_cpu = counters
                .get(&(c as u32), 0)
                .with_context(|| format!("reading counter {}", c.name()))?;
            Ok((c, per_cpu.iter().sum()))
        })
        .collect()
}

/// `watch`: refresh in place every second, with rates, until Ctrl-C.
pub async fn stats(netns: Option<&str>, query: &Query, watch_it: bool) -> Result<()> {
    let instance = Instance::find(&netns_label(netns)?, query.uplink.as_deref())?;
    if watch_it {
        return watch(&instance).await;
    }
    let totals = counter_totals(&instance)?;
    if query.json {
        let map: serde_json::Map<String, serde_json::Value> = totals
            .iter()
            .map(|(c, v)| (c.name().to_owned(), (*v).into()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    let width = name_width();
    for (counter, value) in totals {
        println!("{:<width$} {value:>14}", counter.name());
    }
    Ok(())
}

/// Redraws the table every second until Ctrl-C.
async fn watch(instance: &Instance) -> Result<()> {
    let mut previous = counter_totals(instance)?;
    let mut at = Instant::now();
    let width = name_width();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let current = counter_totals(instance)?;
        let elapsed = at.elapsed().as_secs_f64().max(1e-3);
        at = Instant::now();
        // Clear the screen and home the cursor: a refresh in place.
        print!("\x1b[2J\x1b[H");
        println!(
            "{:<width$} {:>14} {:>12}   (Ctrl-C to stop)",
            "COUNTER", "TOTAL", "PER SECOND"
        );
        for ((counter, now), (_, before)) in current.iter().zip(&previous) {
            let rate = now.saturating_sub(*before) as f64 / elapsed;
            println!("{:<width$} {now:>14} {rate:>12.1}", counter.name());
        }
        previous = current;
    }
}

/// The counter column's width: the longest counter name.
fn name_width() -> usize {
    Counter::ALL
        .iter()
        .map(|c| c.name().len())
        .max()
        .unwrap_or(0)
}
