//! `bpfmasq run --metrics-address`: a real Prometheus (Debian's package)
//! in the lab's host scrapes the daemon and sees the packets the test sent
//! through the NAT and the flows `conntrack count` sees; the exposition has
//! a series for every counter `stats` shows and passes `promtool check
//! metrics`; silent clients neither stall the GC nor other scrapes; an
//! address in use stops `run` before it attaches anything; the README's
//! scrape config and alerts are valid.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use bpfmasq_e2e::{
    Lab,
    daemon_support::{Daemon, eventually, host_json, run_args},
    echo,
    http::{self, Response},
    product::bpfmasq,
    prometheus::Prometheus,
    refusal::assert_refused,
    topology::{HOST, HOST_UPLINK_ADDR, OUT, OUTSIDE_ADDR, container, container_addr},
    udp::{self, UdpEchoServer},
};
use serde_json::Value;

/// Where the daemon serves its metrics, inside the lab's host.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9781);
const UDP_PORT: u16 = 5301;
/// A small port range, so that three flows are a visible share of it.
const PORT_RANGE: &str = "40000-40009";
const PORTS_IN_RANGE: f64 = 10.0;
/// How long Prometheus may take to show a change (it scrapes every second).
const SCRAPE_LAG: Duration = Duration::from_secs(30);

fn metrics_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--metrics-address".to_owned(),
        METRICS.to_string(),
        "--gc-interval".to_owned(),
        "1".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn start_daemon(lab: &Lab, extra: &[&str]) -> Daemon {
    let args = metrics_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut daemon, _) = Daemon::start(lab, &args);
    daemon.wait_for("serving Prometheus metrics", Duration::from_secs(5));
    daemon
}

/// `GET /metrics` from the lab's host; panics unless it answers 200.
fn scrape(lab: &Lab) -> Response {
    let response =
        http::get(lab, HOST, METRICS, "/metrics").unwrap_or_else(|e| panic!("scraping: {e}"));
    assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
    response
}

/// The samples of an exposition: series (name and labels as written) and value.
fn samples(exposition: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn conntrack_count(lab: &Lab, extra: &[&str]) -> u64 {
    let mut verb = vec!["conntrack", "count", "--json"];
    verb.extend_from_slice(extra);
    host_json(lab, &verb)["flows"]
        .as_u64()
        .expect("conntrack count --json prints {\"flows\": N}")
}

#[test]
fn prometheus_sees_the_packets_sent_through_the_nat_and_the_flows_conntrack_counts() {
    let lab = Lab::up("metrics", 2);
    let server = UdpEchoServer::spawn(&lab, OUT, SocketAddrV4::new(OUTSIDE_ADDR, UDP_PORT), "out");
    let daemon = start_daemon(&lab, &["--port-range", PORT_RANGE]);
    let prometheus = Prometheus::start(&lab, HOST, METRICS);
    let translated = |direction: &str| {
        prometheus.value(&format!(
            "bpfmasq_translated_packets_total{{direction=\"{direction}\"}}"
        ))
    };
    let (out_before, in_before) = eventually(
        "Prometheus has the translated packets counters",
        SCRAPE_LAG,
        || Some((translated("out")?, translated("in")?)),
        || prometheus.diagnostics(),
    );

    // Three flows: one socket in c1, two in c2; 20 requests, each answered.
    let sockets: Vec<_> = [1, 2, 2]
        .into_iter()
        .map(|i| {
            udp::bind(&lab, &container(i), SocketAddrV4::new(container_addr(i), 0))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let destination = SocketAddrV4::new(OUTSIDE_ADDR, UDP_PORT);
    for n in 0..20 {
        let payload = format!("request {n}");
        let reply = udp::request(&sockets[n % sockets.len()], destination, payload.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\n{}", daemon.output()));
        assert_eq!(reply, echo::reply("out", payload.as_bytes()));
    }
    // What crossed the NAT is what the peer received (a request resent
    // after a lost answer crossed twice), all from the NAT address.
    let requests = server.requests();
    assert!(
        requests.iter().all(|r| *r.peer.ip() == HOST_UPLINK_ADDR),
        "the peer saw sources other than the NAT address: {:?}",
        udp::peers(&requests)
    );
    let sent = requests.len() as f64;
    eventually(
        &format!(
            "bpfmasq_translated_packets_total grows by the {sent} requests out and their answers in"
        ),
        SCRAPE_LAG,
        || {
            (translated("out")? == out_before + sent && translated("in")? == in_before + sent)
                .then_some(())
        },
        || {
            format!(
                "out {:?} (before {out_before}), in {:?} (before {in_before})\n{}",
                translated("out"),
                translated("in"),
                prometheus.diagnostics()
            )
        },
    );

    let flows_in_prometheus = || prometheus.value("sum(bpfmasq_flows)");
    let count = eventually(
        "sum(bpfmasq_flows) matches `conntrack count`",
        SCRAPE_LAG,
        || {
            let count = conntrack_count(&lab, &[]);
            (flows_in_prometheus()? == count as f64).then_some(count)
        },
        || {
            format!(
                "Prometheus {:?}, conntrack count {}",
                flows_in_prometheus(),
                conntrack_count(&lab, &[])
            )
        },
    );
    assert_eq!(count, 3, "three sockets, three flows");
    assert_eq!(conntrack_count(&lab, &["--proto", "udp"]), 3);
    assert_eq!(
        // Answered: REPLIED after one answer, STREAM once traffic followed it.
        prometheus.value(r#"sum(bpfmasq_flows{protocol="udp",state=~"REPLIED|STREAM"})"#),
        Some(3.0)
    );
    assert_eq!(prometheus.value("bpfmasq_conntrack_entries"), Some(6.0));
    let capacity = prometheus
        .value("bpfmasq_conntrack_capacity")
        .expect("bpfmasq_conntrack_capacity");
    assert_eq!(
        prometheus.value(r#"bpfmasq_map_pressure{map="CONNTRACK"}"#),
        Some(6.0 / capacity)
    );
    let usage = prometheus.query("bpfmasq_nat_port_usage_ratio");
    assert_eq!(usage.len(), 1, "one destination: {usage:?}");
    assert_eq!(usage[0].label("protocol"), Some("udp"));
    assert_eq!(
        usage[0].label("destination"),
        Some(destination.to_string().as_str())
    );
    assert_eq!(usage[0].value, 3.0 / PORTS_IN_RANGE);
    let runs = prometheus.value("bpfmasq_gc_runs_total").unwrap_or(0.0);
    assert!(runs >= 1.0, "the GC ran every second: {runs} runs");
}

#[test]
fn every_counter_stats_shows_is_a_series_and_promtool_finds_nothing_to_fix() {
    let lab = Lab::up("exposition", 1);
    let _daemon = start_daemon(&lab, &[]);
    let response = scrape(&lab);
    assert_eq!(
        response.content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask setup` installs it)");
    std::io::Write::write_all(
        &mut promtool.stdin.take().expect("promtool's stdin"),
        response.body.as_bytes(),
    )
    .expect("feeding promtool");
    let checked = promtool.wait_with_output().expect("promtool");
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && problems.trim().is_empty(),
        "promtool check metrics: {problems}\n{}",
        response.body
    );

    // No traffic: the counters stand still, so the scrape and `stats` agree.
    let stats = host_json(&lab, &["stats", "--json"]);
    let stats = stats.as_object().expect("stats --json is an object");
    let datapath_counters: Vec<(String, f64)> = samples(&response.body)
        .into_iter()
        .filter(|(series, _)| {
            let name = series.split('{').next().unwrap_or_default();
            name.ends_with("_total") && !name.starts_with("bpfmasq_gc_")
        })
        .collect();
    assert_eq!(
        datapath_counters.len(),
        stats.len(),
        "one series per datapath counter; stats shows {:?}, the scrape {datapath_counters:?}",
        stats.keys().collect::<Vec<_>>()
    );
    let mut scraped: Vec<f64> = datapath_counters.iter().map(|(_, v)| *v).collect();
    let mut shown: Vec<f64> = stats.values().filter_map(Value::as_f64).collect();
    scraped.sort_by(f64::total_cmp);
    shown.sort_by(f64::total_cmp);
    assert_eq!(scraped, shown, "the scrape's values are not stats' values");
    // The families with a reason label carry every counter of theirs.
    for (prefix, family) in [
        ("drop_", "bpfmasq_drops_total"),
        ("passed_", "bpfmasq_passed_packets_total"),
        ("fallback_", "bpfmasq_fallbacks_total"),
    ] {
        for name in stats.keys().filter_map(|n| n.strip_prefix(prefix)) {
            let series = format!("{family}{{reason=\"{name}\"}}");
            assert!(
                datapath_counters.iter().any(|(s, _)| *s == series),
                "no series {series} in\n{}",
                response.body
            );
        }
    }
}

#[test]
fn silent_clients_neither_stall_the_gc_nor_other_scrapes() {
    let lab = Lab::up("silent", 1);
    let daemon = start_daemon(&lab, &[]);
    let gc_runs = |lab: &Lab| {
        samples(&scrape(lab).body)
            .into_iter()
            .find(|(series, _)| series == "bpfmasq_gc_runs_total")
            .map(|(_, runs)| runs)
            .expect("bpfmasq_gc_runs_total")
    };
    // Connections that never send a request, and one that sends half of one.
    let mut silent: Vec<TcpStream> = (0..20)
        .map(|_| http::connect(&lab, HOST, METRICS).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let mut half = http::connect(&lab, HOST, METRICS).unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(&mut half, b"GET /metr").expect("half a request");
    silent.push(half);

    let before = gc_runs(&lab);
    thread::sleep(Duration::from_secs(3));
    let after = gc_runs(&lab);
    assert!(
        after >= before + 2.0,
        "the GC (every second) ran {} times in 3 s while clients held connections\n{}",
        after - before,
        daemon.output()
    );
    // The daemon closes them at its deadline rather than keeping them.
    let waited = Instant::now();
    for mut stream in silent {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("read timeout");
        let mut rest = Vec::new();
        let read = stream.read_to_end(&mut rest);
        assert!(
            read.is_ok(),
            "a silent connection was not closed by the daemon within {:?}: {read:?}",
            waited.elapsed()
        );
    }
}

#[test]
fn an_address_in_use_stops_run_before_it_attaches_anything() {
    let lab = Lab::up("inuse", 1);
    let _taken = lab
        .run_in(HOST, || TcpListener::bind(METRICS))
        .expect("binding the metrics address first");
    let args = run_args(
        &lab,
        &metrics_args(&[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let out = bpfmasq(&args);
    assert_refused(
        &out,
        &format!("bpfmasq {}", args.join(" ")),
        &["listening for metrics on 127.0.0.1:9781", "in use"],
    );
    assert!(
        !lab.pins_dir().exists(),
        "run attached although it could not serve its metrics"
    );
}

#[test]
fn the_readmes_scrape_config_and_alerts_pass_promtool() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Metrics section");
    let yaml: Vec<&str> = section
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .collect();
    let [scrape_config, rules] = yaml.as_slice() else {
        panic!("the Metrics section should show a scrape config and a rules file: {yaml:?}");
    };
    let dir = std::env::temp_dir().join(format!("bpfmasq-e2e-readme-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("{scrape_config}rule_files:\n  - rules.yml\n"),
    )
    .expect("config");
    std::fs::write(dir.join("rules.yml"), rules).expect("rules");
    let checked = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        checked.status.success(),
        "promtool check config (and its rules): {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("3 rules found"),
        "three alerts expected: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
}
