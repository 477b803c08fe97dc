//! A real Prometheus server (Debian's `prometheus` package) inside a lab
//! node, scraping one target every second, with its own configuration and
//! storage in a scratch folder; queried through its HTTP API. The
//! [`Prometheus`] guard kills it and removes the folder when dropped, panic
//! or not.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use process_group::kill_group;
use serde_json::Value;

use crate::{
    daemon_support::eventually,
    http::{self, encode_query_value},
    lab::Lab,
    product::bin,
};

/// Where Prometheus listens inside its node.
pub const LISTEN: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9090);
/// The job name of the scraped target.
pub const JOB: &str = "bpfmasq";
/// How long Prometheus may take to start and scrape its target once.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One series of a query's answer: its labels and value.
#[derive(Clone, Debug)]
pub struct Series {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Series {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name)?.as_str()
    }
}

/// A running Prometheus; killed, and its folder removed, when dropped.
#[derive(Debug)]
pub struct Prometheus<'lab> {
    lab: &'lab Lab,
    node: String,
    dir: PathBuf,
    child: Child,
}

impl<'lab> Prometheus<'lab> {
    /// Starts Prometheus in `node` of `lab`, scraping `target` (as seen
    /// from that node) every second, and waits until a scrape succeeded.
    pub fn start(lab: &'lab Lab, node: &str, target: SocketAddrV4) -> Self {
        let dir = std::env::temp_dir().join(format!("bpfmasq-e2e-prometheus-{}", lab.name()));
        // Left over from a killed run of the same lab name: start clean.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).expect("creating Prometheus' folder");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        fs::write(dir.join("prometheus.yml"), config).expect("writing prometheus.yml");
        let log = fs::File::create(dir.join("prometheus.log")).expect("creating prometheus.log");
        let child = Command::new(bin())
            .args([
                "lab",
                "exec",
                "--name",
                lab.name(),
                node,
                "--",
                "prometheus",
            ])
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            // Its own group: killed with whatever `lab exec` started.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start prometheus (`cargo xtask setup` installs it): {e}")
            });
        let prometheus = Self {
            lab,
            node: node.to_owned(),
            dir,
            child,
        };
        eventually(
            &format!("Prometheus scrapes {target}"),
            READY_TIMEOUT,
            || {
                let up = prometheus.try_query(&format!("up{{job=\"{JOB}\"}}")).ok()?;
                (up.len() == 1 && up[0].value == 1.0).then_some(())
            },
            || prometheus.diagnostics(),
        );
        prometheus
    }

    /// The answer to the instant query `expr`; panics when Prometheus
    /// answers with an error.
    pub fn query(&self, expr: &str) -> Vec<Series> {
        self.try_query(expr)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.diagnostics()))
    }

    /// The value of a query answered by exactly one series, if it is.
    pub fn value(&self, expr: &str) -> Option<f64> {
        match self.try_query(expr).ok()?.as_slice() {
            [only] => Some(only.value),
            _ => None,
        }
    }

    /// The instant query `expr` through `/api/v1/query`.
    pub fn try_query(&self, expr: &str) -> Result<Vec<Series>, String> {
        let target = format!("/api/v1/query?query={}", encode_query_value(expr));
        let response = http::get(self.lab, &self.node, LISTEN, &target)
            .map_err(|e| format!("query `{expr}`: {e}"))?;
        let answer: Value = serde_json::from_str(&response.body).map_err(|e| {
            format!(
                "query `{expr}`: HTTP {} with no JSON ({e}): {}",
                response.status, response.body
            )
        })?;
        if answer["status"] != "success" {
            return Err(format!("query `{expr}` failed: {answer}"));
        }
        let results = answer["data"]["result"]
            .as_array()
            .ok_or_else(|| format!("query `{expr}`: no result vector in {answer}"))?;
        results
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("query `{expr}`: no value in {r}"))?;
                let labels = r["metric"].as_object().cloned().unwrap_or_default();
                Ok(Series { labels, value })
            })
            .collect()
    }

    /// The scrape target's health and Prometheus' log, for assertion messages.
    pub fn diagnostics(&self) -> String {
        let targets = http::get(self.lab, &self.node, LISTEN, "/api/v1/targets")
            .map_or_else(|e| e.to_string(), |r| r.body);
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        format!(
            "Prometheus targets: {targets}\nPrometheus log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        kill_group(&mut self.child);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {e}", self.dir.display());
        }
    }
}
