//! The tagged echo both the UDP and the TCP servers answer with, and
//! printing payloads in assertion messages.

use std::net::SocketAddrV4;

/// The answer to `request` from a server tagged `tag`: `TAG|REQUEST`.
pub fn reply(tag: &str, request: &[u8]) -> Vec<u8> {
    let mut answer = Vec::with_capacity(tag.len() + 1 + request.len());
    answer.extend_from_slice(tag.as_bytes());
    answer.push(b'|');
    answer.extend_from_slice(request);
    answer
}

/// The answer to `request` from a server tagged `tag` that also reports the
/// source address:port it saw: `TAG|SOURCE|REQUEST`.
pub fn reply_with_source(tag: &str, source: SocketAddrV4, request: &[u8]) -> Vec<u8> {
    reply(&format!("{tag}|{source}"), request)
}

/// The source and the request of a [`reply_with_source`] answer from a
/// server tagged `tag`; `None` if `answer` is not one.
pub fn parse_reply_with_source<'a>(
    tag: &str,
    answer: &'a [u8],
) -> Option<(SocketAddrV4, &'a [u8])> {
    let rest = answer.strip_prefix(tag.as_bytes())?.strip_prefix(b"|")?;
    let end = rest.iter().position(|&b| b == b'|')?;
    let source = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    Some((source, &rest[end + 1..]))
}

/// `bytes` as text for a message: lossy UTF-8, quoted, cut after 200 bytes.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    if bytes.len() > MAX {
        format!("{text:?}... ({} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_tag_and_request() {
        assert_eq!(reply("out", b"hi"), b"out|hi");
        assert_eq!(show(b"hi"), "\"hi\"");
        assert!(show(&[b'x'; 300]).ends_with("(300 bytes)"));
    }

    #[test]
    fn replies_with_source_round_trip() {
        let source: SocketAddrV4 = "192.168.61.11:4242".parse().expect("address");
        let answer = reply_with_source("out", source, b"a|b");
        assert_eq!(answer, b"out|192.168.61.11:4242|a|b");
        assert_eq!(
            parse_reply_with_source("out", &answer),
            Some((source, b"a|b".as_slice()))
        );
        assert_eq!(parse_reply_with_source("other", &answer), None);
        assert_eq!(parse_reply_with_source("out", b"out|nonsense|x"), None);
    }
}
