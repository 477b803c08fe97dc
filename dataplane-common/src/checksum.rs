//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')), for checksums inside a packet's payload that the
//! kernel's skb helpers do not know about, such as the headers an ICMP
//! error quotes. Values are taken as they lie in memory (network order held
//! in native integers): one's-complement sums do not depend on byte order.

#[inline(always)]
const fn fold(sum: u32) -> u16 {
    // Two folds always suffice for a sum of three 16-bit words.
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `check` after a 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub const fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// `check` after a 32-bit word (two 16-bit words) changed from `old` to `new`.
#[inline(always)]
pub const fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let check = replace16(check, (old >> 16) as u16, (new >> 16) as u16);
    replace16(check, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Internet checksum of `data`, stored as it would lie in memory.
    fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u16::from_ne_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_update_equals_recomputation() {
        let mut data = [
            0x45u8, 0, 0, 28, 0x12, 0x34, 0, 0, 64, 17, 0, 0, 192, 168, 61, 11, 192, 168, 61, 12,
        ];
        let check = checksum(&data);
        let old = u32::from_ne_bytes([data[12], data[13], data[14], data[15]]);
        let new_bytes = [10u8, 85, 0, 2];
        data[12..16].copy_from_slice(&new_bytes);
        assert_eq!(
            replace32(check, old, u32::from_ne_bytes(new_bytes)),
            checksum(&data)
        );

        let old_word = u16::from_ne_bytes([data[4], data[5]]);
        let updated = replace32(check, old, u32::from_ne_bytes(new_bytes));
        data[4..6].copy_from_slice(&[0xab, 0xcd]);
        assert_eq!(
            replace16(updated, old_word, u16::from_ne_bytes([0xab, 0xcd])),
            checksum(&data)
        );
    }
}
