//! What xtask prints about itself: section headings, steps, notes and errors,
//! set apart from the output of the commands it runs. Colour only on a terminal
//! (and never with NO_COLOR set).

use std::{
    io::{IsTerminal as _, Write as _},
    sync::OnceLock,
};

fn color() -> bool {
    static COLOR: OnceLock<bool> = OnceLock::new();
    *COLOR.get_or_init(|| std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
}

/// Prints `text` on stderr (kept in order with the commands' own output), in the
/// given SGR style when colour is on.
fn print(style: &str, text: &str) {
    let mut err = std::io::stderr().lock();
    // Nothing sensible to do when stderr is gone.
    let _ = if color() {
        writeln!(err, "\x1b[{style}m{text}\x1b[0m")
    } else {
        writeln!(err, "{text}")
    };
}

/// A major step, e.g. "setup" or "3. Traffic from the containers".
pub fn section(title: &str) {
    print("1;36", &format!("\n==> {title}"));
}

/// A smaller step inside a section.
pub fn step(text: &str) {
    print("1", &format!("--> {text}"));
}

/// An explanation for the reader: what to look at in the output.
pub fn note(text: &str) {
    for line in text.lines() {
        print("2", &format!("    {line}"));
    }
}

/// A command line about to run.
pub fn command(line: &str) {
    print("34", &format!("$ {line}"));
}

/// A check that passed or a step that finished.
pub fn ok(text: &str) {
    print("32", &format!("    ok: {text}"));
}

/// A check that failed; the command goes on and fails at the end.
pub fn failed(text: &str) {
    print("1;31", &format!("    FAILED: {text}"));
}

/// Something that went wrong but does not stop the command.
pub fn warn(text: &str) {
    print("1;33", &format!("warning: {text}"));
}

/// The error that ends the command.
pub fn error(text: &str) {
    print("1;31", &format!("\nerror: {text}"));
}
