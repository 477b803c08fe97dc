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
        // No live member is left (killed ones may linger as zombies until
        // init reaps them: they count as gone).
        let pgid = child.id().to_string();
        let live_members = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
                .filter(|stat| {
                    // pid (comm) state ppid pgrp ...: fields after the last ')'.
                    let fields: Vec<&str> = stat
                        .rsplit_once(')')
                        .map_or("", |(_, rest)| rest)
                        .split_whitespace()
                        .collect();
                    fields.get(2) == Some(&pgid.as_str()) && fields.first() != Some(&"Z")
                })
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while live_members() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(live_members(), 0, "the group still has live processes");
    }
}
