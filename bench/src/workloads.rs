//! The workloads: each runs its client in the container namespace, pinned
//! to the client CPU, against a server pinned to the other CPU in the
//! outside namespace, and turns the tool's report into metrics.

use std::{
    fs, io,
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use super::{
    lab::{BenchLab, HTTP_PORT, IPERF_PORT, SOCKPERF_TCP_PORT, SOCKPERF_UDP_PORT},
    plan::{Metric, Workload},
    proc::{INTERRUPTED, NsCommand},
};
use bpfmasq::lab::OUTSIDE_ADDR;

/// Beyond its own duration, how long a client may take before it is killed.
const CLIENT_GRACE: Duration = Duration::from_secs(20);
/// wrk's concurrent connections (one thread).
const WRK_CONNECTIONS: &str = "32";
/// At most this share of failed connects before a connect-time sample fails.
const MAX_CONNECT_FAILURES: f64 = 0.01;

/// What one workload run measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub metrics: Vec<(Metric, f64)>,
    /// Units of work done (bytes, packets, connections, round trips), for
    /// CPU time per unit.
    pub work: f64,
    pub command: String,
    /// Tool-specific details kept in the JSON (errors, losses...).
    pub details: Vec<(&'static str, f64)>,
}

/// Runs `workload` (a client workload: not the control plane or the eBPF cost) for `duration`.
pub fn run(lab: &BenchLab, workload: Workload, duration: Duration) -> Result<Measured> {
    let secs = duration.as_secs().max(1).to_string();
    match workload {
        Workload::TcpStream1 => iperf_tcp(lab, &secs, 1),
        Workload::TcpStream4 => iperf_tcp(lab, &secs, 4),
        Workload::Udp64 => iperf_udp(lab, &secs),
        Workload::ConnRate => wrk(lab, &secs),
        Workload::ConnectTime => connect_time(lab, duration),
        Workload::RrUdp => sockperf(lab, &secs, false),
        Workload::RrTcp => sockperf(lab, &secs, true),
        Workload::ControlPlane | Workload::EbpfCost => {
            bail!("{workload} is measured by the variant, not as a client workload")
        }
    }
}

fn client(lab: &BenchLab, program: &str, args: &[&str]) -> NsCommand {
    NsCommand::new(&lab.client, Some(lab.cpus.client), program, args)
}

fn timeout(secs: &str) -> Duration {
    Duration::from_secs(secs.parse().unwrap_or(1)) + CLIENT_GRACE
}

fn iperf_args<'a>(secs: &'a str, port: &'a str, outside: &'a str) -> Vec<&'a str> {
    vec![
        "-c",
        outside,
        "-p",
        port,
        "-t",
        secs,
        "-i",
        "0",
        "--json",
        "--connect-timeout",
        "3000",
    ]
}

fn iperf_tcp(lab: &BenchLab, secs: &str, streams: u32) -> Result<Measured> {
    let port = IPERF_PORT.to_string();
    let outside = OUTSIDE_ADDR.to_string();
    let streams_s = streams.to_string();
    let mut args = iperf_args(secs, &port, &outside);
    args.extend(["-P", streams_s.as_str()]);
    let cmd = client(lab, "iperf3", &args);
    let command = cmd.shown().to_owned();
    let out = cmd.output(timeout(secs))?;
    let report = parse_iperf_tcp(&out.stdout).with_context(|| iperf_failure(&out))?;
    Ok(Measured {
        metrics: vec![(Metric::Gbps, report.gbit_per_s)],
        work: report.bytes,
        command,
        details: vec![("retransmits", report.retransmits)],
    })
}

fn iperf_failure(out: &super::proc::Output) -> String {
    let error = serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned));
    match error {
        Some(error) => format!("{} reported: {error}", out.shown),
        None => format!(
            "{} ({}) gave no usable report: {}",
            out.shown,
            out.status,
            out.stderr.trim()
        ),
    }
}

fn iperf_udp(lab: &BenchLab, secs: &str) -> Result<Measured> {
    let port = IPERF_PORT.to_string();
    let outside = OUTSIDE_ADDR.to_string();
    let mut args = iperf_args(secs, &port, &outside);
    args.extend(["-u", "-l", "64", "-b", "0"]);
    let cmd = client(lab, "iperf3", &args);
    let command = cmd.shown().to_owned();
    let out = cmd.output(timeout(secs))?;
    let report = parse_iperf_udp(&out.stdout).with_context(|| iperf_failure(&out))?;
    Ok(Measured {
        metrics: vec![(Metric::RxKpps, report.received_pps / 1e3)],
        work: report.received,
        command,
        details: vec![
            ("sent_packets", report.sent),
            ("lost_packets", report.sent - report.received),
            ("seconds", report.seconds),
        ],
    })
}

/// The receiver's side of an iperf3 TCP test.
#[derive(Debug, PartialEq)]
pub struct TcpReport {
    pub gbit_per_s: f64,
    pub bytes: f64,
    pub retransmits: f64,
}

pub fn parse_iperf_tcp(json: &str) -> Result<TcpReport> {
    let v: Value = serde_json::from_str(json).context("iperf3 printed no JSON")?;
    if let Some(error) = v["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let received = &v["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 JSON lacks end.sum_received.bits_per_second"))?;
    Ok(TcpReport {
        gbit_per_s: bps / 1e9,
        bytes: received["bytes"].as_f64().unwrap_or(0.0),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
    })
}

/// An iperf3 UDP test as the server (the peer) counted it.
#[derive(Debug, PartialEq)]
pub struct UdpReport {
    pub sent: f64,
    pub received: f64,
    pub seconds: f64,
    pub received_pps: f64,
}

pub fn parse_iperf_udp(json: &str) -> Result<UdpReport> {
    let v: Value = serde_json::from_str(json).context("iperf3 printed no JSON")?;
    if let Some(error) = v["error"].as_str() {
        bail!("iperf3: {error}");
    }
    // end.sum: packets sent, and lost as the server reported them back.
    let sum = &v["end"]["sum"];
    let field = |name: &str| {
        sum[name]
            .as_f64()
            .ok_or_else(|| anyhow!("iperf3 JSON lacks end.sum.{name}"))
    };
    let sent = field("packets")?;
    let lost = field("lost_packets")?;
    let seconds = field("seconds")?;
    if seconds <= 0.0 {
        bail!("iperf3 reported a test of {seconds} s");
    }
    let received = (sent - lost).max(0.0);
    Ok(UdpReport {
        sent,
        received,
        seconds,
        received_pps: received / seconds,
    })
}

fn wrk(lab: &BenchLab, secs: &str) -> Result<Measured> {
    let url = format!("http://{OUTSIDE_ADDR}:{HTTP_PORT}/");
    let duration = format!("{secs}s");
    let cmd = client(
        lab,
        "wrk",
        &[
            "-t",
            "1",
            "-c",
            WRK_CONNECTIONS,
            "-d",
            duration.as_str(),
            "--timeout",
            "2s",
            "-H",
            "Connection: close",
            url.as_str(),
        ],
    );
    let command = cmd.shown().to_owned();
    let out = cmd.run_ok(timeout(secs))?;
    let report =
        parse_wrk(&out.stdout).with_context(|| format!("reading wrk's report:\n{}", out.stdout))?;
    if report.requests <= 0.0 {
        bail!("wrk completed no request:\n{}", out.stdout);
    }
    Ok(Measured {
        metrics: vec![(Metric::ConnPerSec, report.per_second)],
        work: report.requests,
        command,
        details: vec![
            ("requests", report.requests),
            ("socket_errors", report.errors),
            ("non_2xx", report.non_2xx),
        ],
    })
}

/// wrk's summary: every request is a new connection (`Connection: close`).
#[derive(Debug, PartialEq)]
pub struct WrkReport {
    pub per_second: f64,
    pub requests: f64,
    pub errors: f64,
    pub non_2xx: f64,
}

pub fn parse_wrk(text: &str) -> Result<WrkReport> {
    let mut per_second = None;
    let mut requests = None;
    let mut errors = 0.0;
    let mut non_2xx = 0.0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            per_second = rest.trim().parse::<f64>().ok();
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = count.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<f64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().unwrap_or(0.0);
        }
    }
    Ok(WrkReport {
        per_second: per_second.ok_or_else(|| anyhow!("no `Requests/sec:` line"))?,
        requests: requests.ok_or_else(|| anyhow!("no `N requests in` line"))?,
        errors,
        non_2xx,
    })
}

fn sockperf(lab: &BenchLab, secs: &str, tcp: bool) -> Result<Measured> {
    let outside = OUTSIDE_ADDR.to_string();
    let port = if tcp {
        SOCKPERF_TCP_PORT
    } else {
        SOCKPERF_UDP_PORT
    }
    .to_string();
    let mut args = vec![
        "pp",
        "-i",
        outside.as_str(),
        "-p",
        port.as_str(),
        "-t",
        secs,
        "--full-rtt",
    ];
    if tcp {
        args.push("--tcp");
    }
    let cmd = client(lab, "sockperf", &args);
    let command = cmd.shown().to_owned();
    let out = cmd.run_ok(timeout(secs))?;
    let report = parse_sockperf(&out.stdout)
        .with_context(|| format!("reading sockperf's report:\n{}", out.stdout))?;
    Ok(Measured {
        metrics: vec![
            (Metric::P50Us, report.p50_us),
            (Metric::P99Us, report.p99_us),
        ],
        work: report.observations,
        command,
        details: vec![("observations", report.observations)],
    })
}

/// sockperf ping-pong percentiles (round trip, with --full-rtt).
#[derive(Debug, PartialEq)]
pub struct SockperfReport {
    pub p50_us: f64,
    pub p99_us: f64,
    pub observations: f64,
}

pub fn parse_sockperf(text: &str) -> Result<SockperfReport> {
    let percentile = |which: &str| {
        text.lines()
            .find(|l| l.contains(&format!("percentile {which} =")))
            .and_then(|l| l.rsplit('=').next()?.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow!("no `percentile {which}` line"))
    };
    let observations = text
        .lines()
        .find_map(|l| {
            let start = l.find("Total ")? + "Total ".len();
            l[start..].split_whitespace().next()?.parse::<f64>().ok()
        })
        .ok_or_else(|| anyhow!("no `Total N observations` line"))?;
    Ok(SockperfReport {
        p50_us: percentile("50.000")?,
        p99_us: percentile("99.000")?,
        observations,
    })
}

/// connect() durations: one connection at a time from the container to
/// nginx, each closed with a reset (SO_LINGER 0) so no TIME_WAIT piles up.
/// Each connect sends a connection's first packet, the one netfilter runs
/// through its per-container rules.
fn connect_time(lab: &BenchLab, duration: Duration) -> Result<Measured> {
    let target = SocketAddr::V4(SocketAddrV4::new(OUTSIDE_ADDR, HTTP_PORT));
    let cpu = lab.cpus.client;
    let (times, failures) = lab.client.run(move || -> Result<(Vec<u64>, u64)> {
        pin_thread(cpu)?;
        let mut times = Vec::with_capacity(65_536);
        let mut failures = 0u64;
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
                bail!("interrupted");
            }
            let started = Instant::now();
            match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                Ok(stream) => {
                    let elapsed = started.elapsed();
                    reset_on_close(&stream)?;
                    drop(stream);
                    times.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
                }
                Err(_) => failures += 1,
            }
        }
        Ok((times, failures))
    })??;
    let attempts = times.len() as u64 + failures;
    if times.is_empty() || failures as f64 > MAX_CONNECT_FAILURES * attempts as f64 {
        bail!(
            "{failures} of {attempts} connects to {target} failed from `{}`",
            lab.client.name()
        );
    }
    let mut sorted = times;
    sorted.sort_unstable();
    let us = |q: f64| super::stats::quantile_sorted_u64(&sorted, q) / 1e3;
    Ok(Measured {
        metrics: vec![(Metric::P50Us, us(0.5)), (Metric::P99Us, us(0.99))],
        work: sorted.len() as f64,
        command: format!(
            "[{}] (in-process, CPU {cpu}) sequential connect() to {target} for {duration:?}, closed with RST",
            lab.client.name()
        ),
        details: vec![
            ("connects", sorted.len() as f64),
            ("failures", failures as f64),
        ],
    })
}

/// Checks a TCP connection from the container reaches nginx in the outside
/// peer (which has no route back unless the variant routes or translates):
/// a variant that is set up wrong fails here, not as a slow timeout later.
pub fn check_path(lab: &BenchLab) -> Result<()> {
    let target = SocketAddr::V4(SocketAddrV4::new(OUTSIDE_ADDR, HTTP_PORT));
    let mut last = None;
    for _ in 0..3 {
        match lab
            .client
            .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))?
        {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!(
        "no TCP connection from `{}` to {target}: {}",
        lab.client.name(),
        last.map_or_else(String::new, |e| e.to_string())
    ))
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning to CPU {cpu}"))
}

fn reset_on_close(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a properly sized struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setsockopt(SO_LINGER)");
    }
    Ok(())
}

/// Busy and total CPU time of the whole machine (all CPUs), from /proc/stat.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub busy_s: f64,
    pub total_s: f64,
}

impl CpuTimes {
    pub fn now() -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_proc_stat(&stat, clock_ticks())
    }

    pub fn since(self, earlier: Self) -> Self {
        Self {
            busy_s: self.busy_s - earlier.busy_s,
            total_s: self.total_s - earlier.total_s,
        }
    }

    /// Busy share of all CPUs in this interval, 0..1.
    pub fn busy_share(self) -> f64 {
        if self.total_s > 0.0 {
            self.busy_s / self.total_s
        } else {
            0.0
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The aggregate `cpu` line: busy is everything but idle and iowait
/// (guest time is already inside user).
pub fn parse_proc_stat(stat: &str, ticks_per_s: f64) -> Result<CpuTimes> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("/proc/stat has no `cpu` line"))?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .context("reading /proc/stat's cpu line")?;
    if fields.len() < 8 {
        bail!("/proc/stat's cpu line is short: {line}");
    }
    // user nice system idle iowait irq softirq steal
    let idle = fields[3] + fields[4];
    let total: f64 = fields.iter().sum();
    Ok(CpuTimes {
        busy_s: (total - idle) / ticks_per_s,
        total_s: total / ticks_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_tcp_reports_are_read() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bytes":2000,"retransmits":3},
            "sum_received":{"bytes":1000000000,"bits_per_second":14500000000.0}}}"#;
        let r = parse_iperf_tcp(json).unwrap();
        assert_eq!(r.gbit_per_s, 14.5);
        assert_eq!(r.bytes, 1e9);
        assert_eq!(r.retransmits, 3.0);
        assert!(parse_iperf_tcp(r#"{"error":"unable to connect"}"#).is_err());
        assert!(parse_iperf_tcp("not json").is_err());
    }

    #[test]
    fn iperf_udp_reports_count_what_the_peer_received() {
        let json = r#"{"end":{"sum":{"seconds":2.0,"packets":1000000,"lost_packets":200000,
            "bits_per_second":1.0}}}"#;
        let r = parse_iperf_udp(json).unwrap();
        assert_eq!(r.received, 800_000.0);
        assert_eq!(r.received_pps, 400_000.0);
    }

    #[test]
    fn wrk_reports_are_read() {
        let text = "Running 2s test @ http://192.168.61.12/\n  1 threads and 32 connections\n\
                    \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                    \x20   Latency     1.88ms    1.27ms  10.45ms   70.89%\n\
                    \x20 12696 requests in 2.01s, 1.76MB read\n\
                    \x20 Socket errors: connect 0, read 5, write 1, timeout 0\n\
                    Requests/sec:   6310.68\nTransfer/sec:      0.87MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.per_second, 6310.68);
        assert_eq!(r.requests, 12696.0);
        assert_eq!(r.errors, 6.0);
        assert_eq!(r.non_2xx, 0.0);
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn sockperf_reports_are_read() {
        let text = "sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec\n\
                    sockperf: \x1b[2;35mTotal 26606 observations[0m; each percentile contains 266.06 observations\n\
                    sockperf: ---> <MAX> observation = 3707.003\n\
                    sockperf: ---> percentile 99.999 = 3707.003\n\
                    sockperf: ---> percentile 99.000 =  382.766\n\
                    sockperf: ---> percentile 50.000 =   43.521\n";
        let r = parse_sockperf(text).unwrap();
        assert_eq!(r.p50_us, 43.521);
        assert_eq!(r.p99_us, 382.766);
        assert_eq!(r.observations, 26606.0);
    }

    #[test]
    fn proc_stat_busy_time() {
        let stat = "cpu  100 10 50 800 40 5 5 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = parse_proc_stat(stat, 100.0).unwrap();
        assert_eq!(t.busy_s, 1.7);
        assert_eq!(t.total_s, 10.1);
    }
}
