//! Reading the API's HTTP/1.1 responses off a Unix socket: what the benchmarks that drive
//! `kestrel vmm` through its API share.

use crate::Error;

/// The response at the start of `buffer` once it is complete: status, body, and the bytes it takes.
pub fn parse_response(buffer: &[u8]) -> Result<Option<(u16, String, usize)>, Error> {
    let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let bad = || Error::Bench(format!("a malformed response: {head:?}"));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let mut length = 0;
    for (name, value) in head.lines().skip(1).filter_map(|line| line.split_once(':')) {
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().map_err(|_| bad())?;
        }
    }
    let end = head_end + 4 + length;
    if buffer.len() < end {
        return Ok(None);
    }
    Ok(Some((status, String::from_utf8_lossy(&buffer[head_end + 4..end]).into_owned(), end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_once_complete() {
        assert!(parse_response(b"HTTP/1.1 204 No Content\r\nServer: Kestrel\r\n").unwrap().is_none());
        let no_content = b"HTTP/1.1 204 No Content\r\nServer: Kestrel\r\n\r\n";
        assert_eq!(parse_response(no_content).unwrap(), Some((204, String::new(), no_content.len())));
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert!(parse_response(&ok[..ok.len() - 1]).unwrap().is_none());
        assert_eq!(parse_response(ok).unwrap(), Some((200, "{}".to_owned(), ok.len())));
        assert!(parse_response(b"HTTP/1.1 2x4 No\r\n\r\n").is_err());
    }
}
