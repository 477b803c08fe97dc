//! The kernel features the loader probed (see [`dataplane_common::kernel`]),
//! and the tests' way to make a program the kernel must reject.

use dataplane_common::kernel::FEATURE_FAST_PATH;

/// Set by the loader before the programs load; read-only for them, so the
/// verifier knows its value and skips the code of a missing feature.
#[unsafe(no_mangle)]
static KERNEL_FEATURES: u32 = 0;

#[inline(always)]
fn has(feature: u32) -> bool {
    // SAFETY: a plain read of a global. Volatile, or the compiler would fold
    // in the 0 above instead of loading what the loader wrote.
    unsafe { core::ptr::read_volatile(&KERNEL_FEATURES) & feature != 0 }
}

/// Whether this kernel can run the fast path at all.
#[inline(always)]
pub fn has_fast_path() -> bool {
    has(FEATURE_FAST_PATH)
}

/// Set by the loader only when a test asks for a program the kernel must
/// reject (to see how that is reported); 0 otherwise, and then the verifier
/// knows the branch below is dead and removes it.
#[unsafe(no_mangle)]
static TEST_REJECT: u32 = 0;

/// With [`TEST_REJECT`] set, a memory access every verifier refuses; else
/// nothing (removed by the verifier). Call it only on a path that is never
/// taken at run time: the load of the global is the only cost left there.
#[inline(always)]
pub fn reject_if_testing() {
    // SAFETY: a read of a global (volatile: the loader sets its value).
    let test_reject = unsafe { core::ptr::read_volatile(&TEST_REJECT) };
    if test_reject != 0 {
        // SAFETY: none, on purpose: a number used as a pointer, which the
        // verifier refuses.
        unsafe { core::ptr::read_volatile(test_reject as usize as *const u8) };
    }
}
