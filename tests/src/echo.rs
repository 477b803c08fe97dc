//! The tagged echo both the UDP and the TCP servers answer with, and
//! printing payloads in assertion messages.

/// The answer to `request` from a server tagged `tag`: `TAG|REQUEST`.
pub fn reply(tag: &str, request: &[u8]) -> Vec<u8> {
    let mut answer = Vec::with_capacity(tag.len() + 1 + request.len());
    answer.extend_from_slice(tag.as_bytes());
    answer.push(b'|');
    answer.extend_from_slice(request);
    answer
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
}
