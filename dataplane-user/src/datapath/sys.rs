//! The bpf(2) system call, for the few commands aya 0.14 has no API for
//! (batched map access, feature probes).

use std::{io, mem::size_of};

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
