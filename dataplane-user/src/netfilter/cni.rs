//! The masquerade rules the CNI bridge plugin writes with `"ipMasq": true`
//! (ARCHITECTURE.md, "What bpfmasq replaces"), as text for
//! `iptables-restore` and `nft -f`: per container, an iptables chain
//! `CNI-<hash>` reached from POSTROUTING by the container's address, or a
//! rule in the nftables table `inet cni_plugins_masquerade`. The benchmark
//! loads them at scale, the tests build a host's "before" state with them,
//! and `detach --handback` writes them when no saved record exists.

use std::{fmt::Write as _, net::Ipv4Addr};

use ipnet::Ipv4Net;
use sha2::{Digest as _, Sha512};

/// The CNI network name CRI-O's default bridge network uses.
pub const NET_NAME: &str = "crio";
/// Container interface name the nftables comment records.
pub const IFNAME: &str = "eth0";
/// The nftables plugin's table and chain names.
pub const NFT_TABLE: &str = "cni_plugins_masquerade";
pub const NFT_CHAIN: &str = "masq_checks";
/// knftables.CommentLengthMax.
const NFT_COMMENT_MAX: usize = 128;

/// One container the plugin set masquerade up for: the source its rule
/// matches (its address, /32) and its id.
#[derive(Clone, Debug)]
pub struct Container {
    pub source: Ipv4Net,
    pub id: String,
}

impl Container {
    pub fn new(addr: Ipv4Addr, id: &str) -> Self {
        Self {
            source: Ipv4Net::from(addr),
            id: id.to_owned(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A 64-hex-digit id derived from `seed` (container ids look like this).
pub fn id_from(seed: &str) -> String {
    hex(&Sha512::digest(seed))[..64].to_owned()
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

/// The three iptables rules the bridge plugin writes for one container, as
/// iptables arguments (without `-t nat`): chain rules then the POSTROUTING
/// jump; and the chain's name.
pub fn iptables_container_rules(
    pod_cidr: Ipv4Net,
    container: &Container,
) -> (String, [Vec<String>; 3]) {
    let chain = chain_name(NET_NAME, &container.id);
    let comment = iptables_comment(NET_NAME, &container.id);
    let args = |parts: &[&str]| -> Vec<String> { parts.iter().map(|s| (*s).to_owned()).collect() };
    let pod = pod_cidr.to_string();
    let source = container.source.to_string();
    let with_comment = |head: &[&str], target: &str| {
        let mut rule = args(head);
        rule.extend(args(&[
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            target,
        ]));
        rule
    };
    let rules = [
        with_comment(&["-A", &chain, "-d", &pod], "ACCEPT"),
        with_comment(&["-A", &chain, "!", "-d", "224.0.0.0/4"], "MASQUERADE"),
        with_comment(&["-A", "POSTROUTING", "-s", &source], &chain),
    ];
    (chain, rules)
}

/// `iptables-restore --noflush` input adding `containers`' chains to the
/// nat table, the last container's chain reached last.
pub fn iptables_restore_input(pod_cidr: Ipv4Net, containers: &[Container]) -> String {
    let mut chains = String::new();
    let mut jumps = String::new();
    let mut rules = String::new();
    for container in containers {
        let (chain, [accept, masquerade, jump]) = iptables_container_rules(pod_cidr, container);
        let _ = writeln!(chains, ":{chain} - [0:0]");
        let _ = writeln!(rules, "{}", restore_line(&accept));
        let _ = writeln!(rules, "{}", restore_line(&masquerade));
        let _ = writeln!(jumps, "{}", restore_line(&jump));
    }
    format!("*nat\n{chains}{rules}{jumps}COMMIT\n")
}

/// One rule as an iptables-restore line: the comment is double-quoted with
/// its inner quotes escaped, as iptables-save prints it.
pub fn restore_line(args: &[String]) -> String {
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

/// `nft -f` input: the plugin's table with one masquerade rule per
/// container, the last container's rule last.
pub fn nft_input(pod_cidr: Ipv4Net, containers: &[Container]) -> String {
    let mut rules = String::new();
    for container in containers {
        let _ = writeln!(rules, "    {}", nft_rule(pod_cidr, container));
    }
    format!(
        "table inet {NFT_TABLE} {{\n  chain {NFT_CHAIN} {{\n{rules}  }}\n  \
         chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip daddr 224.0.0.0/4 return\n    ip6 daddr ff00::/8 return\n    goto {NFT_CHAIN}\n  }}\n}}\n"
    )
}

/// One container's rule in the plugin's chain (nft syntax, no `add rule` prefix).
pub fn nft_rule(pod_cidr: Ipv4Net, container: &Container) -> String {
    let source = if container.source.prefix_len() == 32 {
        container.source.addr().to_string()
    } else {
        container.source.to_string()
    };
    format!(
        "ip saddr {source} ip daddr != {pod_cidr} masquerade comment \"{}\"",
        nft_comment(NET_NAME, IFNAME, &container.id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Ipv4Net {
        "10.85.0.0/16".parse().unwrap()
    }

    fn containers() -> Vec<Container> {
        vec![
            Container::new(Ipv4Addr::new(10, 85, 0, 3), &id_from("b")),
            Container::new(Ipv4Addr::new(10, 85, 0, 2), &id_from("a")),
        ]
    }

    #[test]
    fn chain_names_match_the_cni_plugins() {
        // Test vectors from containernetworking/plugins pkg/utils/utils_test.go.
        assert_eq!(chain_name("test", "1234"), "CNI-2bbe0c48b91a7d1b8a6753a8");
        assert_eq!(
            chain_name("testalongnamethatdoesnotmakesense", "1234"),
            "CNI-374f33fe84ab0ed84dcdebe3"
        );
        assert_eq!(chain_name(NET_NAME, &id_from("a")).len(), 28);
    }

    #[test]
    fn iptables_rules_are_the_plugins_in_order() {
        let text = iptables_restore_input(pods(), &containers());
        let last = chain_name(NET_NAME, &id_from("a"));
        let comment = r#""name: \"crio\" id: \""#;
        assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING"))
            .collect();
        assert_eq!(jumps.len(), 2);
        assert!(jumps[0].starts_with("-A POSTROUTING -s 10.85.0.3/32 -m comment --comment "));
        assert!(jumps[1].starts_with("-A POSTROUTING -s 10.85.0.2/32"));
        assert!(jumps[1].ends_with(&format!("-j {last}")));
        assert!(jumps[1].contains(comment));
        assert!(text.contains(&format!("-A {last} -d 10.85.0.0/16 -m comment --comment ")));
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("-A {last} ! -d 224.0.0.0/4"))
                    && l.ends_with("-j MASQUERADE"))
        );
        assert_eq!(text.matches(":CNI-").count(), 2);
    }

    #[test]
    fn nft_rules_are_the_plugins_in_order() {
        let text = nft_input(pods(), &containers());
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
        let whole = Container {
            source: pods(),
            id: id_from("x"),
        };
        assert!(nft_rule(pods(), &whole).starts_with("ip saddr 10.85.0.0/16 "));
    }

    #[test]
    fn nft_comments_are_cut_like_knftables() {
        let comment = nft_comment(NET_NAME, IFNAME, &id_from("a"));
        assert!(comment.len() <= NFT_COMMENT_MAX);
        assert!(comment.contains(", net: crio, if: eth0, id: "));
        assert_eq!(comment.as_bytes()[16], b'-');
    }
}
