//! Choosing the port (or ICMP identifier) a new flow leaves with.

/// Default translated-port range when `--port-range` is not given: like
/// MASQUERADE for ports >= 1024.
pub const DEFAULT_PORT_MIN: u16 = 1024;
pub const DEFAULT_PORT_MAX: u16 = 65535;
/// Attempts before a new flow is dropped as port exhaustion.
pub const MAX_PORT_ATTEMPTS: u32 = 32;

/// The candidate port (host byte order) for attempt number `attempt`: the
/// original port first when it lies in the range (so the source port is kept
/// when free, as MASQUERADE does), then random ports in the range.
#[inline(always)]
pub fn candidate_port(attempt: u32, original: u16, min: u16, max: u16, random: u32) -> u16 {
    if attempt == 0 && original >= min && original <= max {
        return original;
    }
    let span = (max as u32).wrapping_sub(min as u32).wrapping_add(1);
    if span == 0 || max < min {
        return min;
    }
    (min as u32 + random % span) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_original_port_first() {
        assert_eq!(candidate_port(0, 40000, 1024, 65535, 7), 40000);
    }

    #[test]
    fn original_outside_range_is_not_kept() {
        let p = candidate_port(0, 80, 30000, 30009, 12345);
        assert!((30000..=30009).contains(&p));
    }

    #[test]
    fn retries_stay_in_range() {
        for r in [0u32, 1, 9, 10, u32::MAX, 0xdead_beef] {
            let p = candidate_port(3, 40000, 30000, 30009, r);
            assert!((30000..=30009).contains(&p), "{p}");
        }
        // u32::MAX is a multiple of 65535: wraps to the bottom of the range.
        assert_eq!(candidate_port(1, 5, 1, 65535, u32::MAX), 1);
    }

    #[test]
    fn full_range_and_single_port() {
        assert_eq!(
            candidate_port(1, 0, 0, 65535, 70000),
            (70000u32 % 65536) as u16
        );
        assert_eq!(candidate_port(5, 9, 500, 500, 99), 500);
    }
}
