//! The kernel's own network counters of a lab node (`/proc/net/snmp` and
//! `/proc/net/netstat`, e.g. `Ip:InHdrErrors`, `IpExt:InTruncatedPkts`):
//! what shows that the host's IP stack dropped a packet before the datapath
//! ever saw it.

use std::collections::BTreeMap;

use crate::lab::Lab;

/// Counter name (`Group:Field`) to value.
pub type Mib = BTreeMap<String, u64>;

/// Every counter of `node`'s namespace.
pub fn read(lab: &Lab, node: &str) -> Mib {
    lab.run_in(node, || {
        // thread-self: the namespace this thread entered, not the process's.
        ["snmp", "netstat"]
            .iter()
            .flat_map(|file| {
                let path = format!("/proc/thread-self/net/{file}");
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {path}: {e}"));
                parse(&text)
            })
            .collect()
    })
}

/// `Group: Name...` header lines followed by `Group: value...` lines.
fn parse(text: &str) -> Mib {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter_map(|pair| match pair {
            [names, values] => Some((*names, *values)),
            _ => None,
        })
        .flat_map(|(names, values)| {
            let mut names = names.split_whitespace();
            let group = names
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_owned();
            let values = values.split_whitespace().skip(1);
            names
                .zip(values)
                .filter_map(|(name, value)| Some((format!("{group}:{name}"), value.parse().ok()?)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_header_and_value_lines() {
        let mib = parse("Ip: Forwarding InHdrErrors\nIp: 1 7\nIpExt: InTruncatedPkts\nIpExt: 3\n");
        assert_eq!(mib["Ip:InHdrErrors"], 7);
        assert_eq!(mib["IpExt:InTruncatedPkts"], 3);
        assert_eq!(mib.len(), 3);
    }
}
