//! A child in a process group of its own (`Command::process_group(0)`):
//! whatever it starts stays in that group, so a deadline can end all of it
//! by the group's id, and nothing else; its output pipes are read on
//! threads, so a child that fills one never blocks.

use std::{io, process::Child, sync::mpsc, thread};

/// Reads a pipe to its end on a thread of its own; the bytes arrive on the
/// channel.
pub fn collect(pipe: Option<impl io::Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

/// SIGKILLs the process group `child` leads (created with `process_group(0)`)
/// and reaps `child`.
pub fn kill_group(child: &mut Child) {
    if let Ok(pgid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on exactly the process group the caller created
        // for this child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::CommandExt as _, process::Command, process::Stdio};

    use super::*;

    #[test]
    fn collects_a_childs_output() {
        let mut child = Command::new("echo")
            .arg("hello")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = collect(child.stdout.take());
        assert_eq!(out.recv().unwrap(), b"hello\n");
        child.wait().unwrap();
    }

    #[test]
    fn killing_the_group_ends_what_the_child_started() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 600 & sleep 600"])
            .process_group(0)
            .spawn()
            .unwrap();
        kill_group(&mut child);
        // The group is gone: signalling it fails.
        let pgid = child.id() as i32;
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(-pgid, 0) } == 0;
        assert!(!alive, "the group still has processes");
    }
}
