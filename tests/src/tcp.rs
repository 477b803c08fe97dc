//! TCP: a server that handles a bounded number of connections and stops by
//! itself, clients bound to a chosen source, a byte-for-byte checked bulk
//! transfer and a tagged request/response. Every operation has a timeout.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Datapath, context, echo, lab::Lab, pattern};

/// How long a client waits for the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read or write may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A server stops accepting after this long, whatever happened.
pub const SERVER_LIFETIME: Duration = Duration::from_secs(120);
/// Largest request the echo handler reads.
pub const MAX_REQUEST: u64 = 64 * 1024;

const ACCEPT_POLL: Duration = Duration::from_millis(20);
const CHUNK: usize = 256 * 1024;
/// What the stream verifier sends back when all bytes matched.
const NO_MISMATCH: u64 = u64::MAX;

/// One connection a server handled: the peer it saw and what its handler returned.
#[derive(Debug)]
pub struct Served<R> {
    pub peer: SocketAddrV4,
    pub result: io::Result<R>,
}

/// A TCP server in a lab node, handling up to `connections` connections,
/// each on its own thread; it stops accepting when it has them, when
/// [`TcpServer::join`] is called, when dropped, or after [`SERVER_LIFETIME`].
#[derive(Debug)]
pub struct TcpServer<R> {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Served<R>>>>,
}

impl<R: Send + 'static> TcpServer<R> {
    /// Listens on `addr` inside `node` (the socket is bound before this returns).
    pub fn spawn<F>(
        lab: &Lab,
        node: &str,
        addr: SocketAddrV4,
        connections: usize,
        handler: F,
    ) -> Self
    where
        F: Fn(&mut TcpStream, SocketAddrV4) -> io::Result<R> + Send + Sync + 'static,
    {
        let listener = lab
            .run_in(node, || {
                TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l))
            })
            .unwrap_or_else(|e| {
                panic!(
                    "TCP server cannot listen on {addr} in {}: {e}",
                    lab.ns(node)
                )
            });
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let handler = Arc::new(handler);
        let thread = thread::spawn(move || serve(&listener, connections, &handler, &stopped));
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Stops accepting (connections already queued are still handled) and
    /// returns every connection handled, in accept order.
    pub fn join(mut self) -> Vec<Served<R>> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("joined once");
        thread
            .join()
            .unwrap_or_else(|_| panic!("TCP server on {} panicked", self.addr))
    }
}

impl<R> Drop for TcpServer<R> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve<R, F>(
    listener: &TcpListener,
    connections: usize,
    handler: &Arc<F>,
    stop: &AtomicBool,
) -> Vec<Served<R>>
where
    R: Send + 'static,
    F: Fn(&mut TcpStream, SocketAddrV4) -> io::Result<R> + Send + Sync + 'static,
{
    let deadline = Instant::now() + SERVER_LIFETIME;
    let mut workers = Vec::new();
    while workers.len() < connections && Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let peer = v4(peer);
                let handler = Arc::clone(handler);
                workers.push(thread::spawn(move || {
                    let result = with_timeouts(&stream).and_then(|()| handler(&mut stream, peer));
                    Served { peer, result }
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                thread::sleep(ACCEPT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("TCP server accept failed: {e}"),
        }
    }
    workers
        .into_iter()
        .map(|w| {
            w.join()
                .unwrap_or_else(|_| panic!("TCP connection handler panicked"))
        })
        .collect()
}

/// Connects from `node` (bound to `bind` if given, e.g. a fixed source
/// port) to `dst`, with read and write timeouts set.
pub fn connect(
    lab: &Lab,
    node: &str,
    bind: Option<SocketAddrV4>,
    dst: SocketAddrV4,
) -> io::Result<TcpStream> {
    let from = bind.map_or_else(|| "any port".to_owned(), |b| b.to_string());
    lab.run_in(node, || -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        if let Some(bind) = bind {
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::V4(bind).into())?;
        }
        socket.connect_timeout(&SocketAddr::V4(dst).into(), CONNECT_TIMEOUT)?;
        let stream = TcpStream::from(socket);
        with_timeouts(&stream)?;
        Ok(stream)
    })
    .map_err(|e| context(e, &format!("TCP connect from {node} ({from}) to {dst}")))
}

/// What the stream verifier reports: bytes received and where they first
/// differed from the expected stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamCheck {
    pub seed: u64,
    pub expected: u64,
    pub received: u64,
    pub first_mismatch: Option<u64>,
}

impl StreamCheck {
    /// Whether exactly the expected bytes arrived.
    pub fn intact(&self) -> bool {
        self.received == self.expected && self.first_mismatch.is_none()
    }
}

/// Server handler: reads a header (seed, length) and the stream until the
/// client shuts down its side, compares every byte with [`pattern`], and
/// answers with the number of bytes received and the first mismatch.
pub fn verify_stream(stream: &mut TcpStream, _peer: SocketAddrV4) -> io::Result<StreamCheck> {
    let mut header = [0; 16];
    stream.read_exact(&mut header)?;
    let seed = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let expected = u64::from_be_bytes(header[8..].try_into().expect("8 bytes"));
    let (mut buf, mut scratch) = (vec![0; CHUNK], Vec::new());
    let (mut received, mut first_mismatch) = (0u64, None);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(context(e, &format!("after {received} of {expected} bytes"))),
        };
        if first_mismatch.is_none() {
            first_mismatch = pattern::first_mismatch(seed, received, &buf[..n], &mut scratch);
        }
        received += n as u64;
    }
    let mut ack = [0; 16];
    ack[..8].copy_from_slice(&received.to_be_bytes());
    ack[8..].copy_from_slice(&first_mismatch.unwrap_or(NO_MISMATCH).to_be_bytes());
    stream.write_all(&ack)?;
    Ok(StreamCheck {
        seed,
        expected,
        received,
        first_mismatch,
    })
}

/// Client side of [`verify_stream`]: sends `len` bytes of the stream for
/// `seed`, then returns what the server says it received.
pub fn send_stream(stream: &mut TcpStream, seed: u64, len: u64) -> io::Result<StreamCheck> {
    let mut header = [0; 16];
    header[..8].copy_from_slice(&seed.to_be_bytes());
    header[8..].copy_from_slice(&len.to_be_bytes());
    stream.write_all(&header)?;
    let mut buf = vec![0; CHUNK];
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(CHUNK as u64) as usize;
        pattern::fill(seed, sent, &mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(|e| context(e, &format!("sending after {sent} of {len} bytes")))?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut ack = [0; 16];
    stream.read_exact(&mut ack).map_err(|e| {
        context(
            e,
            &format!("waiting for the server's count after sending {len} bytes"),
        )
    })?;
    let received = u64::from_be_bytes(ack[..8].try_into().expect("8 bytes"));
    let mismatch = u64::from_be_bytes(ack[8..].try_into().expect("8 bytes"));
    Ok(StreamCheck {
        seed,
        expected: len,
        received,
        first_mismatch: (mismatch != NO_MISMATCH).then_some(mismatch),
    })
}

/// What a [`transfer_checked`] saw: the client's own address and the
/// source the server saw the connection come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transferred {
    pub client: SocketAddrV4,
    pub seen_by_server: SocketAddrV4,
}

/// Sends `len` bytes of the stream for `seed` from `node` to a
/// [`verify_stream`] server started on `dst` in `server_node`, and asserts
/// that the server handled that one connection and that both ends agree
/// every byte arrived in order (with `dp`'s diagnostics otherwise).
pub fn transfer_checked(
    lab: &Lab,
    dp: &Datapath<'_>,
    node: &str,
    (server_node, dst): (&str, SocketAddrV4),
    seed: u64,
    len: u64,
) -> Transferred {
    let server = TcpServer::spawn(lab, server_node, dst, 1, verify_stream);
    let (client, check) = connect(lab, node, None, dst)
        .and_then(|mut stream| {
            let client = v4(stream.local_addr()?);
            Ok((client, send_stream(&mut stream, seed, len)?))
        })
        .unwrap_or_else(|e| panic!("TCP transfer from {node}: {e}\n{}", dp.diagnostics()));
    assert!(
        check.intact(),
        "the peer received {} of {} bytes from {node}, first differing byte at {:?}\n{}",
        check.received,
        check.expected,
        check.first_mismatch,
        dp.diagnostics()
    );
    let served = server.join();
    let [conn] = served.as_slice() else {
        panic!(
            "the server on {dst} handled {} connections, expected 1: {served:?}",
            served.len()
        )
    };
    let seen = conn
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("the server's side of the transfer from {node}: {e}"));
    assert!(
        seen.intact(),
        "the server's view of the stream from {}: {seen:?}",
        conn.peer
    );
    Transferred {
        client,
        seen_by_server: conn.peer,
    }
}

/// Server handler factory: reads the request until the client shuts down
/// its side, answers [`echo::reply`]`(tag, request)` and returns the request.
pub fn echo_tagged(
    tag: &str,
) -> impl Fn(&mut TcpStream, SocketAddrV4) -> io::Result<Vec<u8>> + Send + Sync + 'static {
    let tag = tag.to_owned();
    move |stream, _peer| {
        let mut request = Vec::new();
        stream.take(MAX_REQUEST).read_to_end(&mut request)?;
        stream.write_all(&echo::reply(&tag, &request))?;
        Ok(request)
    }
}

/// Server handler factory for long-lived connections: answers every line
/// (`\n` included) with [`echo::reply`]`(tag, line)` as it arrives, waiting
/// up to `idle` for the next one, until the client shuts down its side;
/// returns every line received. A one-line request of [`request`] gets the
/// same answer as from [`echo_tagged`].
pub fn echo_lines(
    tag: &str,
    idle: Duration,
) -> impl Fn(&mut TcpStream, SocketAddrV4) -> io::Result<Vec<u8>> + Send + Sync + 'static {
    let tag = tag.to_owned();
    move |stream, _peer| {
        stream.set_read_timeout(Some(idle))?;
        let mut received = Vec::new();
        loop {
            let line = read_line(stream)?;
            if line.is_empty() {
                return Ok(received);
            }
            stream.write_all(&echo::reply(&tag, &line))?;
            received.extend_from_slice(&line);
        }
    }
}

/// Client side of [`echo_lines`]: sends `line` (which ends in `\n`) and
/// returns the one-line answer, keeping the connection open.
pub fn ask_line(stream: &mut TcpStream, line: &[u8]) -> io::Result<Vec<u8>> {
    let what = |e| context(e, &format!("TCP line {}", echo::show(line)));
    stream.write_all(line).map_err(what)?;
    read_line(stream).map_err(what)
}

/// Bytes up to and including the next `\n`, or up to the end of the stream
/// (empty at its end). Byte by byte, so nothing past the line is consumed.
fn read_line(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0; 1];
    while line.len() < MAX_REQUEST as usize && line.last() != Some(&b'\n') {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(line)
}

/// Client side of [`echo_tagged`]: sends `payload`, shuts down the sending
/// side and returns the whole answer.
pub fn request(stream: &mut TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let exchange = |stream: &mut TcpStream| -> io::Result<Vec<u8>> {
        stream.write_all(payload)?;
        stream.shutdown(Shutdown::Write)?;
        let mut answer = Vec::new();
        stream.take(MAX_REQUEST * 2).read_to_end(&mut answer)?;
        Ok(answer)
    };
    exchange(stream)
        .map_err(|e| context(e, &format!("TCP request {} to {peer}", echo::show(payload))))
}

/// Connects from `node` to `dst` and makes one [`request`].
pub fn exchange(
    lab: &Lab,
    node: &str,
    bind: Option<SocketAddrV4>,
    dst: SocketAddrV4,
    payload: &[u8],
) -> io::Result<Vec<u8>> {
    request(&mut connect(lab, node, bind, dst)?, payload)
}

fn with_timeouts(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))
}

fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(v6) => panic!("unexpected IPv6 peer {v6} in an IPv4 lab"),
    }
}
