//! Samples, their summary per cell (workload × metric × N × variant), the
//! ratio table, and the JSON record of a run.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{
    bpf::RunStats,
    plan::{Metric, Plan, Variant, Workload},
    stats::Summary,
};

/// One measurement: one workload, once, on one variant at one scale.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub repetition: u32,
    /// N, the registered containers of the block it ran in (routing has none:
    /// it runs at the first scale and stands for every N).
    pub scale: u32,
    pub variant: Variant,
    pub workload: Workload,
    /// Seconds since the run started.
    pub started_s: f64,
    pub elapsed_s: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: u32,
    pub metrics: BTreeMap<Metric, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_units: Option<f64>,
    /// Busy CPU seconds, all CPUs, during the sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_busy_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_busy_share: Option<f64>,
    /// eBPF cost: per load, the programs' (egress, ingress) run-time statistics.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bpf: Vec<BpfRun>,
    pub command: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<&'static str, f64>,
    /// Control plane: every add/remove trial, in ms.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trials_ms: Vec<[f64; 2]>,
}

impl Sample {
    /// A successful sample of `workload` on `variant` with nothing measured
    /// yet: callers fill in what they know.
    pub fn new(variant: Variant, workload: Workload) -> Self {
        Self {
            repetition: 0,
            scale: 0,
            variant,
            workload,
            started_s: 0.0,
            elapsed_s: 0.0,
            ok: true,
            error: None,
            attempts: 1,
            metrics: BTreeMap::new(),
            work_units: None,
            cpu_busy_s: None,
            cpu_busy_share: None,
            bpf: Vec::new(),
            command: String::new(),
            details: BTreeMap::new(),
            trials_ms: Vec::new(),
        }
    }
}

/// bpf_stats deltas of bpfmasq's programs during one load.
#[derive(Clone, Debug, Serialize)]
pub struct BpfRun {
    pub load: Workload,
    pub egress: RunStats,
    pub ingress: RunStats,
    /// The bridge's program (the fast path out; a no-op with it off).
    pub bridge: RunStats,
}

/// A variant set up at one scale (its setup cost is informative too).
#[derive(Clone, Debug, Serialize)]
pub struct BlockRecord {
    pub repetition: u32,
    pub scale: u32,
    pub variant: Variant,
    pub setup_s: f64,
    pub teardown_s: f64,
}

/// Whether a variant could run here.
#[derive(Clone, Debug, Serialize)]
pub struct VariantStatus {
    pub variant: Variant,
    pub supported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One line of the table: a metric of a workload at one N.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: Workload,
    pub metric: Metric,
    pub unit: String,
    pub scale: u32,
    pub cells: BTreeMap<Variant, Summary>,
    /// bpfmasq's median over iptables's, and whether their ranges overlap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpfmasq_over_iptables: Option<Ratio>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpfmasq_over_routed: Option<Ratio>,
    /// The same for bpfmasq with its fast path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_over_iptables: Option<Ratio>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_over_routed: Option<Ratio>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ratio {
    pub ratio: f64,
    /// The min-max ranges overlap: the difference is within this run's noise.
    pub within_noise: bool,
    /// bpfmasq is better (higher throughput, or lower latency/cost).
    pub bpfmasq_better: bool,
}

/// The rows of the table, in plan order: workload, metric, N.
pub fn rows(plan: &Plan, samples: &[Sample]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &workload in &plan.workloads {
        let mut metrics: Vec<Metric> = workload.metrics().to_vec();
        if workload.work_unit().is_some() {
            metrics.push(Metric::CpuPerUnit);
        }
        for metric in metrics {
            for &scale in &plan.scales {
                let mut cells = BTreeMap::new();
                for &variant in &plan.variants {
                    let values: Vec<f64> = samples
                        .iter()
                        .filter(|s| {
                            s.ok && s.workload == workload
                                && s.variant == variant
                                && (s.scale == scale || !variant.scales())
                        })
                        .filter_map(|s| s.metrics.get(&metric).copied())
                        .collect();
                    if let Some(summary) = Summary::of(&values) {
                        cells.insert(variant, summary);
                    }
                }
                // A row needs a scaled variant measured at this N.
                if !cells.keys().any(|v| v.scales()) {
                    continue;
                }
                let ratio = |ours: Variant, base: Variant| {
                    let b = cells.get(&ours)?;
                    let a = cells.get(&base)?;
                    (a.median != 0.0).then(|| Ratio {
                        ratio: b.median / a.median,
                        within_noise: a.overlaps(b),
                        bpfmasq_better: if metric.higher_is_better() {
                            b.median > a.median
                        } else {
                            b.median < a.median
                        },
                    })
                };
                let unit = match metric {
                    Metric::CpuPerUnit => workload
                        .work_unit()
                        .map(|(name, _)| name.to_owned())
                        .unwrap_or_default(),
                    other => other.label().to_owned(),
                };
                rows.push(Row {
                    workload,
                    metric,
                    unit,
                    scale,
                    bpfmasq_over_iptables: ratio(Variant::Bpfmasq, Variant::Iptables),
                    bpfmasq_over_routed: ratio(Variant::Bpfmasq, Variant::Routed),
                    fast_over_iptables: ratio(Variant::BpfmasqFast, Variant::Iptables),
                    fast_over_routed: ratio(Variant::BpfmasqFast, Variant::Routed),
                    cells,
                });
            }
        }
    }
    rows
}

/// Compact number: 3 significant digits, k/M suffixes for large values.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_cell(s: &Summary) -> String {
    if s.n == 1 {
        fmt_value(s.median)
    } else {
        format!(
            "{} [{}–{}]",
            fmt_value(s.median),
            fmt_value(s.min),
            fmt_value(s.max)
        )
    }
}

fn fmt_ratio(r: Option<Ratio>) -> String {
    let Some(r) = r else {
        return "–".to_owned();
    };
    // Tiny ratios (the control plane) read better as fractions.
    let value = if r.ratio > 0.0 && r.ratio < 0.1 {
        format!("1/{:.0}", 1.0 / r.ratio)
    } else {
        format!("{:.2}", r.ratio)
    };
    if r.within_noise {
        format!("{value} (noise)")
    } else if r.bpfmasq_better {
        format!("**{value}** better")
    } else {
        format!("{value} worse")
    }
}

/// The table as Markdown (readable in a terminal, pasteable into BENCHMARKS.md).
pub fn table(plan: &Plan, rows: &[Row]) -> String {
    let variants: Vec<Variant> = plan
        .variants
        .iter()
        .copied()
        .filter(|v| rows.iter().any(|r| r.cells.contains_key(v)))
        .collect();
    let mut header = vec!["workload".to_owned(), "metric".to_owned(), "N".to_owned()];
    header.extend(variants.iter().map(|v| v.name().to_owned()));
    header.push("bpfmasq/iptables".to_owned());
    header.push("bpfmasq/routed".to_owned());
    header.push("fast/iptables".to_owned());
    header.push("fast/routed".to_owned());
    let mut lines: Vec<Vec<String>> = vec![header];
    for row in rows {
        let mut line = vec![
            row.workload.name().to_owned(),
            row.unit.clone(),
            row.scale.to_string(),
        ];
        line.extend(
            variants
                .iter()
                .map(|v| row.cells.get(v).map_or_else(|| "–".to_owned(), fmt_cell)),
        );
        line.push(fmt_ratio(row.bpfmasq_over_iptables));
        line.push(fmt_ratio(row.bpfmasq_over_routed));
        line.push(fmt_ratio(row.fast_over_iptables));
        line.push(fmt_ratio(row.fast_over_routed));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        out.push('|');
        for (cell, width) in line.iter().zip(&widths) {
            let pad = width - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
        if n == 0 {
            out.push('|');
            for width in &widths {
                let _ = write!(out, "{}|", "-".repeat(width + 2));
            }
            out.push('\n');
        }
    }
    out
}

/// How noisy the run was.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Noise {
    /// Busy share of all CPUs over one idle second before and after the run
    /// (other work on the machine).
    pub background_busy_before: f64,
    pub background_busy_after: f64,
    pub loadavg_before: String,
    pub loadavg_after: String,
    /// Per variant, the median over its cells of (max - min) / median of the headline metrics.
    pub median_spread: BTreeMap<Variant, f64>,
    /// Per variant, the largest such spread, and where.
    pub worst_spread: BTreeMap<Variant, (f64, String)>,
    pub failed_samples: usize,
}

impl Noise {
    pub fn fill_spreads(&mut self, rows: &[Row]) {
        let mut spreads: BTreeMap<Variant, Vec<(f64, String)>> = BTreeMap::new();
        for row in rows {
            // Headline metrics only: CPU and eBPF cost are secondary.
            if row.workload.metrics().first() != Some(&row.metric) {
                continue;
            }
            for (variant, cell) in &row.cells {
                if cell.n > 1 {
                    // Routing stands for every N: count its cells once.
                    let what = if variant.scales() {
                        format!("{} N={}", row.workload, row.scale)
                    } else {
                        row.workload.to_string()
                    };
                    let list = spreads.entry(*variant).or_default();
                    if !list.iter().any(|(_, w)| *w == what) {
                        list.push((cell.spread(), what));
                    }
                }
            }
        }
        for (variant, mut list) in spreads {
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            let median = super::stats::quantile_sorted(
                &list.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                0.5,
            );
            self.median_spread.insert(variant, median);
            if let Some(worst) = list.last() {
                self.worst_spread.insert(variant, worst.clone());
            }
        }
    }

    pub fn describe(&self) -> String {
        let mut out = format!(
            "noise: other work on the machine kept {:.0}% of all CPUs busy before the run and {:.0}% after \
             (load average {} / {}); {} failed sample(s)\n",
            self.background_busy_before * 100.0,
            self.background_busy_after * 100.0,
            self.loadavg_before.trim(),
            self.loadavg_after.trim(),
            self.failed_samples
        );
        for (variant, spread) in &self.median_spread {
            let worst = self
                .worst_spread
                .get(variant)
                .map(|(s, what)| format!(", worst {:.0}% ({what})", s * 100.0))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {variant}: median min-max spread {:.0}% of the median{worst}",
                spread * 100.0
            );
        }
        out
    }
}

/// Everything written with `--json`.
#[derive(Serialize)]
pub struct Record<'a> {
    pub tool: &'static str,
    pub version: &'static str,
    pub command: Vec<String>,
    pub started_unix_s: u64,
    pub duration_s: f64,
    pub machine: BTreeMap<&'static str, String>,
    pub plan: &'a Plan,
    pub cpus: super::lab::Cpus,
    pub bpf_stats: bool,
    pub variants: &'a [VariantStatus],
    pub servers: Vec<String>,
    pub noise: &'a Noise,
    pub blocks: &'a [BlockRecord],
    pub samples: &'a [Sample],
    pub summary: &'a [Row],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Durations;

    fn sample(variant: Variant, scale: u32, value: f64) -> Sample {
        Sample {
            scale,
            elapsed_s: 1.0,
            metrics: BTreeMap::from([(Metric::ConnPerSec, value)]),
            work_units: Some(1.0),
            ..Sample::new(variant, Workload::ConnRate)
        }
    }

    #[test]
    fn ratios_use_the_same_scale_and_routing_everywhere() {
        let plan = Plan {
            scales: vec![1, 100],
            repetitions: 2,
            variants: vec![Variant::Routed, Variant::Iptables, Variant::Bpfmasq],
            workloads: vec![Workload::ConnRate],
            durations: Durations::from_base(1),
        };
        let samples = vec![
            sample(Variant::Routed, 1, 100.0),
            sample(Variant::Routed, 1, 110.0),
            sample(Variant::Iptables, 1, 90.0),
            sample(Variant::Iptables, 100, 50.0),
            sample(Variant::Iptables, 100, 60.0),
            sample(Variant::Bpfmasq, 1, 95.0),
            sample(Variant::Bpfmasq, 100, 99.0),
            sample(Variant::Bpfmasq, 100, 101.0),
        ];
        let rows = rows(&plan, &samples);
        let at100 = rows
            .iter()
            .find(|r| r.metric == Metric::ConnPerSec && r.scale == 100)
            .unwrap();
        let r = at100.bpfmasq_over_iptables.unwrap();
        assert!((r.ratio - 100.0 / 55.0).abs() < 1e-9);
        assert!(r.bpfmasq_better && !r.within_noise);
        let routed = at100.bpfmasq_over_routed.unwrap();
        assert!((routed.ratio - 100.0 / 105.0).abs() < 1e-9);
        assert!(!routed.bpfmasq_better);
        let text = table(&plan, &rows);
        assert!(text.contains("| conn-rate"), "{text}");
        assert!(text.contains("bpfmasq/iptables"));
    }

    #[test]
    fn ratios_read_well() {
        let r = |ratio, within_noise, bpfmasq_better| {
            fmt_ratio(Some(Ratio {
                ratio,
                within_noise,
                bpfmasq_better,
            }))
        };
        assert_eq!(r(1.234, false, true), "**1.23** better");
        assert_eq!(r(0.0004, false, true), "**1/2500** better");
        assert_eq!(r(0.97, true, false), "0.97 (noise)");
        assert_eq!(r(0.8, false, false), "0.80 worse");
        assert_eq!(fmt_ratio(None), "–");
    }

    #[test]
    fn values_are_compact() {
        assert_eq!(fmt_value(27_912.0), "27.9k");
        assert_eq!(fmt_value(490_000.0), "490.0k");
        assert_eq!(fmt_value(1_250_000.0), "1.25M");
        assert_eq!(fmt_value(14.53), "14.5");
        assert_eq!(fmt_value(0.0421), "0.042");
        assert_eq!(fmt_value(0.0), "0");
    }
}
