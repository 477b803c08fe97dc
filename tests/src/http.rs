//! A plain HTTP/1.0 GET from inside a lab node (the server closes the
//! connection after the response, so the body is everything after the
//! head), for the metrics endpoint and Prometheus' API.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    time::Duration,
};

use crate::{context, lab::Lab};

/// How long connecting, sending and reading may take each.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A response: status code and body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// A TCP connection to `server` from inside `node`.
pub fn connect(lab: &Lab, node: &str, server: SocketAddrV4) -> io::Result<TcpStream> {
    let stream = lab
        .run_in(node, || TcpStream::connect_timeout(&server.into(), TIMEOUT))
        .map_err(|e| context(e, &format!("connecting to {server} from {}", lab.ns(node))))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// `GET target` (path and query) from `server`, from inside `node`.
pub fn get(lab: &Lab, node: &str, server: SocketAddrV4, target: &str) -> io::Result<Response> {
    let what = format!("GET http://{server}{target} from {}", lab.ns(node));
    let mut stream = connect(lab, node, server)?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {server}\r\n\r\n")
        .map_err(|e| context(e, &what))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| context(e, &what))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what}: no complete response head in {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: no status in {head:?}"),
            )
        })?;
    let content_type = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    Ok(Response {
        status,
        content_type,
        body: body.to_owned(),
    })
}

/// `text` percent-encoded for a query string.
pub fn encode_query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
