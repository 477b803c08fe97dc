//! The netfilter variants: exactly the rules the CNI bridge plugin writes
//! (ARCHITECTURE.md, "What bpfmasq replaces") for N containers, loaded in one go with
//! `iptables-restore` / `nft -f` inside the lab's host namespace, the
//! control-plane trials (one container's NAT added and removed the way the
//! plugin does it), and the flowtable probe.
//!
//! Everything runs inside the lab's namespaces (or a throwaway one for the
//! probe), never in the caller's.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha512};

use super::proc::NsCommand;
use bpfmasq::{
    lab::{BRIDGE, POD_SUBNET, UPLINK},
    netns::NetNs,
};

/// The CNI network name CRI-O's default bridge network uses.
pub const NET_NAME: &str = "crio";
/// Container interface name the nftables comment records.
const IFNAME: &str = "eth0";
/// The nftables plugin's table and chain names.
pub const NFT_TABLE: &str = "cni_plugins_masquerade";
pub const NFT_CHAIN: &str = "masq_checks";
/// The extra table holding the flowtable (flowtable variant only).
const NFT_FLOW_TABLE: &str = "bpfmasq_bench_flowtable";
/// knftables.CommentLengthMax.
const NFT_COMMENT_MAX: usize = 128;
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
    hex(&Sha512::digest(format!("bpfmasq-bench-container-{index}")))[..64].to_owned()
}

/// The id of the container the control-plane trials add.
pub fn trial_container_id() -> String {
    hex(&Sha512::digest("bpfmasq-bench-trial-container"))[..64].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// utils.FormatChainName: `CNI-` + the first 24 hex digits of
/// sha512(network name + container id), 28 characters in all.
pub fn chain_name(net: &str, container_id: &str) -> String {
    format!(
        "CNI-{}",
        &hex(&Sha512::digest(format!("{net}{container_id}")))[..24]
    )
}

/// utils.FormatComment: `name: "<net>" id: "<container id>"`.
pub fn iptables_comment(net: &str, container_id: &str) -> String {
    format!("name: \"{net}\" id: \"{container_id}\"")
}

/// utils.MustFormatHashWithPrefix(16, "", s).
fn hash16(s: &str) -> String {
    hex(&Sha512::digest(s))[..16].to_owned()
}

/// The nftables plugin's rule comment: a hash of network, interface and
/// container id, then a readable description, cut at 128 characters.
pub fn nft_comment(net: &str, ifname: &str, container_id: &str) -> String {
    let mut comment = format!(
        "{}-{}, net: {net}, if: {ifname}, id: {container_id}",
        hash16(net),
        hash16(&format!("{ifname}:{container_id}"))
    );
    comment.truncate(NFT_COMMENT_MAX);
    comment
}

/// The registered containers at scale `n`: indices 2..=n first, then the
/// measured container 1 (c1) last, so its chain/rule is the last one a new
/// connection reaches.
fn registration_order(n: u32) -> impl Iterator<Item = u32> {
    (2..=n).chain(std::iter::once(1))
}

/// The three iptables rules the bridge plugin writes for one container, as
/// iptables arguments (without `-t nat`): chain rules then the POSTROUTING jump.
fn iptables_container_rules(addr: Ipv4Addr, container_id: &str) -> (String, [Vec<String>; 3]) {
    let chain = chain_name(NET_NAME, container_id);
    let comment = iptables_comment(NET_NAME, container_id);
    let args = |parts: &[&str]| -> Vec<String> { parts.iter().map(|s| (*s).to_owned()).collect() };
    let pod = POD_SUBNET.to_string();
    let source = format!("{addr}/32");
    let rules = [
        args(&[
            "-A",
            &chain,
            "-d",
            &pod,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ]),
        args(&[
            "-A",
            &chain,
            "!",
            "-d",
            "224.0.0.0/4",
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "MASQUERADE",
        ]),
        args(&[
            "-A",
            "POSTROUTING",
            "-s",
            &source,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            &chain,
        ]),
    ];
    (chain, rules)
}

/// `iptables-restore` input for the nat table with `n` containers' chains.
pub fn iptables_restore_input(n: u32) -> String {
    let mut chains = String::new();
    let mut jumps = String::new();
    let mut rules = String::new();
    for index in registration_order(n) {
        let id = container_id(index);
        let (chain, [accept, masquerade, jump]) = iptables_container_rules(pod_addr(index), &id);
        let _ = writeln!(chains, ":{chain} - [0:0]");
        let _ = writeln!(rules, "{}", restore_line(&accept));
        let _ = writeln!(rules, "{}", restore_line(&masquerade));
        let _ = writeln!(jumps, "{}", restore_line(&jump));
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n{chains}{rules}{jumps}COMMIT\n"
    )
}

/// One rule as an iptables-restore line: the comment is double-quoted with
/// its inner quotes escaped, as iptables-save prints it.
fn restore_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') || a.contains('"') {
                format!("\"{}\"", a.replace('"', "\\\""))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `nft -f` input: the plugin's table with one masquerade rule per container
/// (the measured one last); with `flowtable`, plus a flowtable offloading
/// forwarded TCP/UDP flows between the bridge and the uplink.
pub fn nft_input(n: u32, flowtable: bool) -> String {
    let mut rules = String::new();
    for index in registration_order(n) {
        let _ = writeln!(
            rules,
            "    {}",
            nft_rule(pod_addr(index), &container_id(index))
        );
    }
    let mut text = format!(
        "table inet {NFT_TABLE} {{\n  chain {NFT_CHAIN} {{\n{rules}  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip daddr 224.0.0.0/4 return\n    ip6 daddr ff00::/8 return\n    goto {NFT_CHAIN}\n  }}\n}}\n"
    );
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

/// One container's rule in the plugin's chain (nft syntax, no `add rule` prefix).
fn nft_rule(addr: Ipv4Addr, container_id: &str) -> String {
    format!(
        "ip saddr {addr} ip daddr != {POD_SUBNET} masquerade comment \"{}\"",
        nft_comment(NET_NAME, IFNAME, container_id)
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
    ns.run(ctnetlink_flush)?
        .with_context(|| format!("flushing the conntrack table in `{}`", ns.name()))
}

fn ctnetlink_flush() -> std::io::Result<()> {
    use std::{
        io,
        mem::size_of,
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    };

    /// enum cntl_msg_types: IPCTNL_MSG_CT_DELETE.
    const IPCTNL_MSG_CT_DELETE: u16 = 2;
    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        // struct nfgenmsg
        family: u8,
        version: u8,
        res_id: u16,
    }
    /// struct nlmsgerr, up to its error code (the echoed header may be cut).
    #[repr(C)]
    struct Ack {
        header: libc::nlmsghdr,
        error: i32,
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: ((libc::NFNL_SUBSYS_CTNETLINK as u16) << 8) | IPCTNL_MSG_CT_DELETE,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        family: libc::AF_INET as u8,
        version: 0,
        res_id: 0,
    };
    // SAFETY: sends exactly the bytes of `request` (repr(C), no padding read
    // by the kernel beyond nlmsg_len); the kernel is the default destination.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = [0u8; 512];
    // SAFETY: receives into a buffer we own, of the given length.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    if (received as usize) < size_of::<Ack>() {
        return Err(io::Error::other("short ctnetlink answer"));
    }
    // SAFETY: the buffer holds at least an Ack's bytes; read unaligned.
    let ack: Ack = unsafe { std::ptr::read_unaligned(buffer.as_ptr().cast()) };
    if ack.header.nlmsg_type != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other("unexpected ctnetlink answer"));
    }
    match ack.error {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
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
    let id = trial_container_id();
    let (chain, [accept, masquerade, jump]) = iptables_container_rules(trial_addr(), &id);
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
    let id = trial_container_id();
    let rule = nft_rule(trial_addr(), &id);
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
    let comment = nft_comment(NET_NAME, IFNAME, &id);
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
    fn chain_names_match_the_cni_plugins() {
        // Test vectors from containernetworking/plugins pkg/utils/utils_test.go.
        assert_eq!(chain_name("test", "1234"), "CNI-2bbe0c48b91a7d1b8a6753a8");
        assert_eq!(
            chain_name("testalongnamethatdoesnotmakesense", "1234"),
            "CNI-374f33fe84ab0ed84dcdebe3"
        );
        assert_eq!(chain_name(NET_NAME, &container_id(1)).len(), 28);
    }

    #[test]
    fn addresses_start_at_the_first_container() {
        assert_eq!(pod_addr(1), Ipv4Addr::new(10, 85, 0, 2));
        assert_eq!(pod_addr(254), Ipv4Addr::new(10, 85, 0, 255));
        assert_eq!(pod_addr(10_000), Ipv4Addr::new(10, 85, 39, 17));
        assert!(POD_SUBNET.contains(&pod_addr(super::super::plan::MAX_SCALE)));
        assert!(u32::from(pod_addr(super::super::plan::MAX_SCALE)) < u32::from(trial_addr()));
    }

    #[test]
    fn iptables_rules_are_the_plugins_with_the_measured_chain_last() {
        let text = iptables_restore_input(3);
        let c1 = chain_name(NET_NAME, &container_id(1));
        let comment = r#""name: \"crio\" id: \""#;
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING"))
            .collect();
        assert_eq!(jumps.len(), 3);
        assert!(jumps[0].starts_with("-A POSTROUTING -s 10.85.0.3/32 -m comment --comment "));
        assert!(jumps[2].starts_with("-A POSTROUTING -s 10.85.0.2/32"));
        assert!(jumps[2].ends_with(&format!("-j {c1}")));
        assert!(jumps[2].contains(comment));
        assert!(text.contains(&format!("-A {c1} -d 10.85.0.0/16 -m comment --comment ")));
        assert!(text.contains(&format!("-A {c1} ! -d 224.0.0.0/4 -m comment --comment ")));
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("-A {c1} !")) && l.ends_with("-j MASQUERADE"))
        );
        assert_eq!(text.matches(":CNI-").count(), 3);
    }

    #[test]
    fn nft_rules_are_the_plugins_with_the_measured_rule_last() {
        let text = nft_input(2, false);
        let rules: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("ip saddr"))
            .collect();
        assert_eq!(rules.len(), 2);
        assert!(
            rules[0]
                .starts_with("ip saddr 10.85.0.3 ip daddr != 10.85.0.0/16 masquerade comment \"")
        );
        assert!(rules[1].starts_with("ip saddr 10.85.0.2 "));
        assert!(text.contains("type nat hook postrouting priority srcnat;"));
        assert!(text.contains("goto masq_checks"));
        assert!(!text.contains("flowtable"));
        assert!(nft_input(1, true).contains("devices = { cni0, eth0 }"));
    }

    #[test]
    fn nft_comments_are_cut_like_knftables() {
        let comment = nft_comment(NET_NAME, IFNAME, &container_id(1));
        assert!(comment.len() <= NFT_COMMENT_MAX);
        assert!(comment.contains(", net: crio, if: eth0, id: "));
        assert_eq!(comment.as_bytes()[16], b'-');
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
