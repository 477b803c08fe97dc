//! ICMP echo from a lab node, with the system `ping`.

use std::{net::Ipv4Addr, process::Output};

use crate::lab::Lab;

/// `ping -n -c COUNT -W WAIT DST` inside `node`; the exit status is left to the
/// caller (0: replies came back).
pub fn ping(lab: &Lab, node: &str, dst: Ipv4Addr, count: u32, wait_secs: u32) -> Output {
    let (count, wait, dst) = (count.to_string(), wait_secs.to_string(), dst.to_string());
    lab.exec(node, &["ping", "-n", "-c", &count, "-W", &wait, &dst])
}

/// One `ping -t 1` from `node` to `dst`: the first router on the way (the
/// lab host, for a container) answers with a time-exceeded. Returns ping's
/// standard output.
pub fn ping_expiring_at_first_hop(lab: &Lab, node: &str, dst: Ipv4Addr) -> String {
    let dst = dst.to_string();
    let out = lab.exec(node, &["ping", "-n", "-c", "1", "-W", "2", "-t", "1", &dst]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
