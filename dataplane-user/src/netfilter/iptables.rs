//! The bridge plugin's iptables masquerade: one `CNI-*` chain per container
//! in the nat table, reached from POSTROUTING by `-s <pod address>`. Found
//! in `iptables-save -t nat`, removed and restored with
//! `iptables-restore --noflush` (one transaction each). Removing them
//! leaves the nat table, whose hooks keep translating the connections
//! netfilter already has.

use std::collections::BTreeSet;

use anyhow::Result;
use ipnet::Ipv4Net;

use super::{MasqBackend, parse_net, require_programs, run};

pub struct Iptables;

impl MasqBackend for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn check_tools(&self) -> Result<()> {
        require_programs(self.name(), &["iptables-save", "iptables-restore"])
    }

    fn find(&self, pod_cidr: Ipv4Net) -> Result<Option<String>> {
        self.check_tools()?;
        let saved = run("iptables-save", &["-t", "nat"], None)?;
        Ok(cni_chains(&saved, pod_cidr))
    }

    fn remove(&self, found: &str) -> Result<()> {
        run(
            "iptables-restore",
            &["-w", "--noflush"],
            Some(&removal(found)),
        )?;
        Ok(())
    }

    /// The nat table (with its built-in chains, hence its hooks), empty if
    /// it was not there.
    fn restore_hooks(&self, _saved: &str) -> Result<()> {
        self.check_tools()?;
        run(
            "iptables-restore",
            &["-w", "--noflush"],
            Some("*nat\nCOMMIT\n"),
        )?;
        Ok(())
    }

    fn restore(&self, saved: &str) -> Result<()> {
        self.check_tools()?;
        run("iptables-restore", &["-w", "--noflush"], Some(saved))?;
        Ok(())
    }
}

/// From `iptables-save -t nat` output, the `CNI-*` chains that POSTROUTING
/// jumps to for a source inside `pod_cidr`, with their rules and jumps, as
/// `iptables-restore --noflush` input that re-creates them.
pub fn cni_chains(saved: &str, pod_cidr: Ipv4Net) -> Option<String> {
    let mut chains = BTreeSet::new();
    let mut jumps = Vec::new();
    for line in saved.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(..2) != Some(&["-A", "POSTROUTING"][..]) {
            continue;
        }
        let source = words
            .windows(2)
            .find(|w| w[0] == "-s")
            .and_then(|w| parse_net(w[1]));
        let target = words.windows(2).find(|w| w[0] == "-j").map(|w| w[1]);
        if let (Some(source), Some(target)) = (source, target)
            && target.starts_with("CNI-")
            && pod_cidr.contains(&source)
        {
            chains.insert(target.to_owned());
            jumps.push(line.to_owned());
        }
    }
    if chains.is_empty() {
        return None;
    }
    let mut text = String::from("*nat\n");
    for chain in &chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for line in saved.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("-A") && words.next().is_some_and(|c| chains.contains(c)) {
            text.push_str(line);
            text.push('\n');
        }
    }
    for jump in &jumps {
        text.push_str(jump);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    Some(text)
}

/// The `iptables-restore --noflush` input removing what `found` (the
/// output of [`cni_chains`]) adds: the jumps first, then the chains.
pub fn removal(found: &str) -> String {
    let mut jumps = String::new();
    let mut chains = String::new();
    for line in found.lines() {
        if let Some(rule) = line.strip_prefix("-A POSTROUTING ") {
            jumps.push_str(&format!("-D POSTROUTING {rule}\n"));
        } else if let Some(chain) = line.strip_prefix(':') {
            let name = chain.split_whitespace().next().unwrap_or_default();
            chains.push_str(&format!("-F {name}\n-X {name}\n"));
        }
    }
    format!("*nat\n{jumps}{chains}COMMIT\n")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::netfilter::cni::{Container, id_from, iptables_restore_input};

    #[test]
    fn finds_the_pod_networks_chains_and_nothing_else() {
        let pods: Ipv4Net = "10.85.0.0/16".parse().unwrap();
        let ours = iptables_restore_input(
            pods,
            &[
                Container::new(Ipv4Addr::new(10, 85, 0, 2), &id_from("a")),
                Container::new(Ipv4Addr::new(10, 85, 0, 3), &id_from("b")),
            ],
        );
        let theirs = iptables_restore_input(
            "10.99.0.0/16".parse().unwrap(),
            &[Container::new(Ipv4Addr::new(10, 99, 0, 2), &id_from("c"))],
        );
        // What iptables-save prints: builtin chains, every chain, then the rules.
        let body = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with('-') || l.starts_with(':'))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        let saved = format!(
            "# Generated by iptables-nft-save\n*nat\n:POSTROUTING ACCEPT [0:0]\n{}{}\
             -A POSTROUTING -s 10.85.0.0/16 -j MASQUERADE\nCOMMIT\n",
            body(&theirs),
            body(&ours)
        );
        let found = cni_chains(&saved, pods).expect("found");
        assert_eq!(found.matches(":CNI-").count(), 2, "{found}");
        assert_eq!(found.matches("-A POSTROUTING").count(), 2, "{found}");
        assert!(!found.contains("10.99."), "{found}");
        assert!(!found.contains("-j MASQUERADE\n-A POSTROUTING -s 10.85.0.0/16"));
        let removal = removal(&found);
        assert_eq!(removal.matches("-D POSTROUTING -s 10.85.0.").count(), 2);
        assert_eq!(removal.matches("\n-X CNI-").count(), 2);
        assert!(removal.find("-D POSTROUTING") < removal.find("-F CNI-"));
        assert_eq!(cni_chains("*nat\nCOMMIT\n", pods), None);
    }
}
