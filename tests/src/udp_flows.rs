//! Many UDP flows at once from one lab node: one non-blocking socket per
//! flow, each bound to its own source port and sending a token unique to it
//! to a server answering [`echo::reply_with_source`]. Requests go out in
//! paced batches and are resent a few times (UDP queues drop under bursts);
//! every datagram a socket receives is checked against that socket's own
//! token, so any cross-talk between flows shows.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

use crate::{context, echo};

const MAX_DATAGRAM: usize = 2048;

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// Flows whose requests are in flight at once.
    pub batch: usize,
    /// Requests sent per flow before it counts as unanswered.
    pub attempts: u32,
    /// An attempt ends once no answer arrived for this long.
    pub quiet: Duration,
}

/// What one flow's socket received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowAnswers {
    /// The distinct sources the server reported for this flow's own token,
    /// in order of arrival: one when its translation is stable.
    pub seen: Vec<SocketAddrV4>,
    /// Datagrams that were not an answer to this flow's own token (another
    /// flow's answer, or not from the server at all): cross-talk.
    pub foreign: Vec<(SocketAddr, Vec<u8>)>,
}

impl FlowAnswers {
    /// Whether the flow got at least one answer to its own token.
    pub fn answered(&self) -> bool {
        !self.seen.is_empty()
    }
}

/// The sockets of many flows from one node, each with its token.
#[derive(Debug)]
pub struct UdpFlows {
    sockets: Vec<UdpSocket>,
    locals: Vec<SocketAddrV4>,
    tokens: Vec<Vec<u8>>,
}

impl UdpFlows {
    /// One non-blocking socket per port of `ports`, bound to `addr:port` in
    /// the calling thread's namespace, each sending [`token`]`(its address)`.
    pub fn bind(addr: Ipv4Addr, ports: impl IntoIterator<Item = u16>) -> io::Result<Self> {
        let locals: Vec<SocketAddrV4> = ports
            .into_iter()
            .map(|port| SocketAddrV4::new(addr, port))
            .collect();
        let sockets = locals
            .iter()
            .map(|&local| {
                let socket = UdpSocket::bind(local)
                    .map_err(|e| context(e, &format!("binding UDP {local}")))?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .collect::<io::Result<_>>()?;
        let tokens = locals.iter().map(|&local| token(local)).collect();
        Ok(Self {
            sockets,
            locals,
            tokens,
        })
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether there are no flows.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Flow `flow`'s local (untranslated) address.
    pub fn local(&self, flow: usize) -> SocketAddrV4 {
        self.locals[flow]
    }

    /// Flow `flow`'s token.
    pub fn token(&self, flow: usize) -> &[u8] {
        &self.tokens[flow]
    }

    /// Sends each flow of `flows` its token to `dst`, whose server is tagged
    /// `tag`, `pacing.batch` flows at a time; a flow still unanswered after
    /// an attempt is sent again, up to `pacing.attempts` times. Returns what
    /// each flow of `flows` received, in the order of `flows`, including
    /// datagrams that arrive up to `pacing.quiet` after the last batch.
    pub fn exchange(
        &self,
        flows: &[usize],
        dst: SocketAddrV4,
        tag: &str,
        pacing: Pacing,
    ) -> io::Result<Vec<FlowAnswers>> {
        let mut answers = vec![FlowAnswers::default(); flows.len()];
        let positions: Vec<usize> = (0..flows.len()).collect();
        for batch in positions.chunks(pacing.batch.max(1)) {
            let mut pending = batch.to_vec();
            for _ in 0..pacing.attempts {
                for &at in &pending {
                    self.send(flows[at], dst)?;
                }
                self.await_answers(flows, &mut answers, &pending, dst, tag, pacing.quiet)?;
                pending.retain(|&at| !answers[at].answered());
                if pending.is_empty() {
                    break;
                }
            }
        }
        // Late answers and strays: a datagram may reach a socket whose flow is done.
        std::thread::sleep(pacing.quiet);
        for (at, &flow) in flows.iter().enumerate() {
            self.receive(flow, &mut answers[at], dst, tag)?;
        }
        Ok(answers)
    }

    /// Sends flow `flow`'s token to `dst`; a full queue counts as a lost datagram.
    fn send(&self, flow: usize, dst: SocketAddrV4) -> io::Result<()> {
        match self.sockets[flow].send_to(&self.tokens[flow], dst) {
            Ok(_) => Ok(()),
            Err(e) if is_lost(&e) => Ok(()),
            Err(e) => Err(context(
                e,
                &format!("sending {} to {dst}", echo::show(&self.tokens[flow])),
            )),
        }
    }

    /// Receives on the sockets of `pending` (positions in `flows`) until all
    /// are answered or nothing arrived for `quiet`.
    fn await_answers(
        &self,
        flows: &[usize],
        answers: &mut [FlowAnswers],
        pending: &[usize],
        dst: SocketAddrV4,
        tag: &str,
        quiet: Duration,
    ) -> io::Result<()> {
        let timeout_ms = libc::c_int::try_from(quiet.as_millis()).unwrap_or(libc::c_int::MAX);
        loop {
            let waiting: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&at| !answers[at].answered())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            let mut fds: Vec<libc::pollfd> = waiting
                .iter()
                .map(|&at| libc::pollfd {
                    fd: self.sockets[flows[at]].as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures.
            let ready =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if ready < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(context(e, "poll on UDP flow sockets"));
            }
            if ready == 0 {
                return Ok(()); // quiet: this attempt is over
            }
            for (fd, &at) in fds.iter().zip(&waiting) {
                if fd.revents != 0 {
                    self.receive(flows[at], &mut answers[at], dst, tag)?;
                }
            }
        }
    }

    /// Reads every datagram queued on flow `flow`'s socket into `answers`.
    fn receive(
        &self,
        flow: usize,
        answers: &mut FlowAnswers,
        dst: SocketAddrV4,
        tag: &str,
    ) -> io::Result<()> {
        let mut buf = [0; MAX_DATAGRAM];
        loop {
            match self.sockets[flow].recv_from(&mut buf) {
                Ok((n, from)) => {
                    let datagram = &buf[..n];
                    let own = (from == SocketAddr::V4(dst))
                        .then(|| echo::parse_reply_with_source(tag, datagram))
                        .flatten()
                        .filter(|(_, request)| *request == self.tokens[flow].as_slice());
                    match own {
                        Some((seen, _)) if !answers.seen.contains(&seen) => answers.seen.push(seen),
                        Some(_) => {}
                        None => answers.foreign.push((from, datagram.to_vec())),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(context(
                        e,
                        &format!("receiving on UDP flow {}", self.locals[flow]),
                    ));
                }
            }
        }
    }
}

/// The request the flow from `local` sends: unique to it.
pub fn token(local: SocketAddrV4) -> Vec<u8> {
    format!("flow from {local}").into_bytes()
}

/// Whether a send failed only because a queue was full (the datagram is lost, a retry may pass).
fn is_lost(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Raises this process's open-files limit (soft, and hard if needed) to at
/// least `at_least`: one socket per flow needs more than the usual limits.
pub fn raise_open_files_limit(at_least: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(context(
            io::Error::last_os_error(),
            "getrlimit(RLIMIT_NOFILE)",
        ));
    }
    if limit.rlim_cur >= at_least {
        return Ok(());
    }
    let hard = limit.rlim_max;
    limit.rlim_cur = at_least;
    limit.rlim_max = hard.max(at_least);
    // SAFETY: `limit` is a valid rlimit to read from.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        return Err(context(
            io::Error::last_os_error(),
            &format!(
                "setrlimit(RLIMIT_NOFILE, {at_least}) (the hard limit was {hard}; \
                 raising it needs CAP_SYS_RESOURCE)"
            ),
        ));
    }
    Ok(())
}
