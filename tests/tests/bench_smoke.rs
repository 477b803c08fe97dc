//! `bpfmasq-bench --quick` as CI runs it: the harness sets up every variant,
//! measures, writes sane JSON and the chart, and leaves nothing behind.
//! Speeds are not checked (CI machines are shared and noisy), only that
//! every supported variant produced positive, finite figures.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bpfmasq::netns::NetNs;
use bpfmasq_e2e::{
    lab::PIN_ROOT,
    process::{self, describe},
    product::{bin, require_root},
};
use serde_json::Value;

/// `--quick` is meant to take well under 2 minutes; CI may be slower.
const TIMEOUT: Duration = Duration::from_secs(240);

/// Removes the bench's output files, whatever happens.
struct Outputs {
    json: PathBuf,
    svg: PathBuf,
}

impl Drop for Outputs {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.json);
        let _ = fs::remove_file(&self.svg);
    }
}

fn bench_namespaces() -> BTreeSet<String> {
    NetNs::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.starts_with("bench"))
        .collect()
}

fn bench_pins() -> BTreeSet<String> {
    fs::read_dir(PIN_ROOT)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("bench"))
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn quick_bench_measures_every_supported_variant_and_cleans_up() {
    require_root();
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let outputs = Outputs {
        json: dir.join(format!("bpfmasq-bench-smoke-{pid}.json")),
        svg: dir.join(format!("bpfmasq-bench-smoke-{pid}.svg")),
    };
    let namespaces_before = bench_namespaces();
    let pins_before = bench_pins();
    let stats_before = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok();

    // Built next to bpfmasq, which it runs for the bpfmasq variant.
    let bench = bin().with_file_name("bpfmasq-bench");
    let out = process::run(
        Command::new(&bench)
            .env("BPFMASQ_BIN", bin())
            .args(["--quick", "--json"])
            .arg(&outputs.json)
            .arg("--svg")
            .arg(&outputs.svg),
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "`bpfmasq-bench --quick` failed: {}",
        describe(&out)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("bpfmasq/iptables"),
        "no ratio table:\n{table}"
    );

    // Nothing left behind.
    assert_eq!(
        bench_namespaces(),
        namespaces_before,
        "bench namespaces left"
    );
    assert_eq!(
        bench_pins(),
        pins_before,
        "bench pins left under {PIN_ROOT}"
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").ok(),
        stats_before,
        "kernel.bpf_stats_enabled changed"
    );

    let svg = read(&outputs.svg);
    assert!(
        svg.contains("<svg") && svg.contains("conn"),
        "not the chart:\n{svg:.300}"
    );

    let record: Value = serde_json::from_str(&read(&outputs.json)).expect("the JSON parses");
    let samples = record["samples"].as_array().expect("samples");
    let workloads: Vec<&str> = record["plan"]["workloads"]
        .as_array()
        .expect("plan.workloads")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!workloads.is_empty());
    let variants = record["variants"].as_array().expect("variants");
    for expected in [
        "routed",
        "iptables",
        "nftables",
        "nftables-flowtable",
        "bpfmasq",
        "bpfmasq-fast",
    ] {
        assert!(
            variants.iter().any(|v| v["variant"] == expected),
            "variant {expected} missing from {variants:?}"
        );
    }
    for status in variants {
        let variant = status["variant"].as_str().expect("variant name");
        if status["supported"] != true {
            assert!(
                status["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{variant} is unsupported without a reason"
            );
            assert!(
                !samples.iter().any(|s| s["variant"] == variant),
                "unsupported {variant} has samples"
            );
            continue;
        }
        for &workload in &workloads {
            let applies = match workload {
                "control-plane" => variant != "routed",
                "ebpf-cost" => variant.starts_with("bpfmasq"),
                _ => true,
            };
            if !applies {
                continue;
            }
            let ok: Vec<&Value> = samples
                .iter()
                .filter(|s| s["variant"] == variant && s["workload"] == workload && s["ok"] == true)
                .collect();
            assert!(!ok.is_empty(), "no successful {variant} {workload} sample");
            for sample in ok {
                let metrics = sample["metrics"].as_object().expect("metrics");
                assert!(!metrics.is_empty(), "{variant} {workload}: no metrics");
                for (name, value) in metrics {
                    let value = value.as_f64().unwrap_or(f64::NAN);
                    assert!(
                        value.is_finite() && value > 0.0,
                        "{variant} {workload}: {name} = {value}"
                    );
                }
                if !matches!(workload, "control-plane" | "ebpf-cost") {
                    assert!(
                        sample["cpu_busy_s"].as_f64().is_some_and(|c| c >= 0.0),
                        "{variant} {workload}: no CPU time"
                    );
                }
            }
        }
    }
    // bpfmasq's datapath cost comes from bpf_stats, on only for that sample.
    assert!(
        workloads.contains(&"ebpf-cost"),
        "the quick run measures the eBPF cost"
    );
    assert!(
        samples.iter().any(|s| s["workload"] == "ebpf-cost"
            && s["metrics"]["bpf_ns_per_run_udp"]
                .as_f64()
                .is_some_and(|ns| ns > 0.0)
            && s["metrics"]["bpf_ns_per_run_conn"]
                .as_f64()
                .is_some_and(|ns| ns > 0.0)),
        "no eBPF ns/run figure for bpfmasq"
    );
    let summary = record["summary"].as_array().expect("summary");
    for ratio in ["bpfmasq_over_iptables", "fast_over_iptables"] {
        assert!(
            summary.iter().any(|r| r[ratio]["ratio"].as_f64().is_some()),
            "no {ratio} ratio in the summary"
        );
    }
}
