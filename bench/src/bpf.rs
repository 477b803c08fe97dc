//! The bpfmasq variant: attach and detach with the real binary, N
//! registered containers as N synthetic flows in the pinned conntrack map,
//! the control-plane trial (one pair of map entries added and removed), and
//! the programs' run-time statistics (bpf_stats).

use std::{
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    maps::{HashMap, MapData},
    programs::{
        ProgramInfo,
        links::{FdLink, PinnedLink},
        loaded_programs,
    },
};
use dataplane_common::{
    conntrack::{SEEN_ACK, SEEN_SYN},
    flow::{FlowEntry, FlowKey, IPPROTO_TCP, nat_flow_pair},
};
use serde::Serialize;

use super::{
    netfilter::{Trial, pod_addr, trial_addr},
    proc::NsCommand,
};
use bpfmasq::{
    datapath::{
        flows::monotonic_ns,
        instance::{
            Instance, PIN_BRIDGE_INGRESS, PIN_EGRESS, PIN_INGRESS, PIN_PROG_BRIDGE_INGRESS,
            PIN_PROG_EGRESS, PIN_PROG_INGRESS,
        },
        pinned,
    },
    lab::{BRIDGE, HOST_UPLINK_ADDR, UPLINK},
    netns::NetNs,
};

/// The synthetic flows' peers: 198.18.0.0/15 (RFC 2544 benchmarking), one
/// per container, so no synthetic entry can collide with a real flow.
const SYNTHETIC_PEER_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// The synthetic flows' ports (an HTTPS connection each, original port kept).
const SYNTHETIC_SPORT: u16 = 40_000;
const SYNTHETIC_DPORT: u16 = 443;
/// bpf_map_update_elem flag: fail if the key exists (the datapath's port claim).
const BPF_NOEXIST: u64 = 1;
/// How long attach/detach may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The `bpfmasq` binary, to run `attach`/`detach` exactly as a user would:
/// `$BPFMASQ_BIN`, else the one next to this executable (both are built
/// into the same folder).
fn bpfmasq_exe() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BPFMASQ_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("finding the bpfmasq-bench executable")?;
    let bin = exe.with_file_name("bpfmasq");
    if !bin.is_file() {
        bail!(
            "no bpfmasq binary next to {} (build the workspace, or set BPFMASQ_BIN)",
            exe.display()
        );
    }
    Ok(bin)
}

/// `bpfmasq --netns HOST attach --bridge cni0 --uplink eth0 --fast-path on|off`.
pub fn attach(host: &NetNs, fast_path: bool) -> Result<()> {
    let fast_path = if fast_path { "on" } else { "off" };
    bpfmasq(
        host,
        &[
            "attach",
            "--bridge",
            BRIDGE,
            "--uplink",
            UPLINK,
            "--fast-path",
            fast_path,
        ],
    )
}

/// `bpfmasq --netns HOST detach --uplink eth0`.
pub fn detach(host: &NetNs) -> Result<()> {
    bpfmasq(host, &["detach", "--uplink", UPLINK])
}

fn bpfmasq(host: &NetNs, args: &[&str]) -> Result<()> {
    let exe = bpfmasq_exe()?;
    let exe = exe.to_string_lossy();
    let mut full = vec!["--netns", host.name()];
    full.extend_from_slice(args);
    // `--netns` makes bpfmasq enter the namespace itself (NsCommand has
    // already put it there: the same namespace, entered twice).
    NsCommand::new(host, None, &exe, &full).run_ok(COMMAND_TIMEOUT)?;
    Ok(())
}

/// The datapath instance `attach` pinned for the lab's host.
pub fn instance(host: &NetNs) -> Instance {
    Instance::new(host.name(), UPLINK)
}

fn be(addr: std::net::Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The two entries of container `index`'s synthetic flow: an established
/// TCP connection to its own peer, original port kept.
fn synthetic_pair(index: u32, now_ns: u64) -> [(FlowKey, FlowEntry); 2] {
    let pod = be(pod_addr(index));
    let peer = (SYNTHETIC_PEER_BASE + index).to_be();
    pair(pod, peer, now_ns)
}

fn pair(pod: u32, peer: u32, now_ns: u64) -> [(FlowKey, FlowEntry); 2] {
    let sport = SYNTHETIC_SPORT.to_be();
    let key = FlowKey::new(pod, peer, sport, SYNTHETIC_DPORT.to_be(), IPPROTO_TCP);
    let established = SEEN_SYN | SEEN_ACK;
    nat_flow_pair(
        key,
        be(HOST_UPLINK_ADDR),
        sport,
        established,
        established,
        now_ns,
    )
}

/// Writes `n` synthetic flows (2n entries) into the pinned conntrack map:
/// bpfmasq's equivalent of N registered containers, each with a live flow.
pub fn register_containers(host: &NetNs, n: u32) -> Result<()> {
    let mut table = pinned::conntrack(&instance(host))?;
    let now = monotonic_ns();
    for index in 1..=n {
        for (key, entry) in synthetic_pair(index, now) {
            table
                .insert(key, entry, 0)
                .with_context(|| format!("inserting synthetic flow {index} of {n}"))?;
        }
    }
    Ok(())
}

/// One control-plane trial: open the pinned map, insert one pair (the
/// reply half first, as the datapath does), then open it again and remove
/// both. bpfmasq needs no per-container operation at all; this is the
/// nearest equivalent, a NAT mapping installed and withdrawn.
pub fn trial(host: &NetNs) -> Result<Trial> {
    let instance = instance(host);
    let [reply, original] = pair(
        be(trial_addr()),
        (SYNTHETIC_PEER_BASE - 1).to_be(),
        monotonic_ns(),
    );
    let started = Instant::now();
    let mut table: HashMap<MapData, FlowKey, FlowEntry> = pinned::conntrack(&instance)?;
    table.insert(reply.0, reply.1, BPF_NOEXIST)?;
    table.insert(original.0, original.1, BPF_NOEXIST)?;
    drop(table);
    let add = started.elapsed();
    let started = Instant::now();
    let mut table: HashMap<MapData, FlowKey, FlowEntry> = pinned::conntrack(&instance)?;
    table.remove(&original.0)?;
    table.remove(&reply.0)?;
    drop(table);
    Ok(Trial {
        add,
        remove: started.elapsed(),
    })
}

/// The ids of the attached programs (uplink egress, uplink ingress, bridge
/// ingress), from the pinned tcx links or, with clsact, the pinned programs.
pub fn program_ids(host: &NetNs) -> Result<[u32; 3]> {
    let instance = instance(host);
    let id = |link_pin: &str, program_pin: &str| -> Result<u32> {
        let link = instance.pin(link_pin);
        if link.exists() {
            let link = FdLink::from(PinnedLink::from_pin(&link)?);
            return Ok(link.info()?.program_id());
        }
        let program = instance.pin(program_pin);
        Ok(ProgramInfo::from_pin(&program)
            .with_context(|| format!("opening {}", program.display()))?
            .id())
    };
    Ok([
        id(PIN_EGRESS, PIN_PROG_EGRESS)?,
        id(PIN_INGRESS, PIN_PROG_INGRESS)?,
        id(PIN_BRIDGE_INGRESS, PIN_PROG_BRIDGE_INGRESS)?,
    ])
}

/// Run time and run count of programs, summed.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RunStats {
    pub run_time_ns: u64,
    pub run_count: u64,
}

impl RunStats {
    pub fn since(self, earlier: Self) -> Self {
        Self {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_count: self.run_count.saturating_sub(earlier.run_count),
        }
    }

    pub fn ns_per_run(self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

/// Current statistics of programs `ids`, per program.
pub fn run_stats(ids: &[u32]) -> Result<Vec<RunStats>> {
    let mut stats = vec![None; ids.len()];
    for info in loaded_programs() {
        let info = info.map_err(|e| anyhow!("listing eBPF programs: {e}"))?;
        if let Some(i) = ids.iter().position(|&id| id == info.id()) {
            stats[i] = Some(RunStats {
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                run_count: info.run_count(),
            });
        }
    }
    stats
        .into_iter()
        .zip(ids)
        .map(|(s, id)| s.ok_or_else(|| anyhow!("eBPF program {id} is gone")))
        .collect()
}

/// Keeps run-time statistics on (BPF_ENABLE_STATS) while it lives. Unlike
/// writing the global sysctl, the kernel turns them off again when this fd
/// closes, even if bpfmasq is killed: nothing to restore.
pub struct StatsGuard {
    _fd: OwnedFd,
}

impl StatsGuard {
    pub fn enable() -> Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| anyhow!("enabling bpf_stats (BPF_ENABLE_STATS): {e}"))?;
        Ok(Self { _fd: fd })
    }
}

/// Checks the attached datapath carries no flows but the synthetic ones
/// (a sanity check after registering).
pub fn count_entries(host: &NetNs) -> Result<usize> {
    let table = pinned::conntrack(&instance(host))?;
    let count = table.keys().filter(Result::is_ok).count();
    if count == 0 {
        bail!("the conntrack map is empty");
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_pairs_are_consistent_and_distinct() {
        let [(reply_key, reply), (key, original)] = synthetic_pair(1, 5);
        assert_eq!(
            reply_key,
            key.reply_after_snat(original.rewrite_addr, original.rewrite_port)
        );
        assert_eq!(reply.rewrite_addr, key.src_addr);
        assert_eq!(reply.rewrite_port, key.src_port);
        assert!(reply.is_reply() && !original.is_reply());
        let [(other_reply, _), (other, _)] = synthetic_pair(2, 5);
        assert_ne!(other, key);
        assert_ne!(other_reply, reply_key);
        // Never the lab's real peer.
        assert_ne!(key.dst_addr, be(bpfmasq::lab::OUTSIDE_ADDR));
    }

    #[test]
    fn run_stats_divide() {
        let a = RunStats {
            run_time_ns: 1000,
            run_count: 10,
        };
        let b = RunStats {
            run_time_ns: 3000,
            run_count: 30,
        };
        assert_eq!(b.since(a).ns_per_run(), Some(100.0));
        assert_eq!(a.since(a).ns_per_run(), None);
    }
}
