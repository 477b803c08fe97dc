//! Switching a live host between the CNI plugin's masquerade rules and
//! bpfmasq without dropping a connection.
//!
//! Takeover (`attach --takeover`, `run --takeover`): dump nf_conntrack's
//! source-NAT entries of the pod network through ctnetlink; attach with
//! the fast path off (every packet still crosses netfilter, which keeps
//! translating); move each connection over on its own: its flow written
//! (same NAT port, TCP state mapped, marked [`IMPORTED`]), its nf_conntrack
//! entry deleted (an entry keeps NATing its connection after the rules are
//! gone) — the masquerade rules saved and removed just before; dump again
//! and move what started in between; switch the fast path on if asked.
//!
//! Handback (`detach --handback`): switch the fast path off, then for every
//! live flow create an nf_conntrack entry with the same source-NAT binding
//! and remove the flow; re-create the rules the takeover saved (or the
//! plugin's shape for the pod network); give away the flows that started
//! meanwhile; only then detach. Entries come before rules: a connection
//! that starts once the rules are back gets a port netfilter knows to be
//! taken. One connection is never translated by both at once (see
//! [`attach_fresh`]).
//!
//! What the takeover removed is recorded in [`record_path`] (a tmpfs, like
//! the pins: both are gone after a reboot).

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, MapError},
};
use dataplane_common::{
    config::{DatapathRecord, FLAG_FAST_PATH, NatConfig},
    conntrack::{FlowState, IMPORTED, SEEN_ACK, SEEN_FIN, SEEN_RST, SEEN_SYN, Timeouts},
    flow::{FlowEntry, FlowKey, IPPROTO_TCP, IPPROTO_UDP, nat_flow_pair},
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{
        self,
        flows::{self, ConntrackMap, FlowView, monotonic_ns},
        instance::{Instance, RUN_ROOT, netns_label},
        options::{AttachOptions, LinkType, Resolved},
        pinned,
    },
    netfilter::{
        MasqBackend, UntrackedReplies, backend, backends,
        cni::{self, Container},
        ctnetlink::{Ctnetlink, SnatEntry, TcpState},
    },
    netlink::Netlink,
    privileges::require_root,
};

/// bpf_map_update_elem flag: fail if the key exists (a port claim).
const BPF_NOEXIST: u64 = 1;
/// Tries at replacing a flow's nf_conntrack entry while its packets keep
/// creating a new one in between.
const CREATE_ATTEMPTS: u32 = 5;

/// What `attach --takeover` removed, kept for `detach --handback`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub pod_cidr: String,
    /// `(backend name, text that restores its rules)`.
    pub removed: Vec<(String, String)>,
    pub imported: usize,
}

/// `/run/bpfmasq/takeover/<netns>/<uplink>.json`.
pub fn record_path(instance: &Instance) -> PathBuf {
    PathBuf::from(RUN_ROOT)
        .join("takeover")
        .join(&instance.netns)
        .join(format!("{}.json", instance.uplink))
}

impl Record {
    fn load(instance: &Instance) -> Result<Option<Self>> {
        let path = record_path(instance);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn store(&self, instance: &Instance) -> Result<()> {
        let path = record_path(instance);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// Removes `instance`'s takeover record, if any (detach, handback).
pub fn forget(instance: &Instance) {
    let path = record_path(instance);
    let _ = std::fs::remove_file(&path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// What a takeover did, for the one line `attach --takeover` prints.
#[derive(Debug, Default)]
pub struct Report {
    pub imported: usize,
    /// Imported by the second dump: started between the first and the rules' removal.
    pub imported_late: usize,
    /// Source-NATed to another address than bpfmasq's (left to netfilter).
    pub other_nat_address: usize,
    /// Source-NATed but neither TCP nor UDP (their next packet starts a new flow).
    pub other_protocols: usize,
    /// Flows whose table slot was taken (full table, or a port already held).
    pub not_written: usize,
    /// Backends whose rules were removed.
    pub removed: Vec<&'static str>,
    pub seconds: f64,
}

impl Report {
    pub fn describe(&self) -> String {
        let mut line = if self.imported == 0 {
            "took over: no source-NAT connection of the pod network in nf_conntrack, nothing imported".to_owned()
        } else {
            format!(
                "took over: imported {} connection(s) from nf_conntrack with their NAT ports{}",
                self.imported,
                if self.imported_late > 0 {
                    format!(" ({} started during the switch)", self.imported_late)
                } else {
                    String::new()
                }
            )
        };
        if self.removed.is_empty() {
            line.push_str("; no CNI masquerade rules found, none removed");
        } else {
            line.push_str(&format!(
                "; removed the CNI masquerade rules ({})",
                self.removed.join(", ")
            ));
        }
        for (count, what) in [
            (
                self.other_nat_address,
                "masqueraded to another address, left to netfilter",
            ),
            (self.other_protocols, "neither TCP nor UDP, not imported"),
            (
                self.not_written,
                "could not be written (table full or port taken)",
            ),
        ] {
            if count > 0 {
                line.push_str(&format!("; {count} {what}"));
            }
        }
        line.push_str(&format!(" in {:.2}s", self.seconds));
        line
    }
}

fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The `state` bits of the original and reply halves for nf_conntrack's TCP state.
pub fn tcp_state_bits(state: TcpState) -> (u8, u8) {
    let open = SEEN_SYN | SEEN_ACK;
    match state {
        TcpState::SynSent => (SEEN_SYN, 0),
        TcpState::SynRecv => (SEEN_SYN, open),
        TcpState::FinWait => (open | SEEN_FIN, open),
        TcpState::CloseWait => (open, open | SEEN_FIN),
        TcpState::LastAck | TcpState::TimeWait => (open | SEEN_FIN, open | SEEN_FIN),
        TcpState::Close => (open | SEEN_RST, open),
        TcpState::Established | TcpState::Other(_) => (open, open),
    }
}

/// nf_conntrack's TCP state for a flow in `state`.
pub fn tcp_state_of(state: FlowState) -> TcpState {
    match state {
        FlowState::TcpSynSent => TcpState::SynSent,
        FlowState::TcpSynRecv => TcpState::SynRecv,
        FlowState::TcpFinWait => TcpState::FinWait,
        FlowState::TcpCloseWait => TcpState::CloseWait,
        FlowState::TcpTimeWait => TcpState::TimeWait,
        FlowState::TcpClose => TcpState::Close,
        _ => TcpState::Established,
    }
}

/// The flow bpfmasq keeps for an nf_conntrack source-NAT entry, both
/// halves marked imported.
pub fn imported_pair(entry: &SnatEntry, now_ns: u64) -> [(FlowKey, FlowEntry); 2] {
    let key = FlowKey::new(
        be(*entry.pod.ip()),
        be(*entry.peer.ip()),
        entry.pod.port().to_be(),
        entry.peer.port().to_be(),
        entry.proto,
    );
    let (original, reply) = entry.tcp_state.map_or((0, 0), tcp_state_bits);
    nat_flow_pair(
        key,
        be(*entry.nat.ip()),
        entry.nat.port().to_be(),
        original | IMPORTED,
        reply | IMPORTED,
        now_ns,
    )
}

/// Writes `pair` (reply half first, claiming its port); false if the port
/// is already held by another flow or the table is full.
pub fn write_pair<T>(
    table: &mut HashMap<T, FlowKey, FlowEntry>,
    pair: &[(FlowKey, FlowEntry); 2],
) -> Result<bool>
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
{
    let [(reply_key, reply), (key, original)] = pair;
    match table.insert(reply_key, reply, BPF_NOEXIST) {
        Ok(()) => {}
        Err(MapError::SyscallError(e))
            if matches!(
                e.io_error.raw_os_error(),
                Some(libc::EEXIST | libc::E2BIG | libc::ENOMEM)
            ) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e).context("writing a flow into the conntrack map"),
    }
    if let Err(e) = table.insert(key, original, 0) {
        let _ = table.remove(reply_key);
        return match e {
            MapError::SyscallError(ref s)
                if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOMEM)) =>
            {
                Ok(false)
            }
            e => Err(e).context("writing a flow into the conntrack map"),
        };
    }
    Ok(true)
}

/// The rules of each backend that masquerade `pod_cidr`; a backend whose
/// tools are not installed holds none.
fn find_rules(pod_cidr: Ipv4Net) -> Result<Vec<(&'static dyn MasqBackend, String)>> {
    let mut found = Vec::new();
    for backend in backends() {
        if backend.check_tools().is_err() {
            continue;
        }
        if let Some(rules) = backend.find(pod_cidr).with_context(|| {
            format!("looking for the CNI masquerade rules in {}", backend.name())
        })? {
            found.push((backend, rules));
        }
    }
    Ok(found)
}

/// `attach --takeover`.
pub async fn attach(netns: Option<&str>, args: &AttachOptions) -> Result<()> {
    require_root("bpfmasq attach --takeover")?;
    let netlink = Netlink::connect()?;
    let resolved = Resolved::resolve(&netlink, args).await?;
    let instance = Instance::new(&netns_label(netns)?, &resolved.uplink);
    datapath::refuse_if_attached(&instance, netns)?;
    let (_, (_, record), report) =
        attach_fresh(&netlink, &instance, &resolved, args.link_type).await?;
    println!(
        "{}",
        datapath::attached_line(&instance, &resolved, &record, args.fast_path)
    );
    println!("{}", report.describe());
    Ok(())
}

/// Takes over from netfilter and attaches a new datapath in `instance`
/// (absent). Until the programs are attached nothing is changed: a failed
/// dump or load leaves the host as it was.
///
/// The datapath starts with the fast path off, so that every packet still
/// crosses netfilter, which keeps translating the connections it has. Each
/// connection then moves on its own: its flow is written (the reply half
/// claims the port), and its nf_conntrack entry deleted right after. Both
/// must not translate one connection at once: netfilter would see a reply
/// bpfmasq already translated back as a new connection clashing with its
/// own entry, and give it another source port (the pod answers that with
/// a reset); [`UntrackedReplies`] covers the instant between the two steps.
/// The rules are removed before the first connection moves; a
/// connection that starts while the others move is bpfmasq's, and a port
/// it took from a connection not yet moved shows as "could not be
/// written". The fast path is switched on at the end, when asked for.
pub async fn attach_fresh(
    netlink: &Netlink,
    instance: &Instance,
    resolved: &Resolved,
    link_type: LinkType,
) -> Result<(Ebpf, (NatConfig, DatapathRecord), Report)> {
    let started = Instant::now();
    let pod_cidr = resolved.pod_cidr;
    let nat_addr = resolved.nat_addr;
    let mut report = Report::default();
    let rules = find_rules(pod_cidr)?;
    let mut ct = Ctnetlink::open()?;
    let first = ct
        .dump_snat(pod_cidr)
        .context("nothing was changed (no rule removed, nothing attached)")?;
    report.other_protocols = first.other_protocols;
    let (ours, theirs): (Vec<SnatEntry>, Vec<SnatEntry>) = first
        .entries
        .into_iter()
        .partition(|e| *e.nat.ip() == nat_addr);
    report.other_nat_address = theirs.len();

    let untracked = UntrackedReplies::install(&resolved.uplink, pod_cidr)?;
    let through_netfilter = Resolved {
        fast_path: false,
        ..resolved.clone()
    };
    let (ebpf, mut config, datapath_record) =
        datapath::attach_fresh(netlink, instance, &through_netfilter, link_type).await?;

    // Attached: from here on an error leaves bpfmasq attached, which is
    // safe beside the rules (netfilter translates first, bpfmasq passes
    // what leaves with the NAT address).
    let mut record = Record {
        pod_cidr: pod_cidr.to_string(),
        removed: rules
            .iter()
            .map(|(b, text)| (b.name().to_owned(), text.clone()))
            .collect(),
        imported: 0,
    };
    record.store(instance)?;
    // The rules stop masquerading first: a connection moved over while
    // they still do would be masqueraded again by netfilter, as new, at its
    // next packet (with whatever port netfilter picks). What translates the
    // connections not moved yet stays until they all are.
    for (backend, text) in &rules {
        backend.disarm(text).with_context(|| {
            format!(
                "bpfmasq is attached, but the {} masquerade rules could not be removed",
                backend.name()
            )
        })?;
    }
    let mut table = pinned::conntrack(instance)?;
    let mut imported = move_over(&mut ct, &mut table, &ours, &mut report)?;
    // Connections netfilter masqueraded between the first dump and the
    // rules' removal.
    let known: HashSet<(u8, SocketAddrV4, SocketAddrV4)> =
        ours.iter().map(|e| (e.proto, e.pod, e.peer)).collect();
    let second = ct
        .dump_snat(pod_cidr)
        .context("bpfmasq is attached and the rules are removed, but the second dump failed")?;
    let late: Vec<SnatEntry> = second
        .entries
        .into_iter()
        .filter(|e| *e.nat.ip() == nat_addr && !known.contains(&(e.proto, e.pod, e.peer)))
        .collect();
    report.imported_late = move_over(&mut ct, &mut table, &late, &mut report)?;
    imported += report.imported_late;
    for (backend, text) in &rules {
        backend.finish(text).with_context(|| {
            format!(
                "bpfmasq is attached, but the {} masquerade rules could not be removed",
                backend.name()
            )
        })?;
        report.removed.push(backend.name());
    }

    drop(untracked);
    if resolved.fast_path {
        config.flags |= FLAG_FAST_PATH;
        pinned::write_config(instance, &config).context("switching the fast path on")?;
    }
    report.imported = imported;
    record.imported = imported;
    record.store(instance)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((ebpf, (config, datapath_record), report))
}

/// Moves `entries` from nf_conntrack to the datapath one by one: the flow
/// written, netfilter's entry deleted. Returns how many moved.
fn move_over(
    ct: &mut Ctnetlink,
    table: &mut ConntrackMap,
    entries: &[SnatEntry],
    report: &mut Report,
) -> Result<usize> {
    let mut moved = 0;
    for entry in entries {
        let pair = imported_pair(entry, monotonic_ns());
        if !write_pair(table, &pair)? {
            report.not_written += 1;
            continue;
        }
        ct.delete(entry)?;
        // A UDP packet netfilter translated in between made the datapath
        // yield the flow to the host (it came from the NAT address): again.
        if table.get(&pair[0].0, 0).is_err() {
            write_pair(table, &pair)?;
        }
        moved += 1;
    }
    Ok(moved)
}

/// `detach --handback`.
pub async fn detach(netns: Option<&str>, uplink: Option<&str>) -> Result<()> {
    require_root("bpfmasq detach --handback")?;
    let instance = Instance::find(&netns_label(netns)?, uplink)?;
    let config = pinned::read_config(&instance).context("reading the datapath's configuration")?;
    let pod_cidr = pod_cidr_of(&config)?;
    let record = Record::load(&instance)?;
    let rules: Vec<(&'static dyn MasqBackend, String)> = match &record {
        Some(record) if !record.removed.is_empty() => record
            .removed
            .iter()
            .map(|(name, text)| {
                backend(name)
                    .map(|b| (b, text.clone()))
                    .ok_or_else(|| anyhow!("the takeover record names an unknown backend `{name}`"))
            })
            .collect::<Result<_>>()?,
        _ => vec![(
            backend("iptables").expect("built in"),
            cni_shape(&instance, pod_cidr),
        )],
    };
    // Everything that can fail for want of a tool fails here, before any change.
    for (backend, _) in &rules {
        backend
            .check_tools()
            .context("nothing was changed, bpfmasq stays attached")?;
    }
    let mut ct = Ctnetlink::open().context("nothing was changed, bpfmasq stays attached")?;

    // Every packet through netfilter from now on: it must see each
    // connection it is given (the fast path goes round it).
    if config.fast_path() {
        let through_netfilter = NatConfig {
            flags: config.flags & !FLAG_FAST_PATH,
            ..config
        };
        pinned::write_config(&instance, &through_netfilter)?;
    }
    let untracked = UntrackedReplies::install(&instance.uplink, pod_cidr)?;
    let result = hand_back(&instance, &config, &mut ct, &rules);
    drop(untracked);
    if result.is_err() && config.fast_path() {
        let _ = pinned::write_config(&instance, &config);
    }
    let handed = result?;
    let netlink = Netlink::connect()?;
    datapath::detach_instance(&netlink, &instance).await?;
    forget(&instance);
    let names: Vec<&str> = rules.iter().map(|(b, _)| b.name()).collect();
    println!(
        "handed back: {handed} connection(s) given to nf_conntrack with their NAT ports, {} masquerade rules {}; detached from {} in network namespace `{}`",
        names.join(" and "),
        if record.is_some() {
            "restored"
        } else {
            "created (the CNI plugin's shape for the pod network)"
        },
        instance.uplink,
        instance.netns
    );
    Ok(())
}

/// Puts netfilter's nat hooks back, gives every live flow to nf_conntrack
/// (then removes it from the datapath, reply half first, so that netfilter
/// alone translates it), restores `rules`, and gives away the flows that
/// started meanwhile.
/// Returns how many flows were given.
fn hand_back(
    instance: &Instance,
    config: &NatConfig,
    ct: &mut Ctnetlink,
    rules: &[(&'static dyn MasqBackend, String)],
) -> Result<usize> {
    for (backend, text) in rules {
        backend.restore_hooks(text).with_context(|| {
            format!(
                "the {} nat hooks could not be restored; bpfmasq stays attached",
                backend.name()
            )
        })?;
    }
    let timeouts = pinned::read_record(instance)?.timeouts;
    let mut table = pinned::conntrack(instance)?;
    let mut given = HashSet::new();
    hand_back_flows(&mut table, (config, &timeouts), ct, &mut given)?;
    for (backend, text) in rules {
        backend.restore(text).with_context(|| {
            format!(
                "the {} masquerade rules could not be restored; bpfmasq stays attached",
                backend.name()
            )
        })?;
    }
    hand_back_flows(&mut table, (config, &timeouts), ct, &mut given)?;
    Ok(given.len())
}

/// Gives the datapath's flows to nf_conntrack, except those `given`
/// already (a packet that crossed netfilter before its entry was replaced
/// and reached the datapath after its flow was removed made the flow
/// again, with the same port: it is only removed).
fn hand_back_flows(
    table: &mut ConntrackMap,
    (config, timeouts): (&NatConfig, &Timeouts),
    ct: &mut Ctnetlink,
    given: &mut HashSet<SnatEntry>,
) -> Result<()> {
    let snapshot = flows::snapshot(table)?;
    let now = monotonic_ns();
    for flow in &snapshot.flows {
        let Some(entry) = snat_entry(flow, config, timeouts, now) else {
            continue;
        };
        let again = given.iter().any(|g| {
            g.proto == entry.proto
                && g.pod == entry.pod
                && g.peer == entry.peer
                && g.nat == entry.nat
        });
        if !again {
            hand_over(ct, &entry)?;
            given.insert(entry);
        }
        let _ = table.remove(&flow.reply_key);
        let _ = table.remove(&flow.key);
    }
    Ok(())
}

/// Creates `entry` in nf_conntrack, replacing an entry with its original
/// tuple (netfilter tracks forwarded packets without NAT while bpfmasq
/// translates them).
fn hand_over(ct: &mut Ctnetlink, entry: &SnatEntry) -> Result<()> {
    let mut last = None;
    for _ in 0..CREATE_ATTEMPTS {
        ct.delete(entry)?;
        match ct.create_snat(entry) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("attempted")).context("bpfmasq stays attached")
}

/// The nf_conntrack entry for a live flow; None for ICMP or an expired flow.
fn snat_entry(
    flow: &FlowView,
    config: &NatConfig,
    timeouts: &Timeouts,
    now: u64,
) -> Option<SnatEntry> {
    let proto = flow.key.proto;
    if !matches!(proto, IPPROTO_TCP | IPPROTO_UDP) || !config.is_pod_addr(flow.key.src_addr) {
        return None;
    }
    let remaining = flow.remaining_ns(timeouts, now) / 1_000_000_000;
    if remaining == 0 {
        return None;
    }
    let addr = |raw: u32| Ipv4Addr::from(raw.to_ne_bytes());
    let state = flow.state();
    Some(SnatEntry {
        proto,
        pod: SocketAddrV4::new(addr(flow.key.src_addr), u16::from_be(flow.key.src_port)),
        peer: SocketAddrV4::new(addr(flow.key.dst_addr), u16::from_be(flow.key.dst_port)),
        nat: SocketAddrV4::new(
            addr(flow.original.rewrite_addr),
            u16::from_be(flow.original.rewrite_port),
        ),
        tcp_state: (proto == IPPROTO_TCP).then(|| tcp_state_of(state)),
        replied: flow.reply.is_some_and(|r| r.packets > 0)
            || !matches!(state, FlowState::Unreplied | FlowState::TcpSynSent),
        timeout: u32::try_from(remaining).unwrap_or(u32::MAX),
    })
}

fn pod_cidr_of(config: &NatConfig) -> Result<Ipv4Net> {
    let prefix = u32::from_be(config.pod_mask).count_ones() as u8;
    Ipv4Net::new(Ipv4Addr::from(config.pod_net.to_ne_bytes()), prefix)
        .map_err(|e| anyhow!("the datapath's pod network is invalid: {e}"))
}

/// The CNI plugin's iptables shape for the whole pod network, for a
/// handback with no takeover record: one chain, reached for every pod source.
fn cni_shape(instance: &Instance, pod_cidr: Ipv4Net) -> String {
    let id = cni::id_from(&format!(
        "bpfmasq-handback-{}-{}",
        instance.netns, instance.uplink
    ));
    cni::iptables_restore_input(
        pod_cidr,
        &[Container {
            source: pod_cidr,
            id,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_common::conntrack::{Answers, flow_state};

    #[test]
    fn imported_tcp_states_read_back_as_the_same_state() {
        for (nf, ours) in [
            (TcpState::SynSent, FlowState::TcpSynSent),
            (TcpState::SynRecv, FlowState::TcpSynRecv),
            (TcpState::Established, FlowState::TcpEstablished),
            (TcpState::FinWait, FlowState::TcpFinWait),
            (TcpState::CloseWait, FlowState::TcpCloseWait),
            (TcpState::TimeWait, FlowState::TcpTimeWait),
            (TcpState::Close, FlowState::TcpClose),
        ] {
            let (original, reply) = tcp_state_bits(nf);
            let state = flow_state(
                IPPROTO_TCP,
                original | IMPORTED,
                reply | IMPORTED,
                Answers::Replied,
            );
            assert_eq!(state, ours, "{nf:?}");
            assert_eq!(tcp_state_of(state), nf);
        }
    }

    #[test]
    fn an_imported_pair_keeps_netfilters_port_and_is_marked() {
        let entry = SnatEntry {
            proto: IPPROTO_TCP,
            pod: "10.85.0.3:40000".parse().unwrap(),
            peer: "192.168.61.12:8080".parse().unwrap(),
            nat: "192.168.61.11:1024".parse().unwrap(),
            tcp_state: Some(TcpState::Established),
            replied: true,
            timeout: 100,
        };
        let [(reply_key, reply), (key, original)] = imported_pair(&entry, 1);
        assert_eq!(u16::from_be(original.rewrite_port), 1024);
        assert_eq!(u16::from_be(reply_key.dst_port), 1024);
        assert_eq!(u16::from_be(key.src_port), 40000);
        assert_eq!(u16::from_be(reply.rewrite_port), 40000);
        assert!(original.state & IMPORTED != 0 && reply.state & IMPORTED != 0);
    }

    #[test]
    fn the_pod_cidr_comes_back_from_the_config() {
        let config = NatConfig {
            pod_net: u32::from_ne_bytes([10, 85, 0, 0]),
            pod_mask: u32::from_ne_bytes([255, 255, 0, 0]),
            ..NatConfig::default()
        };
        assert_eq!(pod_cidr_of(&config).unwrap().to_string(), "10.85.0.0/16");
    }
}
