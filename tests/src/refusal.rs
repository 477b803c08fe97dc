//! How a refused command must fail: a non-zero exit, one line on stderr
//! naming what was wrong, and no panic.

use std::process::Output;

use crate::process::describe;

/// clap's standard hint after a usage error; not counted as part of the error.
const CLAP_HINT: &str = "For more information, try '--help'.";

/// Asserts that `out` (of `command`) is a clean refusal: a non-zero exit, no
/// panic, and exactly one line of error on stderr (blank lines and clap's
/// `--help` hint aside) that mentions every string in `mentions`.
pub fn assert_refused(out: &Output, command: &str, mentions: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = describe(out);
    assert!(
        !out.status.success(),
        "`{command}` should fail but succeeded: {shown}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "`{command}` panicked instead of reporting an error: {shown}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != CLAP_HINT)
        .collect();
    assert!(
        lines.len() == 1,
        "`{command}` should print one line of error on stderr, printed {}: {shown}",
        lines.len()
    );
    for mention in mentions {
        assert!(
            lines[0].contains(mention),
            "`{command}`'s error does not name `{mention}`: {shown}"
        );
    }
}
