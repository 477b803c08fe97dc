//! `bpfmasq-bench`: the same workloads through every NAT variant (routing,
//! the CNI plugin's iptables and nftables masquerade, bpfmasq) on one lab,
//! in one run, interleaved; a table of medians and ratios, the raw samples
//! as JSON, and an SVG chart.
//!
//! One module per concept: [`plan`] (variants, workloads, schedule),
//! [`lab`] (the bench's lab and servers), [`netfilter`] and [`bpf`] (setting
//! up each variant at N containers, control-plane trials), [`workloads`]
//! (clients and their reports), [`proc`] (children in namespaces, Ctrl-C),
//! [`stats`], [`report`] (table, JSON), [`chart`] (SVG).
//!
//! The run itself is synchronous, on a thread of its own; this async side
//! only watches for Ctrl-C/SIGTERM and raises [`proc::INTERRUPTED`], at
//! which every wait returns and the guards take everything down.

mod bpf;
mod chart;
mod lab;
mod netfilter;
mod plan;
mod proc;
mod report;
mod stats;
mod variants;
mod workloads;

use std::{
    collections::BTreeMap,
    fs,
    io::IsTerminal as _,
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::{
    runtime::Handle,
    signal::unix::{SignalKind, signal},
};

use self::{
    lab::{BenchLab, Cpus, Scratch},
    netfilter::IptablesBackend,
    plan::{Block, CONTROL_TRIALS, Durations, Metric, Plan, Variant, Workload},
    proc::{INTERRUPTED, NsCommand, check_interrupted},
    report::{BlockRecord, Noise, Record, Sample, VariantStatus},
    workloads::CpuTimes,
};
use bpfmasq::privileges::require_root;
use clap::Parser as _;

#[derive(Debug, clap::Parser)]
#[command(
    name = "bpfmasq-bench",
    version,
    about = "Benchmark bpfmasq against iptables and nftables masquerade on one lab, side by side",
    long_about = "Benchmark bpfmasq against iptables and nftables masquerade on one lab, side by \
                  side: the same workloads through every variant, interleaved, as root. \
                  `--quick` is the two-minute smoke run; see BENCHMARKS.md.\n\n\
                  The bpfmasq variant runs the `bpfmasq` binary next to this one \
                  (or $BPFMASQ_BIN)."
)]
pub struct BenchArgs {
    /// A short smoke run (under 2 minutes): N=1 and 100, 2 repetitions of 1 s
    /// samples, the control plane, UDP-64, connection rate and connect time.
    #[arg(long)]
    pub quick: bool,
    /// Write every raw sample (and the summary) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the chart (connection and small-packet rate against N) to FILE.
    #[arg(long, value_name = "FILE", default_value = "bench-results/bench.svg")]
    pub svg: PathBuf,
    /// Do not write the chart.
    #[arg(long, conflicts_with = "svg")]
    pub no_svg: bool,
    /// Registered containers N, comma-separated [default: 1,100,1000,10000; quick: 1,100].
    #[arg(long, value_name = "LIST", value_parser = Scales::parse)]
    pub scales: Option<Scales>,
    /// Interleaved repetitions per cell; medians need at least 5 [default: 5; quick: 2].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repetitions: Option<u32>,
    /// Seconds of the UDP and connection-rate samples; the others take half
    /// (whole seconds, at least 1) [default: 2; quick: 1].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=60))]
    pub duration: Option<u32>,
    /// Variants to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub variants: Vec<Variant>,
    /// Workloads to run, comma-separated [default: all; quick: control-plane,udp-64,conn-rate,connect-time,ebpf-cost].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub workloads: Vec<Workload>,
    /// CPU the clients (in the container) are pinned to.
    #[arg(long, default_value_t = 0, value_name = "CPU")]
    pub client_cpu: usize,
    /// CPU the servers (in the outside peer) are pinned to.
    #[arg(long, default_value_t = 1, value_name = "CPU")]
    pub server_cpu: usize,
    /// Never turn bpf_stats on: skips the ebpf-cost samples (the only ones
    /// it is on for).
    #[arg(long)]
    pub no_bpf_stats: bool,
}

/// The `--scales` list (a newtype: clap would split a plain Vec itself).
#[derive(Clone, Debug)]
pub struct Scales(pub Vec<u32>);

impl Scales {
    fn parse(text: &str) -> Result<Self, String> {
        plan::parse_scales(text).map(Self)
    }
}

/// Tools the bench runs (Debian packages in `cargo xtask setup`).
const TOOLS: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("sockperf", "sockperf"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    ("taskset", "util-linux"),
];

const QUICK_WORKLOADS: [Workload; 5] = [
    Workload::ControlPlane,
    Workload::Udp64,
    Workload::ConnRate,
    Workload::ConnectTime,
    Workload::EbpfCost,
];

/// Everything a run needs, resolved from the arguments.
struct Config {
    plan: Plan,
    cpus: Cpus,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    bpf_stats: bool,
    command: Vec<String>,
}

impl Config {
    fn from_args(args: &BenchArgs) -> Result<Self> {
        let quick = args.quick;
        let scales = args.scales.clone().map(|s| s.0).unwrap_or_else(|| {
            if quick {
                vec![1, 100]
            } else {
                vec![1, 100, 1000, 10_000]
            }
        });
        let repetitions = args.repetitions.unwrap_or(if quick { 2 } else { 5 });
        let duration = args.duration.unwrap_or(if quick { 1 } else { 2 });
        let mut variants = if args.variants.is_empty() {
            Variant::ALL.to_vec()
        } else {
            args.variants.clone()
        };
        variants.sort();
        variants.dedup();
        let mut workloads = if !args.workloads.is_empty() {
            args.workloads.clone()
        } else if quick {
            QUICK_WORKLOADS.to_vec()
        } else {
            Workload::ALL.to_vec()
        };
        if args.no_bpf_stats {
            workloads.retain(|&w| w != Workload::EbpfCost);
        }
        workloads.sort();
        workloads.dedup();
        let cpus = available_cpus();
        for cpu in [args.client_cpu, args.server_cpu] {
            if !cpus.contains(&cpu) {
                bail!("CPU {cpu} is not available here (available: {cpus:?})");
            }
        }
        if args.client_cpu == args.server_cpu {
            eprintln!(
                "warning: client and server share CPU {}: results are not comparable with other runs",
                args.client_cpu
            );
        }
        Ok(Self {
            plan: Plan {
                scales,
                repetitions,
                variants,
                workloads,
                durations: Durations::from_base(duration),
            },
            cpus: Cpus {
                client: args.client_cpu,
                server: args.server_cpu,
            },
            json: args.json.clone(),
            svg: (!args.no_svg).then(|| args.svg.clone()),
            bpf_stats: !args.no_bpf_stats,
            command: std::env::args().collect(),
        })
    }
}

fn available_cpus() -> Vec<usize> {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect()
        })
        .unwrap_or_else(|_| vec![0])
}

fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(&args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfmasq-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: &BenchArgs) -> Result<()> {
    require_root("bpfmasq-bench")?;
    let config = Config::from_args(args)?;
    check_tools()?;
    INTERRUPTED.store(false, Ordering::SeqCst);
    let runtime = Handle::current();
    let worker = std::thread::Builder::new()
        .name("bench".to_owned())
        .spawn(move || Bench::run(config, runtime))
        .context("starting the bench thread")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hangup = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    while !worker.is_finished() {
        let caught = tokio::select! {
            _ = interrupt.recv() => Some("Ctrl-C"),
            _ = terminate.recv() => Some("SIGTERM"),
            _ = hangup.recv() => Some("SIGHUP"),
            () = tokio::time::sleep(Duration::from_millis(50)) => None,
        };
        if let Some(what) = caught
            && !INTERRUPTED.swap(true, Ordering::SeqCst)
        {
            eprintln!(
                "\nbpfmasq-bench: {what}: stopping and removing everything the bench created"
            );
        }
    }
    worker
        .join()
        .map_err(|_| anyhow!("the bench thread panicked (its lab was removed while unwinding)"))?
}

fn check_tools() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| {
            !std::env::split_paths(&path)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .any(|dir| dir.join(tool).is_file())
        })
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "bpfmasq-bench needs {}; `cargo xtask setup` installs them",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The state of one run.
struct Bench {
    config: Config,
    started: Instant,
    samples: Vec<Sample>,
    blocks: Vec<BlockRecord>,
    statuses: Vec<VariantStatus>,
    progress: ProgressBar,
    log_lines: bool,
}

impl Bench {
    fn run(config: Config, runtime: Handle) -> Result<()> {
        let mut bench = Self {
            config,
            started: Instant::now(),
            samples: Vec::new(),
            blocks: Vec::new(),
            statuses: Vec::new(),
            progress: ProgressBar::hidden(),
            log_lines: !std::io::stderr().is_terminal(),
        };
        let name = format!("bench{}", std::process::id());
        let scratch = Scratch::create(&format!("bpfmasq-{name}"))?;
        bench.statuses = bench.probe_variants(&name, &scratch)?;
        let mut noise = Noise {
            loadavg_before: loadavg(),
            ..Noise::default()
        };
        noise.background_busy_before = background_busy()?;
        let mut lab = BenchLab::up(&name, bench.config.cpus, runtime, scratch)?;
        let backend = netfilter::iptables_backend(&lab.host)?;
        if backend == IptablesBackend::Legacy {
            eprintln!(
                "warning: iptables is the legacy backend here: its nat table stays registered in the lab \
                 host after the iptables variant, so conntrack runs for the variants after it"
            );
        }
        let machine = machine_facts(&lab);
        lab.start_servers()?;
        let supported = |v: Variant| bench.statuses.iter().any(|s| s.variant == v && s.supported);
        let schedule = bench.config.plan.blocks(supported);
        let total: usize = schedule.iter().map(|b| b.workloads.len()).sum();
        eprintln!(
            "bench: {} variant set-ups, {total} samples, about {:.0} min (client CPU {}, server CPU {})",
            schedule.len(),
            bench.config.plan.estimate_s(&schedule) / 60.0,
            bench.config.cpus.client,
            bench.config.cpus.server
        );
        bench.progress = progress_bar(total as u64);
        for block in &schedule {
            bench.run_block(&mut lab, block, backend)?;
        }
        bench.progress.finish_and_clear();
        let servers = lab.server_commands();
        drop(lab);
        noise.background_busy_after = background_busy()?;
        noise.loadavg_after = loadavg();
        bench.finish(noise, machine, servers)
    }

    /// Which variants can run; the flowtable one needs a kernel feature.
    fn probe_variants(&self, name: &str, scratch: &Scratch) -> Result<Vec<VariantStatus>> {
        let mut statuses = Vec::new();
        for &variant in &self.config.plan.variants {
            let reason = if variant == Variant::NftablesFlowtable {
                netfilter::probe_flowtable(&format!("{name}-ftprobe"), scratch.path())?.err()
            } else {
                None
            };
            if let Some(reason) = &reason {
                eprintln!("{variant}: unsupported here: {reason}");
            }
            statuses.push(VariantStatus {
                variant,
                supported: reason.is_none(),
                reason,
            });
        }
        Ok(statuses)
    }

    fn run_block(
        &mut self,
        lab: &mut BenchLab,
        block: &Block,
        backend: IptablesBackend,
    ) -> Result<()> {
        check_interrupted()?;
        let reps = self.config.plan.repetitions;
        let what = format!(
            "rep {}/{reps} · N={} · {}",
            block.repetition + 1,
            block.scale,
            block.variant
        );
        if self.log_lines {
            eprintln!(
                "bench: {what} ({:.0} s)",
                self.started.elapsed().as_secs_f64()
            );
        }
        self.progress.set_message(format!("{what} · setting up"));
        let setup_started = Instant::now();
        let active = Active::setup(lab, block, backend)
            .with_context(|| format!("setting up {} with N={}", block.variant, block.scale))?;
        let setup_s = setup_started.elapsed().as_secs_f64();
        let measured = (|| -> Result<()> {
            for &workload in &block.workloads {
                check_interrupted()?;
                self.progress.set_message(format!("{what} · {workload}"));
                let sample = self.sample(lab, &active, block, workload)?;
                if let Some(error) = &sample.error {
                    self.progress.suspend(|| {
                        eprintln!(
                            "warning: {} N={} {workload} failed twice: {error}",
                            block.variant, block.scale
                        );
                    });
                }
                self.samples.push(sample);
                self.progress.inc(1);
            }
            Ok(())
        })();
        let teardown_started = Instant::now();
        let torn_down = active.teardown(lab, backend);
        self.blocks.push(BlockRecord {
            repetition: block.repetition,
            scale: block.scale,
            variant: block.variant,
            setup_s,
            teardown_s: teardown_started.elapsed().as_secs_f64(),
        });
        measured?;
        torn_down.with_context(|| format!("tearing down {} with N={}", block.variant, block.scale))
    }

    /// One sample, tried twice (a fresh iperf3 server in between); a second
    /// failure is recorded in the sample, an interruption ends the run.
    fn sample(
        &self,
        lab: &mut BenchLab,
        active: &Active,
        block: &Block,
        workload: Workload,
    ) -> Result<Sample> {
        let mut last_error = String::new();
        for attempt in 1..=2 {
            let started_s = self.started.elapsed().as_secs_f64();
            let clock = Instant::now();
            match self.measure(lab, active, workload) {
                Ok(mut sample) => {
                    sample.repetition = block.repetition;
                    sample.scale = block.scale;
                    sample.variant = block.variant;
                    sample.started_s = started_s;
                    sample.elapsed_s = clock.elapsed().as_secs_f64();
                    sample.attempts = attempt;
                    return Ok(sample);
                }
                Err(e) => {
                    check_interrupted()?;
                    last_error = format!("{e:#}");
                    lab.check_servers()?;
                    if matches!(
                        workload,
                        Workload::TcpStream1
                            | Workload::TcpStream4
                            | Workload::Udp64
                            | Workload::EbpfCost
                    ) {
                        lab.restart_iperf()?;
                    }
                    proc::sleep(Duration::from_millis(500))?;
                }
            }
        }
        Ok(Sample {
            repetition: block.repetition,
            scale: block.scale,
            started_s: self.started.elapsed().as_secs_f64(),
            ok: false,
            error: Some(last_error),
            attempts: 2,
            ..Sample::new(block.variant, workload)
        })
    }

    /// Runs `workload` once and checks its figures are sane (finite, > 0).
    fn measure(&self, lab: &BenchLab, active: &Active, workload: Workload) -> Result<Sample> {
        let mut sample = Sample::new(active.variant, workload);
        if workload == Workload::ControlPlane {
            let mut adds = Vec::new();
            let mut removes = Vec::new();
            for _ in 0..CONTROL_TRIALS {
                check_interrupted()?;
                let trial = active.trial(lab)?;
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                sample.trials_ms.push([ms(trial.add), ms(trial.remove)]);
                adds.push(ms(trial.add));
                removes.push(ms(trial.remove));
            }
            let median = |v: &[f64]| stats::Summary::of(v).map_or(f64::NAN, |s| s.median);
            sample.metrics.insert(Metric::AddMs, median(&adds));
            sample.metrics.insert(Metric::RemoveMs, median(&removes));
            sample.command = active.trial_description();
        } else if workload == Workload::EbpfCost {
            let Some(programs) = active.programs else {
                bail!("the eBPF cost needs bpfmasq's programs");
            };
            // Statistics cost two clock reads per program run (several hundred
            // ns in some VMs): on only for this sample, never for the others.
            let _stats = bpf::StatsGuard::enable()?;
            let mut commands = Vec::new();
            for (load, metric) in [
                (Workload::Udp64, Metric::BpfNsUdp),
                (Workload::ConnRate, Metric::BpfNsConn),
            ] {
                check_interrupted()?;
                let before = bpf::run_stats(&programs)?;
                let measured =
                    workloads::run(lab, load, self.config.plan.durations.of(workload) / 2)?;
                let after = bpf::run_stats(&programs)?;
                let [egress, ingress, bridge] = [0, 1, 2].map(|i| after[i].since(before[i]));
                // Per packet crossing the host: the bridge's program runs
                // for the same outgoing packets as the egress one, so its
                // time adds to theirs without adding runs.
                let total = bpf::RunStats {
                    run_time_ns: egress.run_time_ns + ingress.run_time_ns + bridge.run_time_ns,
                    run_count: egress.run_count + ingress.run_count,
                };
                if let Some(ns) = total.ns_per_run() {
                    sample.metrics.insert(metric, ns);
                }
                sample.bpf.push(report::BpfRun {
                    load,
                    egress,
                    ingress,
                    bridge,
                });
                commands.push(measured.command);
            }
            sample.command = format!("with bpf_stats on: {}", commands.join("; "));
        } else {
            let cpu_before = CpuTimes::now()?;
            let measured = workloads::run(lab, workload, self.config.plan.durations.of(workload))?;
            let cpu = CpuTimes::now()?.since(cpu_before);
            sample.metrics.extend(measured.metrics.iter().copied());
            sample.command = measured.command;
            sample.details.extend(measured.details.iter().copied());
            sample.work_units = Some(measured.work);
            sample.cpu_busy_s = Some(cpu.busy_s);
            sample.cpu_busy_share = Some(cpu.busy_share());
            if let Some((_, scale)) = workload.work_unit()
                && measured.work > 0.0
            {
                sample
                    .metrics
                    .insert(Metric::CpuPerUnit, cpu.busy_s * scale / measured.work);
            }
        }
        if let Some((metric, value)) = sample
            .metrics
            .iter()
            .find(|(_, v)| !v.is_finite() || **v <= 0.0)
        {
            bail!("implausible {}: {value}", metric.key());
        }
        Ok(sample)
    }

    fn finish(
        mut self,
        mut noise: Noise,
        machine: BTreeMap<&'static str, String>,
        servers: Vec<String>,
    ) -> Result<()> {
        let plan = &self.config.plan;
        let rows = report::rows(plan, &self.samples);
        noise.failed_samples = self.samples.iter().filter(|s| !s.ok).count();
        noise.fill_spreads(&rows);
        println!();
        for status in self.statuses.iter().filter(|s| !s.supported) {
            println!(
                "{}: unsupported here: {}",
                status.variant,
                status.reason.as_deref().unwrap_or("")
            );
        }
        println!(
            "Medians of {} interleaved repetitions [min–max]; ratios are bpfmasq's median over the other's, \
             \"(noise)\" where the min–max ranges overlap. routed has no per-container state: measured \
             once per repetition, it stands for every N. Latency, CPU and cost: lower is better.\n",
            plan.repetitions
        );
        print!("{}", report::table(plan, &rows));
        println!();
        print!("{}", noise.describe());
        if plan.repetitions < 5 {
            println!("note: fewer than 5 repetitions: the medians are indicative only");
        }
        if plan.workloads.contains(&Workload::EbpfCost) {
            println!(
                "note: bpf_stats (kernel-wide) was on only during the ebpf-cost samples; its two clock \
                 reads per program run are inside those figures, not in bpfmasq's other numbers"
            );
        }
        if let Some(path) = &self.config.svg {
            let subtitle = format!(
                "{} reps, {} s samples, kernel {}",
                plan.repetitions,
                plan.durations.long_s,
                machine.get("kernel").map_or("?", String::as_str)
            );
            chart::write_svg(path, plan, &rows, &subtitle)?;
            println!("chart: {}", path.display());
        }
        if let Some(path) = &self.config.json {
            let record = Record {
                tool: "bpfmasq-bench",
                version: env!("CARGO_PKG_VERSION"),
                command: std::mem::take(&mut self.config.command),
                started_unix_s: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .saturating_sub(self.started.elapsed().as_secs()),
                duration_s: self.started.elapsed().as_secs_f64(),
                machine,
                plan,
                cpus: self.config.cpus,
                bpf_stats: self.config.bpf_stats,
                variants: &self.statuses,
                servers,
                noise: &noise,
                blocks: &self.blocks,
                samples: &self.samples,
                summary: &rows,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let text = serde_json::to_string_pretty(&record)?;
            fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("samples: {}", path.display());
        }
        println!("took {:.0} s", self.started.elapsed().as_secs_f64());
        // A cell with no successful sample at all is a failed run.
        let empty: Vec<String> = self
            .blocks_cells()
            .into_iter()
            .filter(|(v, w)| {
                !self
                    .samples
                    .iter()
                    .any(|s| s.ok && s.variant == *v && s.workload == *w)
            })
            .map(|(v, w)| format!("{v} {w}"))
            .collect();
        if !empty.is_empty() {
            bail!("no successful sample for: {}", empty.join(", "));
        }
        Ok(())
    }

    /// Every (variant, workload) pair that was scheduled.
    fn blocks_cells(&self) -> Vec<(Variant, Workload)> {
        let mut cells: Vec<(Variant, Workload)> = self
            .samples
            .iter()
            .map(|s| (s.variant, s.workload))
            .collect();
        cells.sort();
        cells.dedup();
        cells
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} samples, ETA {eta} · {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A variant set up in the lab's host.
struct Active {
    variant: Variant,
    /// bpfmasq: its programs (for the eBPF cost sample).
    programs: Option<[u32; 3]>,
    host_ns: String,
}

impl Active {
    fn setup(lab: &BenchLab, block: &Block, backend: IptablesBackend) -> Result<Self> {
        let programs = variants::of(block.variant).set_up(lab, block.scale)?;
        let active = Self {
            variant: block.variant,
            programs,
            host_ns: lab.host.name().to_owned(),
        };
        if let Err(e) = workloads::check_path(lab) {
            // Undo what was set up before reporting.
            let _ = active.teardown(lab, backend);
            return Err(e.context(format!("{} does not carry traffic", block.variant)));
        }
        Ok(active)
    }

    fn teardown(self, lab: &BenchLab, backend: IptablesBackend) -> Result<()> {
        variants::of(self.variant).tear_down(lab, backend)
    }

    fn trial(&self, lab: &BenchLab) -> Result<netfilter::Trial> {
        variants::of(self.variant).trial(lab)
    }

    fn trial_description(&self) -> String {
        format!(
            "[{}] {}; median of {CONTROL_TRIALS} trials",
            self.host_ns,
            variants::of(self.variant).trial_description()
        )
    }
}

/// Busy share of all CPUs over one idle second: work that is not ours.
fn background_busy() -> Result<f64> {
    let before = CpuTimes::now()?;
    proc::sleep(Duration::from_secs(1))?;
    Ok(CpuTimes::now()?.since(before).busy_share())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Kernel, CPUs and tool versions, for the record. Asked inside the lab's
/// host namespace like every other netfilter command.
fn machine_facts(lab: &BenchLab) -> BTreeMap<&'static str, String> {
    let mut facts = BTreeMap::new();
    let uname = nix::sys::utsname::uname().ok();
    if let Some(u) = &uname {
        facts.insert("kernel", u.release().to_string_lossy().into_owned());
    }
    facts.insert("cpus", available_cpus().len().to_string());
    if let Ok(cpuinfo) = fs::read_to_string("/proc/cpuinfo")
        && let Some(model) = cpuinfo.lines().find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
    {
        facts.insert("cpu_model", model);
    }
    let versions: [(&'static str, &str, &[&str]); 6] = [
        ("iperf3", "iperf3", &["--version"]),
        ("wrk", "wrk", &["--version"]),
        ("nginx", "nginx", &["-v"]),
        ("sockperf", "sockperf", &["--version"]),
        ("iptables", "iptables", &["-V"]),
        ("nft", "nft", &["-v"]),
    ];
    for (key, program, args) in versions {
        if let Ok(out) =
            NsCommand::new(&lab.host, None, program, args).output(Duration::from_secs(10))
        {
            let text = format!("{}{}", out.stdout, out.stderr);
            let line = text
                .lines()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_owned();
            facts.insert(key, line);
        }
    }
    facts
}
