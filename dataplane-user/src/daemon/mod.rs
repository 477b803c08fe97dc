//! `bpfmasq run`, the foreground daemon, and `bpfmasq gc`.
//!
//! The datapath never depends on the daemon: programs, links and maps live
//! in pins, so the daemon may stop, crash or be upgraded at any time without
//! a packet noticing. Starting, it attaches, or adopts what an earlier run or
//! `attach` pinned (new programs swapped in atomically, maps and flows kept).
//! Running, it expires flows and follows the uplink's address, and with
//! `--metrics-address` serves Prometheus metrics (`crate::metrics`).

mod addresses;
pub mod lock;
pub mod notify;
mod pressure;

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use dataplane_common::{
    config::{AttachMode, DatapathRecord, NatConfig},
    maps,
};
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    task::JoinHandle,
    time::MissedTickBehavior,
};

use self::{
    addresses::{AddressWatch, primary_ipv4},
    pressure::PressureWatch,
};
use crate::{
    datapath::{
        self,
        flows::ConntrackMap,
        gc::{self, SweepReport},
        instance::{Instance, netns_label},
        layout, loader,
        options::{AttachOptions, LinkType, Resolved},
        pinned,
        tc::{self, AttachRecord, Interfaces},
    },
    inspect::{Query, trace},
    metrics::{self, Exposition, GcMetrics},
    netlink::Netlink,
    privileges::{require_datapath_capabilities, require_root},
};

/// What `run` is asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub attach: AttachOptions,
    /// Detach the datapath when the daemon stops (else it stays, pinned).
    pub detach_on_exit: bool,
    /// Time between garbage-collection sweeps.
    pub gc_interval: Duration,
    /// Where to serve Prometheus metrics on `GET /metrics` (`None`: nowhere).
    pub metrics_address: Option<SocketAddr>,
}

pub async fn run(netns: Option<&str>, args: &RunOptions) -> Result<()> {
    require_root("bpfmasq run")?;
    require_datapath_capabilities("bpfmasq run")?;
    // Caught from the start: a signal arriving while the datapath is being
    // attached is handled once that is done, instead of killing it half-way.
    let mut signals = Signals::new()?;
    let netlink = Netlink::connect()?;
    let resolved = Resolved::resolve(&netlink, &args.attach).await?;
    let instance = Instance::new(&netns_label(netns)?, &resolved.uplink);
    let _lock = lock::acquire(&instance)?;
    // Bound before attaching: an address in use stops the daemon before it
    // changes anything.
    let metrics_listener = match args.metrics_address {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("listening for metrics on {address}"))?,
        ),
        None => None,
    };
    // Subscribed before the datapath is configured with the address just
    // resolved, so that a change in between is not missed.
    let follow = args.attach.nat_address.is_none();
    let mut watch = follow.then(AddressWatch::subscribe).transpose()?;

    let started = if args.attach.takeover && !instance.dir().exists() {
        let (mut ebpf, (config, record), report) =
            crate::takeover::attach_fresh(&netlink, &instance, &resolved, args.attach.link_type)
                .await?;
        println!("bpfmasq run: {}", report.describe());
        Started {
            how: How::Attached,
            program_ids: loader::program_ids(&mut ebpf)?,
            config,
            record,
        }
    } else {
        start(&netlink, &instance, &resolved, args.attach.link_type).await?
    };
    let fast_path = datapath::fast_path_state(args.attach.fast_path, &resolved);
    let described = started.describe(&instance, args, follow, &fast_path);
    println!("{described}");
    // Only now is traffic masqueraded: `Type=notify` units order on this.
    if let Err(e) = notify::ready(&described) {
        eprintln!("bpfmasq run: warning: {e:#}");
    }
    let mut daemon = Daemon {
        table: pinned::conntrack(&instance)?,
        instance,
        uplink_ifindex: resolved.uplink_ifindex,
        warned_no_address: false,
        gc_metrics: GcMetrics::default(),
    };
    let metrics_server = metrics_listener
        .map(|listener| serve_metrics(listener, &daemon))
        .transpose()?;
    if follow {
        daemon.follow_address(&netlink).await?;
    }
    let mut pressure = PressureWatch::new(&daemon.instance);

    let mut gc_timer = tokio::time::interval(args.gc_interval);
    // A slow sweep (a huge table) delays the next one rather than bunching them.
    gc_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stopped_by = loop {
        tokio::select! {
            name = signals.recv() => break name,
            _ = gc_timer.tick() => {
                daemon.sweep()?;
                // A trace that was killed leaves its bit set, and the
                // datapath would keep reporting to nobody: clear it.
                if let Err(e) = trace::reconcile(&daemon.instance) {
                    eprintln!("bpfmasq run: warning: checking which traces run: {e:#}");
                }
                if let Some(warning) = pressure.check(&daemon.instance) {
                    eprintln!("bpfmasq run: warning: {warning}");
                }
            }
            changed = address_changed(&mut watch, daemon.uplink_ifindex) => match changed {
                Ok(()) => daemon.follow_address(&netlink).await?,
                Err(e) => {
                    eprintln!(
                        "bpfmasq run: warning: {e:#}; no longer following the address of {}",
                        daemon.instance.uplink
                    );
                    watch = None;
                }
            },
        }
    };
    drop(watch);
    if let Some(server) = metrics_server {
        server.abort();
    }

    let instance = &daemon.instance;
    if args.detach_on_exit {
        datapath::detach_instance(&netlink, instance)
            .await
            .with_context(|| format!("{stopped_by}: stopping, with --detach-on-exit"))?;
        println!(
            "bpfmasq run: {stopped_by}: stopped; detached from {} in network namespace `{}` and removed its pins",
            instance.uplink, instance.netns
        );
    } else {
        println!(
            "bpfmasq run: {stopped_by}: stopped; the datapath stays attached and pinned in {} \
             (a new `bpfmasq run` adopts it, `bpfmasq detach` removes it)",
            instance.dir().display()
        );
    }
    Ok(())
}

/// Starts answering `GET /metrics` on `listener`, on this runtime.
fn serve_metrics(listener: TcpListener, daemon: &Daemon) -> Result<JoinHandle<()>> {
    let address = listener
        .local_addr()
        .context("reading the metrics address")?;
    let exposition = Exposition::new(daemon.instance.clone(), daemon.gc_metrics.clone());
    println!("bpfmasq run: serving Prometheus metrics on http://{address}/metrics");
    Ok(tokio::spawn(metrics::serve(listener, Arc::new(exposition))))
}

/// SIGINT and SIGTERM, the two ways to stop the daemon cleanly.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        let catch = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing a {name} handler"))
        };
        Ok(Self {
            interrupt: catch(SignalKind::interrupt(), "SIGINT")?,
            terminate: catch(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// Waits for the next address notification that may concern the uplink;
/// never returns when the address is not followed.
async fn address_changed(watch: &mut Option<AddressWatch>, ifindex: u32) -> Result<()> {
    match watch {
        Some(watch) => watch.changed(ifindex).await,
        None => std::future::pending().await,
    }
}

/// How the daemon came to own the datapath.
enum How {
    Attached,
    Adopted,
    /// A pinned datapath was there but could not carry traffic any more (the
    /// reason): it was removed and a new one attached.
    Reattached(String),
}

struct Started {
    how: How,
    config: NatConfig,
    record: DatapathRecord,
    /// Uplink egress, uplink ingress, bridge ingress.
    program_ids: [u32; 3],
}

impl Started {
    fn describe(
        &self,
        instance: &Instance,
        args: &RunOptions,
        follow: bool,
        fast_path: &str,
    ) -> String {
        let c = &self.config;
        let what = match &self.how {
            How::Attached => "attached to".to_owned(),
            How::Adopted => {
                "adopted the datapath (maps and flows kept, programs swapped in) on".to_owned()
            }
            How::Reattached(reason) => {
                format!("removed a defunct pinned datapath ({reason}) and attached a new one to")
            }
        };
        let prefix = u32::from_be(c.pod_mask).count_ones();
        let r = &self.record;
        let timeouts: Vec<String> = r
            .timeouts
            .named()
            .iter()
            .map(|(name, secs)| format!("{name}={secs}"))
            .collect();
        let [egress, ingress, bridge] = self.program_ids;
        format!(
            "bpfmasq run: {what} {} in network namespace `{}` ({}, program ids egress {egress} ingress {ingress} \
             bridge {bridge}, fast path {}): \
             masquerading {}/{prefix} to {}{} (ports {}-{}, up to {} flows; timeouts {}), GC every {}s, pinned in {}",
            instance.uplink,
            instance.netns,
            mode_name(r.attach_mode()),
            fast_path,
            addr(c.pod_net),
            addr(c.nat_addr),
            if follow {
                " following the uplink's address"
            } else {
                " (fixed by --nat-address)"
            },
            c.port_min,
            c.port_max,
            r.ct_max,
            timeouts.join(" "),
            args.gc_interval.as_secs(),
            instance.dir().display()
        )
    }
}

fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Tcx => "tcx",
        AttachMode::Clsact => "clsact",
        AttachMode::None => "not attached",
    }
}

fn addr(raw: u32) -> Ipv4Addr {
    Ipv4Addr::from(raw.to_ne_bytes())
}

/// Attaches, or adopts the pinned datapath: loads the new programs against
/// the pinned maps and swaps them in without a gap. A pinned datapath that
/// can no longer carry traffic (its interface was re-created...) is removed
/// and replaced by a fresh one; its flows were dead anyway.
async fn start(
    netlink: &Netlink,
    instance: &Instance,
    resolved: &Resolved,
    link_type: LinkType,
) -> Result<Started> {
    if !instance.dir().exists() {
        return attach_new(netlink, instance, resolved, link_type, How::Attached).await;
    }
    // Another version's pins are refused, not taken for defunct: removing
    // them would cut every flow of a datapath that still works.
    layout::check(instance)?;
    let read = pinned::read_config(instance).and_then(|config| {
        let record = pinned::read_record(instance)?;
        Ok((config, record))
    });
    let (pinned_config, pinned) = match read {
        Ok(both) => both,
        Err(e) => {
            let reason = format!("its CONFIG or RECORD cannot be read: {e:#}");
            return reattach(netlink, instance, resolved, link_type, reason).await;
        }
    };
    if let Some(reason) = tc::defunct_reason(instance, (&pinned_config, &pinned), resolved) {
        return reattach(netlink, instance, resolved, link_type, reason).await;
    }
    warn_about_kept_settings(&pinned, resolved, link_type);
    // A program the kernel rejects fails here, with the pinned datapath untouched.
    let (mut ebpf, config, record) = datapath::load_adopting(instance, resolved, &pinned)?;
    let ifaces = Interfaces::resolved(resolved);
    if let Err(e) = tc::replace(
        &mut ebpf,
        instance,
        &ifaces,
        &AttachRecord::from_record(&pinned),
    ) {
        if pinned.attach_mode() != AttachMode::Clsact {
            return Err(e.context("adopting the pinned datapath"));
        }
        // clsact filters vanish with their qdisc (a `tc qdisc del`, a
        // re-created interface): replacing them is how that shows.
        drop(ebpf);
        let reason = format!("its clsact filters could not be replaced: {e:#}");
        return reattach(netlink, instance, resolved, link_type, reason).await;
    }
    Ok(Started {
        how: How::Adopted,
        program_ids: loader::program_ids(&mut ebpf)?,
        config,
        record,
    })
}

async fn attach_new(
    netlink: &Netlink,
    instance: &Instance,
    resolved: &Resolved,
    link_type: LinkType,
    how: How,
) -> Result<Started> {
    let (mut ebpf, config, record) =
        datapath::attach_fresh(netlink, instance, resolved, link_type).await?;
    Ok(Started {
        how,
        program_ids: loader::program_ids(&mut ebpf)?,
        config,
        record,
    })
}

async fn reattach(
    netlink: &Netlink,
    instance: &Instance,
    resolved: &Resolved,
    link_type: LinkType,
    reason: String,
) -> Result<Started> {
    eprintln!(
        "bpfmasq run: warning: the datapath pinned in {} is defunct ({reason}); removing it and attaching a new one",
        instance.dir().display()
    );
    if let Err(e) = datapath::detach_instance(netlink, instance).await {
        // Leftovers of a dead datapath must not keep a working one from starting.
        eprintln!("bpfmasq run: warning: removing the defunct datapath: {e:#}");
    }
    attach_new(
        netlink,
        instance,
        resolved,
        link_type,
        How::Reattached(reason),
    )
    .await
}

/// Settings an adopted datapath keeps whatever the command line says.
fn warn_about_kept_settings(pinned: &DatapathRecord, resolved: &Resolved, link_type: LinkType) {
    if resolved.ct_max != pinned.ct_max {
        eprintln!(
            "bpfmasq run: warning: --ct-max {} not applied: the pinned table holds up to {} flows \
             and keeps its size (`bpfmasq detach` first to resize it, losing the flows)",
            resolved.ct_max, pinned.ct_max
        );
    }
    let wanted = match link_type {
        LinkType::Auto => None,
        LinkType::Tcx => Some(AttachMode::Tcx),
        LinkType::Clsact => Some(AttachMode::Clsact),
    };
    if wanted.is_some_and(|mode| mode != pinned.attach_mode()) {
        eprintln!(
            "bpfmasq run: warning: --link-type {link_type:?} not applied: the pinned datapath is attached with {} \
             (`bpfmasq detach` first to change it)",
            mode_name(pinned.attach_mode())
        );
    }
}

/// The running daemon's state.
struct Daemon {
    instance: Instance,
    uplink_ifindex: u32,
    table: ConntrackMap,
    /// Warn once per stretch without an address, not on every notification.
    warned_no_address: bool,
    /// Sweeps counted for the metrics endpoint (kept without one: cheap).
    gc_metrics: GcMetrics,
}

impl Daemon {
    /// Someone ran `bpfmasq detach` (or removed the pins): the maps this
    /// daemon holds are no longer the datapath's; stop rather than tend them.
    fn ensure_pinned(&self) -> Result<()> {
        if self.instance.pin(maps::CONFIG).exists() {
            return Ok(());
        }
        bail!(
            "the datapath's pins in {} are gone (detached by someone else?); stopping",
            self.instance.dir().display()
        )
    }

    /// One GC sweep with the configuration as it is in the map now (timeouts
    /// and NAT address may have changed); logged when it removed anything.
    /// A failing sweep is reported and retried at the next tick.
    fn sweep(&mut self) -> Result<Option<SweepReport>> {
        self.ensure_pinned()?;
        let table = &mut self.table;
        let swept = gc::sweep_pinned(&self.instance, table);
        match swept {
            Ok(report) => {
                self.gc_metrics.record(&report);
                if report.expired + report.rebound + report.orphans > 0 {
                    eprintln!(
                        "bpfmasq run: gc: removed {} expired and {} rebound flows and {} orphan halves \
                         of {} flows ({} entries) in {:.3}s",
                        report.expired,
                        report.rebound,
                        report.orphans,
                        report.flows,
                        report.entries,
                        report.duration.as_secs_f64()
                    );
                }
                Ok(Some(report))
            }
            Err(e) => {
                self.gc_metrics.record_failure();
                eprintln!("bpfmasq run: warning: gc sweep failed: {e:#}");
                Ok(None)
            }
        }
    }

    /// Looks up the uplink's primary IPv4 address; when it changed, new
    /// flows get the new one (CONFIG) and flows bound to the old one are
    /// flushed at once (a sweep removes them as `rebound`).
    async fn follow_address(&mut self, netlink: &Netlink) -> Result<()> {
        self.ensure_pinned()?;
        let uplink = self.instance.uplink.clone();
        let mut config = pinned::read_config(&self.instance)?;
        let old = addr(config.nat_addr);
        let new = match primary_ipv4(netlink, self.uplink_ifindex).await {
            Ok(Some(new)) => new,
            Ok(None) => {
                if !self.warned_no_address {
                    eprintln!(
                        "bpfmasq run: warning: {uplink} has no IPv4 address now; still masquerading to {old}"
                    );
                    self.warned_no_address = true;
                }
                return Ok(());
            }
            Err(e) => {
                eprintln!("bpfmasq run: warning: looking up the addresses of {uplink}: {e:#}");
                return Ok(());
            }
        };
        self.warned_no_address = false;
        if new == old {
            return Ok(());
        }
        config.nat_addr = u32::from_ne_bytes(new.octets());
        if let Err(e) = pinned::write_config(&self.instance, &config) {
            eprintln!(
                "bpfmasq run: warning: {uplink}'s address is now {new}, but updating the datapath failed: {e:#}"
            );
            return Ok(());
        }
        let flushed = self
            .sweep()?
            .map_or_else(|| "?".to_owned(), |r| r.rebound.to_string());
        eprintln!(
            "bpfmasq run: the primary address of {uplink} changed from {old} to {new}: \
             new flows leave from {new}; {flushed} flows bound to {old} flushed"
        );
        Ok(())
    }
}

/// One sweep now, reported.
pub fn gc_once(netns: Option<&str>, args: &Query) -> Result<()> {
    require_root("bpfmasq gc")?;
    let instance = Instance::find(&netns_label(netns)?, args.uplink.as_deref())?;
    let report = gc::sweep_pinned(&instance, &mut pinned::conntrack(&instance)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "swept {} entries ({} flows) in {:.3}s: {} expired, {} rebound to a new NAT address, {} orphan halves removed",
            report.entries,
            report.flows,
            report.duration.as_secs_f64(),
            report.expired,
            report.rebound,
            report.orphans
        );
    }
    Ok(())
}
