//! Readiness for service managers (systemd's `Type=notify`): once the
//! datapath carries traffic, `run` sends `READY=1` as one datagram to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
//! socket). Without the variable nothing is sent, so the daemon behaves the
//! same under any supervisor.

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt as _, net::UnixDatagram},
};

use anyhow::{Context as _, Result};

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Tells the service manager, if there is one, that the daemon is ready;
/// `status` is shown by `systemctl status`. Returns whether a manager was told.
pub fn ready(status: &str) -> Result<bool> {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
        return Ok(false);
    };
    let status = status.lines().next().unwrap_or_default();
    send(&socket, &format!("READY=1\nSTATUS={status}\n")).with_context(|| {
        format!(
            "telling the service manager at {NOTIFY_SOCKET_ENV}={} that bpfmasq is ready",
            socket.display()
        )
    })?;
    Ok(true)
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the socket `address`.
pub fn send(address: &OsStr, state: &str) -> Result<()> {
    let socket = UnixDatagram::unbound().context("creating a unix datagram socket")?;
    let bytes = address.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)
            .context("an abstract socket name")?;
        socket.send_to_addr(state.as_bytes(), &addr)
    } else {
        socket.send_to(state.as_bytes(), address)
    }
    .context("sending")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{os::linux::net::SocketAddrExt as _, os::unix::net::SocketAddr, time::Duration};

    use super::*;

    fn received(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0; 512];
        let n = listener.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn readiness_reaches_a_socket_named_by_path() {
        let dir = std::env::temp_dir().join(format!("bpfmasq-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=attached\n").unwrap();
        let got = received(&listener);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got, "READY=1\nSTATUS=attached\n");
    }

    #[test]
    fn readiness_reaches_an_abstract_socket() {
        let name = format!("bpfmasq-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "READY=1\n").unwrap();
        assert_eq!(received(&listener), "READY=1\n");
    }

    #[test]
    fn a_missing_manager_socket_is_an_error_naming_nothing_sent() {
        let err = send(OsStr::new("/nonexistent/bpfmasq/notify"), "READY=1\n").unwrap_err();
        assert!(format!("{err:#}").starts_with("sending"), "{err:#}");
    }
}
