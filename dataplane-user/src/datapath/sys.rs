//! The bpf(2) system call, for the few commands aya 0.14 has no API for
//! (batched map access, feature probes, tiny hand-written programs,
//! counting the keys of a map whose key type is known only at run time).

use std::{
    ffi::CStr,
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
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

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// One eBPF instruction, as `struct bpf_insn` lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    /// `exit` (BPF_JMP | BPF_EXIT).
    pub const EXIT: Self = Self::new(0x95, 0, 0, 0);

    const fn new(code: u8, regs: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs,
            off,
            imm,
        }
    }

    /// `r0 = imm` (BPF_ALU64 | BPF_MOV | BPF_K): the program's return value.
    pub const fn mov_r0(imm: i32) -> Self {
        Self::new(0xb7, 0, 0, imm)
    }

    /// `r0 = *(u32 *)(r1 + offset)`: reads a context field.
    pub const fn load_ctx_u32(offset: i16) -> Self {
        // BPF_LDX | BPF_MEM | BPF_W; dst r0, src r1 (the context).
        Self::new(0x61, 1 << 4, offset, 0)
    }
}

/// The `union bpf_attr` prefix of BPF_PROG_LOAD.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// Loads `insns` as a TC classifier; the program lives as long as the fd.
pub fn load_classifier(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license: &CStr = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: a file descriptor BPF_PROG_LOAD just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
