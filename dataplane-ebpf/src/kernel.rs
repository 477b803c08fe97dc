//! The kernel features the loader probed (see [`dataplane_common::kernel`]).

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
