//! `lab status`: each namespace of the lab with its interfaces, read through
//! a netlink socket inside it. `--json` prints a [`LabStatus`].

use std::{collections::HashMap, fs};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::topology::{Node, ns_name, validate_lab_name};
use crate::{netlink::Netlink, netns::NetNs, privileges::require_root};

/// A lab as `lab status --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    pub lab: String,
    /// Host, out, then containers by number; only those that exist.
    pub namespaces: Vec<NamespaceStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceStatus {
    /// `host`, `out`, `c1`...
    pub node: String,
    /// The namespace's name, e.g. `lab-host`.
    pub netns: String,
    /// net.ipv4.ip_forward inside the namespace.
    pub ip_forward: bool,
    pub interfaces: Vec<InterfaceStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub index: u32,
    /// `bridge`, `veth`...; `null` for `lo`.
    pub kind: Option<String>,
    /// Operational state: `UP`, `DOWN`, `UNKNOWN` (`lo`), `LOWERLAYERDOWN`...
    pub state: String,
    /// Administratively up.
    pub admin_up: bool,
    /// The bridge this interface is enslaved to.
    pub master: Option<String>,
    /// IPv4 addresses with prefix, primary first, e.g. `10.85.0.1/16`.
    pub ipv4: Vec<String>,
}

pub(super) async fn status(lab: &str, json: bool) -> Result<()> {
    let status = inspect(lab).await?;
    if json {
        let text = serde_json::to_string_pretty(&status).context("encoding the lab status")?;
        println!("{text}");
    } else {
        print!("{}", render_table(&status));
    }
    Ok(())
}

/// Reads the state of lab `lab` (what `lab status` prints). Fails if the lab
/// does not exist.
pub async fn inspect(lab: &str) -> Result<LabStatus> {
    require_root("bpfmasq lab status")?;
    validate_lab_name(lab)?;
    let nodes = super::require_existing(lab)?;
    let mut namespaces = Vec::with_capacity(nodes.len());
    for node in nodes {
        namespaces.push(inspect_namespace(lab, node).await?);
    }
    Ok(LabStatus {
        lab: lab.to_owned(),
        namespaces,
    })
}

async fn inspect_namespace(lab: &str, node: Node) -> Result<NamespaceStatus> {
    let ns = NetNs::open(&ns_name(lab, node))?;
    let netlink = Netlink::connect_in(&ns)?;
    let links = netlink.links().await?;
    let mut addrs = netlink.ipv4_addrs_by_link().await?;
    let names: HashMap<u32, &str> = links
        .iter()
        .map(|link| (link.index, link.name.as_str()))
        .collect();
    let interfaces = links
        .iter()
        .map(|link| InterfaceStatus {
            name: link.name.clone(),
            index: link.index,
            kind: link.kind.clone(),
            state: link.oper_state.clone(),
            admin_up: link.admin_up,
            master: link.master.map(|index| {
                names
                    .get(&index)
                    .map_or_else(|| index.to_string(), |name| name.to_string())
            }),
            ipv4: addrs
                .remove(&link.index)
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
        .collect();
    let ip_forward = ns
        .run(|| fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))?
        .with_context(|| format!("reading ip_forward in network namespace `{}`", ns.name()))?;
    Ok(NamespaceStatus {
        node: node.to_string(),
        netns: ns.name().to_owned(),
        ip_forward: ip_forward.trim() == "1",
        interfaces,
    })
}

/// One row per interface; the namespace columns repeat so lines grep well.
fn render_table(status: &LabStatus) -> String {
    let header = [
        "NODE",
        "NETNS",
        "FWD",
        "INTERFACE",
        "KIND",
        "STATE",
        "MASTER",
        "IPV4",
    ]
    .map(String::from);
    let mut rows = vec![header.to_vec()];
    for ns in &status.namespaces {
        for iface in &ns.interfaces {
            rows.push(vec![
                ns.node.clone(),
                ns.netns.clone(),
                if ns.ip_forward { "on" } else { "off" }.to_owned(),
                iface.name.clone(),
                iface.kind.clone().unwrap_or_else(|| "-".to_owned()),
                if iface.admin_up {
                    iface.state.clone()
                } else {
                    format!("{} (admin down)", iface.state)
                },
                iface.master.clone().unwrap_or_else(|| "-".to_owned()),
                if iface.ipv4.is_empty() {
                    "-".to_owned()
                } else {
                    iface.ipv4.join(",")
                },
            ]);
        }
    }
    align_columns(&rows)
}

/// Left-aligned columns, two spaces apart, no trailing blanks.
fn align_columns(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let rows = [vec!["A", "BB", "C"], vec!["long", "x", ""]]
            .map(|row| row.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(align_columns(&rows), "A     BB  C\nlong  x\n");
    }

    #[test]
    fn table_shows_every_interface() {
        let status = LabStatus {
            lab: "t".into(),
            namespaces: vec![NamespaceStatus {
                node: "host".into(),
                netns: "t-host".into(),
                ip_forward: true,
                interfaces: vec![InterfaceStatus {
                    name: "veth-c1".into(),
                    index: 5,
                    kind: Some("veth".into()),
                    state: "UP".into(),
                    admin_up: true,
                    master: Some("cni0".into()),
                    ipv4: vec![],
                }],
            }],
        };
        let table = render_table(&status);
        assert_eq!(table.lines().count(), 2);
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .eq(["host", "t-host", "on", "veth-c1", "veth", "UP", "cni0", "-"])
        );
    }
}
