//! The netfilter variants: exactly the rules the CNI bridge plugin writes
//! (ARCHITECTURE.md, "What bpfmasq replaces") for N containers, loaded in one go with
//! `iptables-restore` / `nft -f` inside the lab's host namespace, the
//! control-plane trials (one container's NAT added and removed the way the
//! plugin does it), and the flowtable probe.
//!
//! Everything runs inside the lab's namespaces (or a throwaway one for the
//! probe), never in the caller's.

use std::{
    fs,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::proc::NsCommand;
use bpfmasq::{
    lab::{BRIDGE, POD_SUBNET, UPLINK},
    netfilter::{
        cni::{self, Container, IFNAME, NET_NAME, NFT_CHAIN, NFT_TABLE, nft_comment},
        ctnetlink::Ctnetlink,
    },
    netns::NetNs,
};

/// The extra table holding the flowtable (flowtable variant only).
const NFT_FLOW_TABLE: &str = "bpfmasq_bench_flowtable";
/// Deadline for one netfilter command (a 10000-chain restore takes ~1.5 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Address of registered container `index` (1-based): 10.85.0.2 upwards,
/// like the lab's containers (c1 is 10.85.0.2, the one traffic comes from).
pub fn pod_addr(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(POD_SUBNET.network()) + index + 1)
}

/// The address the control-plane trials add and remove: above every scale.
pub fn trial_addr() -> Ipv4Addr {
    Ipv4Addr::new(10, 85, 255, 250)
}

/// A 64-hex-digit container id, deterministic per index (like CRI-O's).
pub fn container_id(index: u32) -> String {
    cni::id_from(&format!("bpfmasq-bench-container-{index}"))
}

/// The container the control-plane trials add.
fn trial_container() -> Container {
    Container::new(trial_addr(), &cni::id_from("bpfmasq-bench-trial-container"))
}

/// The registered containers at scale `n`: indices 2..=n first, then the
/// measured container 1 (c1) last, so its chain/rule is the last one a new
/// connection reaches.
fn registered(n: u32) -> Vec<Container> {
    (2..=n)
        .chain(std::iter::once(1))
        .map(|index| Container::new(pod_addr(index), &container_id(index)))
        .collect()
}

/// `iptables-restore` input for the nat table (flushed) with `n` containers' chains.
pub fn iptables_restore_input(n: u32) -> String {
    let chains = cni::iptables_restore_input(POD_SUBNET, &registered(n));
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n{}",
        chains.trim_start_matches("*nat\n")
    )
}

/// `nft -f` input: the plugin's table with one masquerade rule per container
/// (the measured one last); with `flowtable`, plus a flowtable offloading
/// forwarded TCP/UDP flows between the bridge and the uplink.
pub fn nft_input(n: u32, flowtable: bool) -> String {
    let mut text = cni::nft_input(POD_SUBNET, &registered(n));
    if flowtable {
        text.push_str(&flowtable_table(&[BRIDGE, UPLINK]));
    }
    text
}

fn flowtable_table(devices: &[&str]) -> String {
    format!(
        "table inet {NFT_FLOW_TABLE} {{\n  flowtable ft {{\n    hook ingress priority filter;\n    \
         devices = {{ {} }};\n  }}\n  chain forward {{\n    \
         type filter hook forward priority filter; policy accept;\n    \
         ip protocol {{ tcp, udp }} flow add @ft\n  }}\n}}\n",
        devices.join(", ")
    )
}

/// Which iptables the machine has; only the nf_tables one is removed by
/// `nft flush ruleset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IptablesBackend {
    Nft,
    Legacy,
}

/// Asks `iptables -V` inside `ns`.
pub fn iptables_backend(ns: &NetNs) -> Result<IptablesBackend> {
    let out = NsCommand::new(ns, None, "iptables", &["-V"]).run_ok(COMMAND_TIMEOUT)?;
    Ok(if out.stdout.contains("nf_tables") {
        IptablesBackend::Nft
    } else {
        IptablesBackend::Legacy
    })
}

/// Loads `n` containers' iptables chains into `ns` with one iptables-restore.
pub fn setup_iptables(ns: &NetNs, n: u32, scratch: &Path) -> Result<()> {
    let file = scratch.join("iptables.rules");
    fs::write(&file, iptables_restore_input(n))
        .with_context(|| format!("writing {}", file.display()))?;
    let path = file.to_string_lossy().into_owned();
    NsCommand::new(ns, None, "iptables-restore", &[path.as_str()]).run_ok(COMMAND_TIMEOUT)?;
    Ok(())
}

/// Loads `n` containers' nftables rules (and the flowtable) into `ns` with one `nft -f`.
pub fn setup_nftables(ns: &NetNs, n: u32, flowtable: bool, scratch: &Path) -> Result<()> {
    let file = scratch.join("nftables.nft");
    fs::write(&file, nft_input(n, flowtable))
        .with_context(|| format!("writing {}", file.display()))?;
    let path = file.to_string_lossy().into_owned();
    NsCommand::new(ns, None, "nft", &["-f", path.as_str()]).run_ok(COMMAND_TIMEOUT)?;
    Ok(())
}

/// Removes every netfilter rule from `ns` (its nat hooks and with them
/// conntrack go away) and the conntrack entries, and checks no rule is left.
pub fn flush(ns: &NetNs, backend: IptablesBackend) -> Result<()> {
    if backend == IptablesBackend::Legacy {
        for args in [["-t", "nat", "-F"], ["-t", "nat", "-X"]] {
            NsCommand::new(ns, None, "iptables", &args).run_ok(COMMAND_TIMEOUT)?;
        }
    }
    NsCommand::new(ns, None, "nft", &["flush", "ruleset"]).run_ok(COMMAND_TIMEOUT)?;
    flush_conntrack(ns)?;
    let left = NsCommand::new(ns, None, "nft", &["list", "ruleset"]).run_ok(COMMAND_TIMEOUT)?;
    if left.stdout.contains("table ") {
        bail!(
            "netfilter rules are left in `{}` after flushing:\n{}",
            ns.name(),
            left.stdout
        );
    }
    Ok(())
}

/// Empties the conntrack table of `ns` (what `conntrack -F` does, one
/// ctnetlink message): each netfilter variant starts without the previous
/// one's entries (tens of thousands of TIME_WAIT connections after a
/// connection-rate sample), so variants do not inherit each other's state
/// and the table never fills up over a run.
pub fn flush_conntrack(ns: &NetNs) -> Result<()> {
    ns.run(|| Ctnetlink::open()?.flush())?
        .with_context(|| format!("flushing the conntrack table in `{}`", ns.name()))
}

/// One add/remove trial's durations.
#[derive(Clone, Copy, Debug)]
pub struct Trial {
    pub add: Duration,
    pub remove: Duration,
}

/// Adds and removes one container's iptables NAT the way the plugin does:
/// `-N` the chain, `-A` its two rules, `-A` the POSTROUTING jump (one
/// iptables invocation each); then `-D` the jump, `-F` and `-X` the chain.
pub fn iptables_trial(ns: &NetNs) -> Result<Trial> {
    let (chain, [accept, masquerade, jump]) =
        cni::iptables_container_rules(POD_SUBNET, &trial_container());
    let new_chain = vec!["-N".to_owned(), chain.clone()];
    let started = Instant::now();
    for args in [&new_chain, &accept, &masquerade, &jump] {
        iptables(ns, args)?;
    }
    let add = started.elapsed();
    let mut delete_jump = jump.clone();
    delete_jump[0] = "-D".to_owned();
    let started = Instant::now();
    for args in [
        delete_jump,
        vec!["-F".to_owned(), chain.clone()],
        vec!["-X".to_owned(), chain],
    ] {
        iptables(ns, &args)?;
    }
    Ok(Trial {
        add,
        remove: started.elapsed(),
    })
}

fn iptables(ns: &NetNs, args: &[String]) -> Result<()> {
    let mut full = vec!["-w".to_owned(), "-t".to_owned(), "nat".to_owned()];
    full.extend_from_slice(args);
    NsCommand::new(ns, None, "iptables", &full).run_ok(COMMAND_TIMEOUT)?;
    Ok(())
}

/// Adds and removes one container's nftables rule: `nft add rule` (one
/// invocation); removing needs the rule's handle, which the plugin finds by
/// listing the chain and matching its comment: `nft -a list chain`, then
/// `nft delete rule ... handle H`.
pub fn nft_trial(ns: &NetNs) -> Result<Trial> {
    let trial = trial_container();
    let rule = cni::nft_rule(POD_SUBNET, &trial);
    let started = Instant::now();
    // nft joins its arguments with spaces and parses the result: the rule,
    // quoted comment included, can be one argument.
    NsCommand::new(
        ns,
        None,
        "nft",
        &["add", "rule", "inet", NFT_TABLE, NFT_CHAIN, rule.as_str()],
    )
    .run_ok(COMMAND_TIMEOUT)?;
    let added = started.elapsed();

    let started = Instant::now();
    let listing = NsCommand::new(
        ns,
        None,
        "nft",
        &["-a", "list", "chain", "inet", NFT_TABLE, NFT_CHAIN],
    )
    .run_ok(COMMAND_TIMEOUT)?;
    let comment = nft_comment(NET_NAME, IFNAME, &trial.id);
    let prefix = &comment[..33.min(comment.len())];
    let Some(handle) = rule_handle(&listing.stdout, prefix) else {
        bail!("the rule just added is not in `nft -a list chain` output");
    };
    let handle = handle.to_string();
    NsCommand::new(
        ns,
        None,
        "nft",
        &[
            "delete",
            "rule",
            "inet",
            NFT_TABLE,
            NFT_CHAIN,
            "handle",
            handle.as_str(),
        ],
    )
    .run_ok(COMMAND_TIMEOUT)?;
    Ok(Trial {
        add: added,
        remove: started.elapsed(),
    })
}

/// The handle of the rule whose comment starts with `comment_prefix`, from
/// `nft -a list chain` output (`... comment "..." # handle 42`).
pub fn rule_handle(listing: &str, comment_prefix: &str) -> Option<u64> {
    let needle = format!("comment \"{comment_prefix}");
    listing
        .lines()
        .find(|line| line.contains(&needle))?
        .rsplit_once("# handle ")?
        .1
        .trim()
        .parse()
        .ok()
}

/// Whether this kernel can create an nftables flowtable, tried in a
/// throwaway namespace `probe_ns` (created and removed here). `Err` carries
/// the reason it cannot.
pub fn probe_flowtable(probe_ns: &str, scratch: &Path) -> Result<std::result::Result<(), String>> {
    let ns = NetNs::create(probe_ns)?;
    let file = scratch.join("flowtable-probe.nft");
    let result = (|| -> Result<std::result::Result<(), String>> {
        fs::write(&file, flowtable_table(&["lo"]))?;
        let path = file.to_string_lossy().into_owned();
        let out =
            NsCommand::new(&ns, None, "nft", &["-f", path.as_str()]).output(COMMAND_TIMEOUT)?;
        if out.status.success() {
            return Ok(Ok(()));
        }
        let reason = out
            .stderr
            .lines()
            .find(|l| l.contains("Error"))
            .unwrap_or("nft failed")
            .trim()
            .to_owned();
        Ok(Err(format!(
            "this kernel cannot create an nftables flowtable ({reason}); CONFIG_NF_FLOW_TABLE is probably not set"
        )))
    })();
    drop(ns);
    NetNs::delete(probe_ns)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_start_at_the_first_container() {
        assert_eq!(pod_addr(1), Ipv4Addr::new(10, 85, 0, 2));
        assert_eq!(pod_addr(254), Ipv4Addr::new(10, 85, 0, 255));
        assert_eq!(pod_addr(10_000), Ipv4Addr::new(10, 85, 39, 17));
        assert!(POD_SUBNET.contains(&pod_addr(super::super::plan::MAX_SCALE)));
        assert!(u32::from(pod_addr(super::super::plan::MAX_SCALE)) < u32::from(trial_addr()));
    }

    #[test]
    fn the_measured_container_comes_last() {
        let text = iptables_restore_input(3);
        let c1 = cni::chain_name(NET_NAME, &container_id(1));
        assert!(text.starts_with("*nat\n:PREROUTING ACCEPT") && text.ends_with("COMMIT\n"));
        assert_eq!(text.matches("*nat").count(), 1);
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING"))
            .collect();
        assert_eq!(jumps.len(), 3);
        assert!(jumps[2].starts_with("-A POSTROUTING -s 10.85.0.2/32"));
        assert!(jumps[2].ends_with(&format!("-j {c1}")));
        let text = nft_input(2, false);
        let rules: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("ip saddr"))
            .collect();
        assert!(rules[1].starts_with("ip saddr 10.85.0.2 "));
        assert!(!text.contains("flowtable"));
        assert!(nft_input(1, true).contains("devices = { cni0, eth0 }"));
    }

    #[test]
    fn handles_are_found_by_comment() {
        let listing = "table inet cni_plugins_masquerade {\n\tchain masq_checks { # handle 1\n\
                       \t\tip saddr 10.85.0.2 ip daddr != 10.85.0.0/16 masquerade comment \"aaaa-bbbb, net\" # handle 7\n\
                       \t\tip saddr 10.85.255.250 ip daddr != 10.85.0.0/16 masquerade comment \"cccc-dddd, net\" # handle 12\n";
        assert_eq!(rule_handle(listing, "cccc-dddd"), Some(12));
        assert_eq!(rule_handle(listing, "aaaa"), Some(7));
        assert_eq!(rule_handle(listing, "eeee"), None);
    }
}
