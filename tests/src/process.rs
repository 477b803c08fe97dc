//! Running a command with a deadline: no test may hang on a stuck process.
//!
//! The command runs in a process group of its own, so that on timeout the
//! whole group (the command and anything it started) is killed by that
//! group's id, and nothing else.

use std::{
    io,
    os::unix::process::CommandExt as _,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use process_group::{collect, kill_group};

/// How long a finished command's descendants may keep its output pipes open.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// Runs `cmd` to completion, capturing stdout and stderr; after `timeout`
/// kills its process group and fails with [`io::ErrorKind::TimedOut`].
pub fn try_run(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    try_run_fed(cmd, Stdio::null(), timeout)
}

/// Like [`try_run`], with `stdin` as the command's standard input.
pub fn try_run_fed(cmd: &mut Command, stdin: Stdio, timeout: Duration) -> io::Result<Output> {
    let shown = format!("{cmd:?}");
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {shown}: {e}")))?;
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = match (
        stdout.recv_timeout(PIPE_GRACE),
        stderr.recv_timeout(PIPE_GRACE),
    ) {
        (Ok(out), Ok(err)) => (out, err),
        _ => {
            // A descendant still holds the pipes: end the group, then read what is left.
            kill_group(&mut child);
            (
                stdout.recv().unwrap_or_default(),
                stderr.recv().unwrap_or_default(),
            )
        }
    };
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{shown} did not finish within {timeout:?} and was killed\n{}",
                describe_streams(&stdout, &stderr)
            ),
        )),
    }
}

/// Like [`try_run`], but panics (with the command and what it printed) when
/// the command cannot start or times out. The exit status is left to the caller.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    try_run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// `Ok` if `output`'s command exited with status 0, else its [`describe`]d output.
pub fn success(output: &Output) -> Result<(), String> {
    if output.status.success() {
        Ok(())
    } else {
        Err(describe(output))
    }
}

/// Exit status, stdout and stderr of `output`, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n{}",
        output.status,
        describe_streams(&output.stdout, &output.stderr)
    )
}

fn describe_streams(stdout: &[u8], stderr: &[u8]) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(stdout).trim_end(),
        String::from_utf8_lossy(stderr).trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn kills_on_timeout() {
        let started = Instant::now();
        let err = try_run(
            Command::new("sh").args(["-c", "echo partial; sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("partial"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
