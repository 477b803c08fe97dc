//! Addresses whose forwarding the host's input routing judges by rules of
//! its own rather than by the routing table alone ("martians" in its
//! words): the fast path, whose route lookup (`bpf_fib_lookup`) skips those
//! rules, leaves such packets to the host stack, so the kernel's own
//! decision applies, whatever its version says.
//!
//! Linux drops a packet to 0.0.0.0 or 127.0.0.0/8 (unless `route_localnet`)
//! and one from 0.0.0.0, 127.0.0.0/8, multicast or 255.255.255.255 as a
//! martian; it handles multicast and broadcast destinations apart. The rest
//! of 0.0.0.0/8 (since Linux 5.3) and 240.0.0.0/4 it routes as unicast, but
//! older kernels and other policies differ, so the whole ranges go to the
//! host: these are never a real destination of a container's traffic.

/// Whether `addr` (network byte order, as on the wire) lies in 0.0.0.0/8,
/// 127.0.0.0/8, 224.0.0.0/4 (multicast) or 240.0.0.0/4 (reserved, with the
/// limited broadcast 255.255.255.255).
#[inline(always)]
pub fn is_martian(addr: u32) -> bool {
    matches!(addr.to_ne_bytes()[0], 0 | 127 | 224..=255)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn the_ranges_the_host_judges_itself_are_martian() {
        for addr in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [0, 255, 255, 255],
            [127, 0, 0, 1],
            [127, 255, 0, 9],
            [224, 0, 0, 1],
            [239, 255, 255, 250],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert!(is_martian(be(addr)), "{addr:?}");
        }
    }

    #[test]
    fn unicast_destinations_are_not_martian() {
        for addr in [
            [1, 0, 0, 1],
            [10, 85, 0, 2],
            [126, 255, 255, 255],
            [128, 0, 0, 1],
            [169, 254, 1, 1],
            [192, 168, 61, 12],
            [198, 51, 100, 2],
            [223, 255, 255, 255],
        ] {
            assert!(!is_martian(be(addr)), "{addr:?}");
        }
    }
}
