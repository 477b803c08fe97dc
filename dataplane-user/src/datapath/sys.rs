//! The bpf(2) system call, for the few commands aya 0.14 has no API for
//! (batched map access, feature probes, counting the keys of a map whose
//! key type is known only at run time).

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// Issues bpf(2) command `cmd` with `attr`, a `#[repr(C)]` prefix of
/// `union bpf_attr` for that command; returns the call's non-negative result
/// (a new file descriptor for the commands that create one).
pub fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a valid bpf_attr prefix for `cmd` (the caller's
    // contract); any buffer it points to outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// Number of keys in the map behind `fd` (keys of `key_size` bytes), by
/// walking them with BPF_MAP_GET_NEXT_KEY; stops at `limit` (a hash map
/// whose current key is deleted mid-walk restarts from its first key, so a
/// busy map could otherwise be counted past its size).
pub fn count_keys(fd: BorrowedFd<'_>, key_size: u32, limit: u64) -> io::Result<u64> {
    let mut current = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut count = 0;
    let mut first = true;
    while count < limit {
        let mut attr = ElemAttr {
            map_fd: fd.as_raw_fd() as u32,
            key: if first { 0 } else { current.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            // ENOENT: no key after `current`, the walk is over.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        count += 1;
        first = false;
        std::mem::swap(&mut current, &mut next);
    }
    Ok(count)
}
