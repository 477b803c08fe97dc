//! UDP: a tagged echo server that records who asked and stops by itself,
//! and a client with per-attempt timeouts and a bounded number of retries.

use std::{
    collections::BTreeSet,
    io,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    Datapath, context, echo,
    lab::Lab,
    topology::{container, container_addr},
};

/// How long one attempt waits for the answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How many times a request is sent before giving up.
pub const ATTEMPTS: u32 = 3;
/// A server stops after this long, whatever happened.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(120);

const POLL: Duration = Duration::from_millis(50);
const MAX_DATAGRAM: usize = 65_536;

/// A datagram the echo server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub peer: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// An echo server in a lab node answering [`echo::reply`]`(tag, request)`
/// to every datagram; stops when [`UdpEchoServer::stop`]ped, dropped, or
/// after [`SERVER_LIFETIME`].
#[derive(Debug)]
pub struct UdpEchoServer {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

/// What a [`UdpEchoServer`] answers and how it is sized.
#[derive(Clone, Copy, Debug)]
struct Serving {
    /// Answer [`echo::reply_with_source`] instead of [`echo::reply`].
    with_source: bool,
    /// SO_RCVBUFFORCE/SO_SNDBUFFORCE, for bursts of many flows.
    buffer_bytes: Option<libc::c_int>,
    lifetime: Duration,
}

impl UdpEchoServer {
    /// Binds `addr` inside `node` (bound before this returns) and starts answering.
    pub fn spawn(lab: &Lab, node: &str, addr: SocketAddrV4, tag: &str) -> Self {
        let serving = Serving {
            with_source: false,
            buffer_bytes: None,
            lifetime: SERVER_LIFETIME,
        };
        Self::spawn_serving(lab, node, addr, tag, serving)
    }

    /// A server for many flows at once: socket buffers of `buffer_bytes`
    /// (forced past the sysctl limits) so that bursts are not dropped, answers
    /// [`echo::reply_with_source`] (the source it saw), stops after `lifetime`.
    pub fn spawn_for_many_flows(
        lab: &Lab,
        node: &str,
        addr: SocketAddrV4,
        tag: &str,
        buffer_bytes: libc::c_int,
        lifetime: Duration,
    ) -> Self {
        let serving = Serving {
            with_source: true,
            buffer_bytes: Some(buffer_bytes),
            lifetime,
        };
        Self::spawn_serving(lab, node, addr, tag, serving)
    }

    fn spawn_serving(
        lab: &Lab,
        node: &str,
        addr: SocketAddrV4,
        tag: &str,
        serving: Serving,
    ) -> Self {
        let socket = bind(lab, node, addr).unwrap_or_else(|e| panic!("UDP echo server: {e}"));
        socket
            .set_read_timeout(Some(POLL))
            .expect("setting a read timeout");
        if let Some(bytes) = serving.buffer_bytes {
            for option in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
                set_socket_option(&socket, option, bytes)
                    .unwrap_or_else(|e| panic!("UDP echo server on {addr}: {e}"));
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stopped, record) = (Arc::clone(&stop), Arc::clone(&requests));
        let tag = tag.to_owned();
        let thread = thread::spawn(move || serve(&socket, &tag, serving, &stopped, &record));
        Self {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// Every datagram received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The address the server answers on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Stops the server and returns every datagram it received, in order.
    pub fn stop(mut self) -> Vec<Request> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("stopped once");
        thread
            .join()
            .unwrap_or_else(|_| panic!("UDP echo server on {} panicked", self.addr));
        self.requests()
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sets the SOL_SOCKET option `option` of `socket` to `value`.
fn set_socket_option(
    socket: &UdpSocket,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(context(
            io::Error::last_os_error(),
            &format!("setsockopt({option}, {value})"),
        ))
    }
}

fn serve(
    socket: &UdpSocket,
    tag: &str,
    serving: Serving,
    stop: &AtomicBool,
    requests: &Mutex<Vec<Request>>,
) {
    let deadline = Instant::now() + serving.lifetime;
    let mut buf = vec![0; MAX_DATAGRAM];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(peer))) => {
                let payload = buf[..n].to_vec();
                let answer = if serving.with_source {
                    echo::reply_with_source(tag, peer, &payload)
                } else {
                    echo::reply(tag, &payload)
                };
                // Recorded before answering: whoever got the answer finds
                // the request here. A lost answer shows up as a client
                // timeout, with this request recorded.
                requests
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Request { peer, payload });
                let _ = socket.send_to(&answer, peer);
            }
            Ok((_, SocketAddr::V6(_))) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("UDP echo server receive failed: {e}"),
        }
    }
}

/// The distinct peers among `requests`.
pub fn peers(requests: &[Request]) -> BTreeSet<SocketAddrV4> {
    requests.iter().map(|r| r.peer).collect()
}

/// A UDP socket bound to `addr` inside `node` (port 0: any port).
pub fn bind(lab: &Lab, node: &str, addr: SocketAddrV4) -> io::Result<UdpSocket> {
    lab.run_in(node, || UdpSocket::bind(addr))
        .map_err(|e| context(e, &format!("binding UDP {addr} in {}", lab.ns(node))))
}

/// Sends `payload` to `dst` and returns the first datagram that comes back
/// from `dst`, resending up to [`ATTEMPTS`] times, [`REPLY_TIMEOUT`] each.
/// Fails with [`io::ErrorKind::TimedOut`] when nothing came back.
pub fn request(socket: &UdpSocket, dst: SocketAddrV4, payload: &[u8]) -> io::Result<Vec<u8>> {
    request_patiently(socket, dst, payload, ATTEMPTS, REPLY_TIMEOUT)
}

/// Like [`request`], with `attempts` attempts of `reply_timeout` each.
pub fn request_patiently(
    socket: &UdpSocket,
    dst: SocketAddrV4,
    payload: &[u8],
    attempts: u32,
    reply_timeout: Duration,
) -> io::Result<Vec<u8>> {
    let local = socket
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let what = format!("UDP request {} from {local} to {dst}", echo::show(payload));
    let mut buf = vec![0; MAX_DATAGRAM];
    for _ in 0..attempts {
        socket
            .send_to(payload, dst)
            .map_err(|e| context(e, &what))?;
        let deadline = Instant::now() + reply_timeout;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            socket
                .set_read_timeout(Some(left))
                .map_err(|e| context(e, &what))?;
            match socket.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(from))) if from == dst => return Ok(buf[..n].to_vec()),
                Ok(_) => {} // not from the server: keep waiting
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(context(e, &what)),
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer within {attempts} attempts of {reply_timeout:?}"),
    ))
}

/// The next datagram `socket` receives within `wait`, and its sender; `None`
/// if none came.
pub fn receive(socket: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    socket.set_read_timeout(Some(wait)).expect("read timeout");
    let mut buf = vec![0; MAX_DATAGRAM];
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("receiving: {e}"),
    }
}

/// Asserts that a UDP socket of c1 connected to `closed` (a port nothing
/// listens on) reports ECONNREFUSED within `attempts` sends, waiting `wait`
/// after each: the peer's port-unreachable came back to c1 through the
/// datapath's ICMP error translation. Panics with `dp`'s diagnostics otherwise.
pub fn assert_c1_refused(
    lab: &Lab,
    dp: &Datapath<'_>,
    closed: SocketAddrV4,
    attempts: u32,
    wait: Duration,
) {
    let node = container(1);
    let socket =
        bind(lab, &node, SocketAddrV4::new(container_addr(1), 0)).unwrap_or_else(|e| panic!("{e}"));
    socket.connect(closed).expect("connect");
    let refused = refused(&socket, attempts, wait).unwrap_or_else(|other| {
        panic!(
            "{node} expected ECONNREFUSED, got {other}\n{}",
            dp.diagnostics()
        )
    });
    assert!(
        refused,
        "{node} never saw ECONNREFUSED: the ICMP error did not come back\n{}",
        dp.diagnostics()
    );
    // The error went through the datapath's ICMP translation.
    dp.assert_counter_at_least("translated_icmp_error", 1);
}

/// Sends a datagram on the connected `socket` up to `attempts` times, each
/// time waiting `wait` for the answer: `Ok(true)` once a receive fails with
/// ECONNREFUSED (the port-unreachable the first send provoked came back, to
/// be reported on the next socket call), `Ok(false)` if every wait passed
/// quietly; anything else (an answer, another error) is returned as `Err`.
fn refused(socket: &UdpSocket, attempts: u32, wait: Duration) -> Result<bool, String> {
    socket.set_read_timeout(Some(wait)).expect("timeout");
    for _ in 0..attempts {
        let _ = socket.send(b"anyone there?");
        match socket.recv(&mut [0u8; 64]) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => return Err(format!("{other:?}")),
        }
    }
    Ok(false)
}

/// Binds in `node` and makes one [`request`].
pub fn exchange(
    lab: &Lab,
    node: &str,
    bind_to: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
    request(&bind(lab, node, bind_to)?, dst, payload)
}
