//! The containers a runtime attached through the CNI plugin (`PODS` map):
//! one record per pod IPv4 address (network byte order, as [`crate::flow`]
//! stores addresses). The datapath's source check on each pod's bridge
//! port looks its packets' sources up here: only the port recorded for an
//! address may send with it.

/// Bytes of a container id: podman, CRI-O and containerd use 64 hex digits.
pub const CONTAINER_ID_LEN: usize = 64;
/// Bytes of an interface name, NUL included (the kernel's IFNAMSIZ).
pub const IFNAME_LEN: usize = 16;
/// Capacity of `PODS`: a /16 pod network's addresses.
pub const PODS_ENTRIES: u32 = 65_536;

/// What the CNI plugin's ADD recorded for one pod address. Names are
/// NUL-padded bytes (not NUL-terminated when they fill their array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// ifindex of the host-side veth (the pod's bridge port).
    pub host_ifindex: u32,
    /// The runtime's container id (`CNI_CONTAINERID`).
    pub container_id: [u8; CONTAINER_ID_LEN],
    /// The interface inside the container (`CNI_IFNAME`).
    pub ifname: [u8; IFNAME_LEN],
    /// The host-side veth's name.
    pub host_veth: [u8; IFNAME_LEN],
}

impl Default for PodRecord {
    fn default() -> Self {
        Self {
            host_ifindex: 0,
            container_id: [0; CONTAINER_ID_LEN],
            ifname: [0; IFNAME_LEN],
            host_veth: [0; IFNAME_LEN],
        }
    }
}

/// Copies `text` into a NUL-padded field; `None` when it does not fit.
pub fn to_field<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() > N || bytes.contains(&0) {
        return None;
    }
    let mut field = [0; N];
    field[..bytes.len()].copy_from_slice(bytes);
    Some(field)
}

/// The text of a NUL-padded field (up to its first NUL).
pub fn field_str(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_puts_the_host_ifindex_first_without_padding() {
        assert_eq!(core::mem::offset_of!(PodRecord, host_ifindex), 0);
        assert_eq!(core::mem::offset_of!(PodRecord, container_id), 4);
        assert_eq!(core::mem::offset_of!(PodRecord, ifname), 68);
        assert_eq!(core::mem::offset_of!(PodRecord, host_veth), 84);
        assert_eq!(core::mem::size_of::<PodRecord>(), 100);
    }

    #[test]
    fn fields_round_trip_and_refuse_what_does_not_fit() {
        let f: [u8; 16] = to_field("veth1234").unwrap();
        assert_eq!(field_str(&f), "veth1234");
        let full: [u8; 4] = to_field("abcd").unwrap();
        assert_eq!(field_str(&full), "abcd");
        assert!(to_field::<4>("abcde").is_none());
        assert!(to_field::<4>("a\0").is_none());
    }
}
