//! Running commands: echoed before they run (so the output reads like a
//! transcript a user could replay), with the [`workspace::child_path`] PATH,
//! and with errors that name the command that failed.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs::File,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{ui, workspace};

/// A command to run, and how to show it.
#[derive(Debug)]
pub struct Cmd {
    command: Command,
    /// Shell-like rendering: `VAR=value program arg...`.
    line: String,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref();
        let mut command = Command::new(program);
        command.env("PATH", workspace::child_path());
        Self {
            command,
            line: quote(&short_program(program)),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        let arg = arg.as_ref();
        self.command.arg(arg);
        self.line.push(' ');
        self.line.push_str(&quote(arg));
        self
    }

    pub fn args<I>(self, args: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<OsStr>,
    {
        args.into_iter().fold(self, Self::arg)
    }

    /// Sets an environment variable; shown in front of the command line.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref();
        self.command.env(key, value);
        self.line = format!("{key}={} {}", quote(value), self.line);
        self
    }

    /// Puts `dir` in front of the child's PATH; shown as `PATH=DIR:$PATH`.
    pub fn prepend_path(mut self, dir: &Path) -> Self {
        let dirs = std::iter::once(dir.to_owned()).chain(env::split_paths(workspace::child_path()));
        if let Ok(path) = env::join_paths(dirs) {
            self.command.env("PATH", path);
        }
        self.line = format!("PATH={}:$PATH {}", quote(dir.as_os_str()), self.line);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.command.current_dir(dir);
        if dir != workspace::root() {
            self.line = format!("(cd {} && {})", quote(dir.as_os_str()), self.line);
        }
        self
    }

    /// The command line as shown.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Echoes and runs the command with inherited stdio; fails unless it exits 0.
    pub fn run(self) -> Result<()> {
        let line = self.line.clone();
        let status = self.status()?;
        check(&line, status)
    }

    /// Echoes and runs the command with inherited stdio; returns its exit status,
    /// for commands whose failure is an expected outcome.
    pub fn status(mut self) -> Result<ExitStatus> {
        ui::command(&self.line);
        self.command
            .status()
            .with_context(|| format!("cannot run `{}`", self.line))
    }

    /// Runs the command quietly and returns what it printed, whatever its exit status.
    pub fn output(mut self) -> Result<Output> {
        self.command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", self.line))
    }

    /// Runs the command quietly and returns its stdout; fails (quoting its
    /// stderr) unless it exits 0.
    pub fn read(self) -> Result<String> {
        let line = self.line.clone();
        let output = self.output()?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!("`{line}` failed ({}): {}", output.status, stderr.trim());
        }
        String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8"))
    }

    /// Echoes and runs the command, its stderr shown as it comes (e.g. cargo's
    /// progress); returns its stdout; fails unless it exits 0.
    pub fn read_echoed(mut self) -> Result<String> {
        ui::command(&self.line);
        let output = self
            .command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run `{}`", self.line))?;
        check(&self.line, output.status)?;
        String::from_utf8(output.stdout)
            .with_context(|| format!("`{}` printed non-UTF-8", self.line))
    }

    /// Echoes and starts the command in a process group of its own, stdin
    /// from /dev/null, stdout and stderr into `log`: the caller ends it and
    /// whatever it started by signalling the group (a terminal's Ctrl-C does
    /// not reach it).
    pub fn spawn_group(mut self, log: &File) -> Result<Child> {
        ui::command(&format!("{} &", self.line));
        let stderr = log.try_clone().context("duplicating the log file")?;
        self.command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run `{}`", self.line))
    }

    /// Echoes and starts the command in the background, with a piped stdin
    /// and stdout (stderr inherited).
    pub fn spawn_piped(mut self) -> Result<Child> {
        ui::command(&format!("{} &", self.line));
        self.command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{}`", self.line))
    }
}

/// Fails with the command line and its status unless `status` is success.
pub fn check(line: &str, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Absolute paths inside the workspace or the toolchain are long; show
/// `target/release/bpfmasq` and `cargo` instead.
fn short_program(program: &OsStr) -> OsString {
    let path = Path::new(program);
    if let Ok(relative) = path.strip_prefix(workspace::root()) {
        return relative.as_os_str().to_owned();
    }
    if path.is_absolute() && path.file_name() == Some(OsStr::new("cargo")) {
        return "cargo".into();
    }
    program.to_owned()
}

/// Quotes `arg` for display the way a POSIX shell would need it; multi-line
/// arguments (inline scripts) are abbreviated.
pub fn quote(arg: &OsStr) -> String {
    let arg = arg.to_string_lossy();
    if arg.contains('\n') {
        return format!("<{}-line script>", arg.lines().count());
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.into_owned();
    }
    let mut quoted = String::from("'");
    for c in arg.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_a_shell() {
        assert_eq!(quote(OsStr::new("--release")), "--release");
        assert_eq!(quote(OsStr::new("${Status}")), "'${Status}'");
        assert_eq!(quote(OsStr::new("it's")), "'it'\\''s'");
        assert_eq!(quote(OsStr::new("")), "''");
        assert_eq!(quote(OsStr::new("a\nb\nc")), "<3-line script>");
    }

    #[test]
    fn shows_env_and_args() {
        let cmd = Cmd::new("cargo")
            .args(["install", "bpf-linker"])
            .env("LLVM_PREFIX", "/p a");
        assert_eq!(cmd.line(), "LLVM_PREFIX='/p a' cargo install bpf-linker");
    }
}
