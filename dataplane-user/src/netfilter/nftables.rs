//! The bridge plugin's nftables masquerade (`ipMasqBackend: nftables`): the
//! table `inet cni_plugins_masquerade`, all of it the plugin's. Found with
//! `nft list table`, removed with `nft delete table`, restored with `nft -f`.

use anyhow::Result;
use ipnet::Ipv4Net;

use super::{
    MasqBackend,
    cni::{NFT_CHAIN, NFT_TABLE},
    parse_net, require_programs, run,
};

pub struct Nftables;

/// The start of an `nft -f` script that (re)fills the plugin's table:
/// created if absent, emptied of its rules if present.
fn replace_table() -> String {
    format!("table inet {NFT_TABLE}\nflush table inet {NFT_TABLE}\n")
}

impl MasqBackend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn check_tools(&self) -> Result<()> {
        require_programs(self.name(), &["nft"])
    }

    fn find(&self, pod_cidr: Ipv4Net) -> Result<Option<String>> {
        self.check_tools()?;
        let tables = run("nft", &["list", "tables", "inet"], None)?;
        if !tables
            .lines()
            .any(|l| l.trim() == format!("table inet {NFT_TABLE}"))
        {
            return Ok(None);
        }
        let table = run("nft", &["list", "table", "inet", NFT_TABLE], None)?;
        // The table is the plugin's; it matters here only if it masquerades pods.
        let pods = pod_cidr.to_string();
        let mentions_pods = table.lines().any(|l| {
            l.contains("masquerade")
                && l.split_whitespace()
                    .skip_while(|w| *w != "saddr")
                    .nth(1)
                    .and_then(parse_net)
                    .is_some_and(|s| pod_cidr.contains(&s))
        });
        Ok((mentions_pods || table.contains(&pods)).then_some(table))
    }

    /// Empties the per-container chain: the table's nat chain stays, and
    /// with it the nat hooks existing connections are translated by
    /// (deleting the table would leave them untranslated at once).
    fn disarm(&self, _found: &str) -> Result<()> {
        run(
            "nft",
            &["flush", "chain", "inet", NFT_TABLE, NFT_CHAIN],
            None,
        )?;
        Ok(())
    }

    fn finish(&self, found: &str) -> Result<()> {
        self.remove(found)
    }

    fn remove(&self, _found: &str) -> Result<()> {
        run("nft", &["delete", "table", "inet", NFT_TABLE], None)?;
        Ok(())
    }

    /// The saved table with its per-container chain empty: its nat chain
    /// hooks in, nothing is masqueraded.
    fn restore_hooks(&self, saved: &str) -> Result<()> {
        self.check_tools()?;
        let script = format!(
            "{}{saved}\nflush chain inet {NFT_TABLE} {NFT_CHAIN}\n",
            replace_table()
        );
        run("nft", &["-f", "-"], Some(&script))?;
        Ok(())
    }

    /// The saved table, replacing whatever the table holds in one
    /// transaction (its chains, and so its hooks, stay).
    fn restore(&self, saved: &str) -> Result<()> {
        self.check_tools()?;
        run(
            "nft",
            &["-f", "-"],
            Some(&format!("{}{saved}", replace_table())),
        )?;
        Ok(())
    }
}
