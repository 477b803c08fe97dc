//! Batched map access (BPF_MAP_LOOKUP_BATCH, BPF_MAP_DELETE_BATCH; kernel
//! 5.6 or later): a garbage-collection sweep of a million entries in a
//! handful of system calls instead of two per entry. aya 0.14 has no batch
//! API, so this issues the bpf(2) commands itself.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};

use super::sys::bpf;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
/// Entries per lookup call; large enough that no hash bucket overflows it.
const LOOKUP_CHUNK: usize = 8192;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of a hash map. Entries added or removed meanwhile may
/// or may not be seen, as with key-by-key iteration.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(LOOKUP_CHUNK);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(LOOKUP_CHUNK);
    let mut all = Vec::new();
    // Opaque resume tokens: a bucket index for hash maps.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw mut token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_CHUNK as u32,
            map_fd: fd,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr).map(drop);
        let done = match result {
            Ok(()) => false,
            // ENOENT: the last, possibly partial, batch; `count` says how much.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let got = attr.count as usize;
        // SAFETY: the kernel wrote `got` keys and values.
        unsafe {
            keys.set_len(got);
            values.set_len(got);
        }
        all.extend(
            keys.drain(..)
                .zip(values.drain(..))
                // SAFETY: initialised by the kernel, see set_len above.
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        if done {
            return Ok(all);
        }
        token_in = token_out;
        first = false;
    }
}

/// Deletes `keys` from a hash map; returns how many were deleted. Keys that
/// are already gone are skipped, not an error.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<usize> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(_) => return Ok(deleted + rest.len()),
            // The batch stops at a missing key: `count` were deleted before it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                deleted += attr.count as usize;
                rest = &rest[attr.count as usize + 1..];
            }
            Err(e) if is_unsupported(&e) => return Ok(deleted + delete_one_by_one(fd, rest)?),
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_HASH: u32 = 1;

/// The `union bpf_attr` prefix of BPF_MAP_CREATE.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// Whether this kernel has batched map operations (5.6): a batched lookup
/// on an empty throwaway hash map answers ENOENT (nothing to return) where
/// it has them, EINVAL where it does not.
pub fn is_supported() -> bool {
    let mut create = MapCreateAttr {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    let Ok(fd) = bpf(BPF_MAP_CREATE, &mut create) else {
        return false;
    };
    let (mut keys, mut values, mut token) = ([0u32; 1], [0u32; 1], 0u64);
    let mut lookup = BatchAttr {
        out_batch: &raw mut token as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: 1,
        map_fd: fd as u32,
        ..Default::default()
    };
    let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut lookup);
    // SAFETY: `fd` was just created by BPF_MAP_CREATE and is closed once.
    unsafe { libc::close(fd as i32) };
    matches!(result, Err(e) if e.raw_os_error() == Some(libc::ENOENT))
}

/// Whether a batch command failed because the kernel (before 5.6) or the
/// map type has no batch operations.
pub fn is_unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

/// The `union bpf_attr` prefix of BPF_MAP_DELETE_ELEM.
#[repr(C)]
struct DeleteElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
}

/// [`delete`] without batch operations: one system call per key.
fn delete_one_by_one<K: Pod>(map_fd: u32, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    for key in keys {
        let mut attr = DeleteElemAttr {
            map_fd,
            _pad: 0,
            key: key as *const K as u64,
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Ok(_) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
