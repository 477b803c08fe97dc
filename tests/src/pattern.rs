//! A deterministic pseudo-random byte stream, addressable at any offset, so
//! a receiver can check a transfer byte for byte without storing it.
//!
//! Byte `i` of the stream for `seed` is byte `i % 8` (little endian) of
//! SplitMix64's output number `i / 8`.

/// Fills `buf` with the stream for `seed`, starting at byte `offset`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut done = 0;
    while done < buf.len() {
        let block = block(seed, pos / 8).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - done);
        buf[done..done + n].copy_from_slice(&block[start..start + n]);
        done += n;
        pos += n as u64;
    }
}

/// The first `len` bytes of the stream for `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    fill(seed, 0, &mut bytes);
    bytes
}

/// The offset of the first byte of `data` that differs from the stream for
/// `seed` at `offset`, or `None` if all match. `scratch` is reused between calls.
pub fn first_mismatch(seed: u64, offset: u64, data: &[u8], scratch: &mut Vec<u8>) -> Option<u64> {
    scratch.resize(data.len(), 0);
    fill(seed, offset, scratch);
    if scratch.as_slice() == data {
        return None;
    }
    let at = data.iter().zip(scratch.iter()).position(|(a, b)| a != b)?;
    Some(offset + at as u64)
}

/// SplitMix64's `index`-th output for `seed`.
fn block(seed: u64, index: u64) -> u64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_split_gives_the_same_stream() {
        let mut whole = vec![0; 100];
        fill(7, 0, &mut whole);
        let mut parts = vec![0; 100];
        let (a, b) = parts.split_at_mut(13);
        fill(7, 0, a);
        fill(7, 13, b);
        assert_eq!(whole, parts);
        assert_ne!(whole[..8], whole[8..16]);
    }

    #[test]
    fn seeds_differ_and_mismatches_are_located() {
        let (mut a, mut b) = (vec![0; 64], vec![0; 64]);
        fill(1, 0, &mut a);
        fill(2, 0, &mut b);
        assert_ne!(a, b);
        let mut scratch = Vec::new();
        assert_eq!(first_mismatch(1, 0, &a, &mut scratch), None);
        a[40] ^= 1;
        assert_eq!(first_mismatch(1, 32, &a[32..], &mut scratch), Some(40));
    }
}
