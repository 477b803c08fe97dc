//! ICMP echo from a lab node, with the system `ping`.

use std::{net::Ipv4Addr, process::Output};

use crate::lab::Lab;

/// `ping -n -c COUNT -W WAIT DST` inside `node`; the exit status is left to the
/// caller (0: replies came back).
pub fn ping(lab: &Lab, node: &str, dst: Ipv4Addr, count: u32, wait_secs: u32) -> Output {
    let (count, wait, dst) = (count.to_string(), wait_secs.to_string(), dst.to_string());
    lab.exec(node, &["ping", "-n", "-c", &count, "-W", &wait, &dst])
}
