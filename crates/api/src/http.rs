//! A strict HTTP/1.1 subset, enough for Firecracker's clients: `GET`, `PUT` and `PATCH` requests with
//! `Content-Length` bodies, keep-alive and pipelining, `Expect: 100-continue`. Headers are capped
//! at [`MAX_HEADER_BYTES`] and bodies at [`MAX_BODY_BYTES`]; anything malformed is an [`HttpError`]
//! (a 400 response, after which the connection closes because its framing cannot be trusted).

use std::io::{Read, Write};

/// The most bytes the request line and headers may take.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The largest request body accepted: Firecracker's default payload limit.
pub const MAX_BODY_BYTES: usize = 51_200;

/// A request method the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The target's path, without any query string.
    pub path: String,
    pub body: Vec<u8>,
    /// The client asked to close the connection after the response (or spoke HTTP/1.0).
    pub close: bool,
}

impl Request {
    /// The path's segments after the leading `/`, a trailing `/` ignored: `/drives/a` is
    /// `["drives", "a"]`, `/` is `[]`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.trim_end_matches('/').split('/').skip(1).collect()
    }
}

/// Why a request could not be read. Everything but [`HttpError::Closed`] and [`HttpError::Io`]
/// is answered with a 400 whose `fault_message` is the error's text.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the connection closed between requests")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("The request ended before it was complete")]
    Truncated,
    #[error("The request line and headers are longer than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("The request head is not valid ASCII")]
    NotAscii,
    #[error("Invalid request line: {0}")]
    BadRequestLine(String),
    #[error("Unsupported HTTP method {0}: the API serves GET, PUT and PATCH")]
    UnknownMethod(String),
    #[error("Unsupported HTTP version {0}: the API speaks HTTP/1.1")]
    BadVersion(String),
    #[error("Invalid header line: {0}")]
    BadHeader(String),
    #[error("Invalid Content-Length: {0}")]
    BadContentLength(String),
    #[error("Transfer-Encoding is not supported; send a Content-Length")]
    TransferEncoding,
    #[error("Request payload with size {size} is larger than the limit of {limit} allowed by server.")]
    BodyTooLarge { size: u64, limit: usize },
}

/// A connection requests are read from.
pub trait Transport: Read + Write {
    /// The first byte of a request has arrived: the rest must follow promptly (the listener
    /// starts the request's deadline here).
    fn request_started(&mut self) {}
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reads more bytes into `buffer`; false at end of input.
fn fill<T: Transport>(stream: &mut T, buffer: &mut Vec<u8>) -> Result<bool, HttpError> {
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buffer.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::Io(e)),
        }
    }
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The first `n` characters of client-supplied text, for an error message.
fn excerpt(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

/// Reads one request from `stream`. `buffer` holds bytes read past the previous request (a
/// pipelining client) and keeps those past this one.
pub fn read_request<T: Transport>(stream: &mut T, buffer: &mut Vec<u8>) -> Result<Request, HttpError> {
    read_request_limited(stream, buffer, MAX_BODY_BYTES)
}

/// [`read_request`] with bodies limited to `max_body` bytes instead of [`MAX_BODY_BYTES`]
/// (`--http-api-max-payload-size`).
pub fn read_request_limited<T: Transport>(
    stream: &mut T,
    buffer: &mut Vec<u8>,
    max_body: usize,
) -> Result<Request, HttpError> {
    let head_end = read_head(stream, buffer)?;
    let head = std::str::from_utf8(&buffer[..head_end]).map_err(|_| HttpError::NotAscii)?;
    if !head.is_ascii() {
        return Err(HttpError::NotAscii);
    }
    let mut lines = head.split("\r\n");
    let RequestLine { method, path, mut close } = parse_request_line(lines.next().unwrap_or_default())?;
    let headers = parse_headers(lines)?;
    close = headers.close.unwrap_or(close);
    let body = read_body(stream, buffer, head_end + 4, &headers, max_body)?;
    Ok(Request { method, path, body, close })
}

/// Reads until `buffer` holds a whole request head; returns where its blank line starts.
fn read_head<T: Transport>(stream: &mut T, buffer: &mut Vec<u8>) -> Result<usize, HttpError> {
    let mut started = false;
    let head_end = loop {
        if !buffer.is_empty() && !started {
            started = true;
            stream.request_started();
        }
        if let Some(end) = find_head_end(buffer) {
            break end;
        }
        if buffer.len() > MAX_HEADER_BYTES {
            return Err(HttpError::HeadersTooLarge);
        }
        if !fill(stream, buffer)? {
            return Err(if buffer.is_empty() { HttpError::Closed } else { HttpError::Truncated });
        }
    };
    if head_end > MAX_HEADER_BYTES {
        return Err(HttpError::HeadersTooLarge);
    }
    Ok(head_end)
}

/// What the request line says.
struct RequestLine {
    method: Method,
    path: String,
    /// HTTP/1.0: close after the response unless a header says otherwise.
    close: bool,
}

fn parse_request_line(request_line: &str) -> Result<RequestLine, HttpError> {
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(HttpError::BadRequestLine(excerpt(request_line, 200)));
    };
    let method = match method {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        other if is_token(other) => return Err(HttpError::UnknownMethod(excerpt(other, 32))),
        _ => return Err(HttpError::BadRequestLine(excerpt(request_line, 200))),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HttpError::BadRequestLine(format!(
            "the target must be a path, got '{}'",
            excerpt(target, 200)
        )));
    }
    let close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        other => return Err(HttpError::BadVersion(excerpt(other, 32))),
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path).to_owned();
    Ok(RequestLine { method, path, close })
}

/// The header fields the server acts on.
#[derive(Default)]
struct Headers {
    content_length: Option<u64>,
    expect_continue: bool,
    /// What the last `Connection` option said, if any: close or keep-alive.
    close: Option<bool>,
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Headers, HttpError> {
    let mut headers = Headers::default();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::BadHeader(excerpt(line, 200)));
        };
        if !is_token(name) {
            return Err(HttpError::BadHeader(excerpt(line, 200)));
        }
        let value = value.trim_matches([' ', '\t']);
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let length = parse_content_length(value)?;
                if headers.content_length.is_some_and(|seen| seen != length) {
                    return Err(HttpError::BadContentLength("two different lengths".into()));
                }
                headers.content_length = Some(length);
            }
            "transfer-encoding" => return Err(HttpError::TransferEncoding),
            "connection" => {
                for option in value.split(',').map(str::trim) {
                    if option.eq_ignore_ascii_case("close") {
                        headers.close = Some(true);
                    } else if option.eq_ignore_ascii_case("keep-alive") {
                        headers.close = Some(false);
                    }
                }
            }
            "expect" => headers.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    Ok(headers)
}

/// Digits only (no sign, no spaces inside), at most 19 of them so that the value fits a u64.
fn parse_content_length(value: &str) -> Result<u64, HttpError> {
    (!value.is_empty() && value.len() <= 19 && value.bytes().all(|b| b.is_ascii_digit()))
        .then(|| value.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| HttpError::BadContentLength(excerpt(value, 32)))
}

/// Reads the body that starts at `body_start` in `buffer` and removes the request from `buffer`.
fn read_body<T: Transport>(
    stream: &mut T,
    buffer: &mut Vec<u8>,
    body_start: usize,
    headers: &Headers,
    max_body: usize,
) -> Result<Vec<u8>, HttpError> {
    let length = headers.content_length.unwrap_or(0);
    if length > max_body as u64 {
        return Err(HttpError::BodyTooLarge { size: length, limit: max_body });
    }
    // Bounded by max_body just above.
    let length = length as usize;
    if headers.expect_continue && buffer.len() < body_start + length {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    while buffer.len() < body_start + length {
        if !fill(stream, buffer)? {
            return Err(HttpError::Truncated);
        }
    }
    let body = buffer[body_start..body_start + length].to_vec();
    buffer.drain(..body_start + length);
    Ok(body)
}

/// A response: a status and, for anything but 204, a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    pub fn no_content() -> Response {
        Response { status: 204, body: None }
    }

    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_string(value) {
            Ok(body) => Response { status, body: Some(body) },
            Err(e) => Response::error(500, &format!("cannot encode the response: {e}")),
        }
    }

    /// An error response with Firecracker's body, `{"fault_message": "..."}`.
    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::json!({ "fault_message": message }).to_string();
        Response { status, body: Some(body) }
    }

    pub fn bad_request(message: &str) -> Response {
        Response::error(400, message)
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            408 => "Request Timeout",
            413 => "Payload Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "Unknown",
        }
    }

    /// The response's bytes on the wire.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\nServer: Kestrel\r\n", self.status, self.reason());
        if close {
            out.push_str("Connection: close\r\n");
        }
        match &self.body {
            Some(body) => {
                out.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ));
            }
            None if self.status == 204 => out.push_str("\r\n"),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Input from a byte string; what the server writes back is kept.
    struct Fake {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Transport for Fake {}

    fn parse(bytes: &[u8]) -> Result<Request, HttpError> {
        let mut fake = Fake { input: Cursor::new(bytes.to_vec()), output: Vec::new() };
        read_request(&mut fake, &mut Vec::new())
    }

    #[test]
    fn a_put_with_a_body() {
        let request =
            parse(b"PUT /boot-source?x=1 HTTP/1.1\r\nHost: localhost\r\ncontent-length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!(
            request,
            Request { method: Method::Put, path: "/boot-source".into(), body: b"{}".to_vec(), close: false }
        );
    }

    #[test]
    fn pipelined_requests_are_read_in_turn() {
        let bytes =
            b"GET / HTTP/1.1\r\n\r\nPATCH /vm HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx";
        let mut fake = Fake { input: Cursor::new(bytes.to_vec()), output: Vec::new() };
        let mut buffer = Vec::new();
        assert_eq!(read_request(&mut fake, &mut buffer).unwrap().path, "/");
        let second = read_request(&mut fake, &mut buffer).unwrap();
        assert_eq!((second.method, second.body, second.close), (Method::Patch, b"x".to_vec(), true));
        assert!(matches!(read_request(&mut fake, &mut buffer), Err(HttpError::Closed)));
    }

    #[test]
    fn the_last_connection_option_decides_over_the_version() {
        let close = |bytes: &[u8]| parse(bytes).unwrap().close;
        assert!(close(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!close(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(close(b"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"));
        assert!(!close(b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn expect_continue_is_answered() {
        let mut fake = Fake {
            input: Cursor::new(
                b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n".to_vec(),
            ),
            output: Vec::new(),
        };
        let mut buffer = Vec::new();
        assert!(matches!(read_request(&mut fake, &mut buffer), Err(HttpError::Truncated)));
        assert_eq!(fake.output, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn malformed_requests_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET /\r\n\r\n", "Invalid request line"),
            (b"GET  / HTTP/1.1\r\n\r\n", "Invalid request line"),
            (b"DELETE / HTTP/1.1\r\n\r\n", "Unsupported HTTP method DELETE"),
            (b"G\x01T / HTTP/1.1\r\n\r\n", "Invalid request line"),
            (b"GET / HTTP/2.0\r\n\r\n", "Unsupported HTTP version"),
            (b"GET foo HTTP/1.1\r\n\r\n", "the target must be a path"),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "Invalid header line"),
            (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", "Invalid header line"),
            (b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "Invalid Content-Length"),
            (b"PUT / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n", "Invalid Content-Length"),
            (b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "Invalid Content-Length"),
            (b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "two different"),
            (b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"),
            (b"PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n", "larger than the limit of 51200"),
            (b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", "ended before"),
            (b"GET / HTTP/1.1\r\nHost: x", "ended before"),
            (b"GET /\xff HTTP/1.1\r\n\r\n", "not valid ASCII"),
        ];
        for (bytes, expected) in cases {
            let error = parse(bytes).expect_err(&String::from_utf8_lossy(bytes));
            assert!(error.to_string().contains(expected), "{:?}: {error}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn the_body_limit_is_configurable() {
        let request = b"PUT /mmds HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        let read = |limit| {
            let mut fake = Fake { input: Cursor::new(request.to_vec()), output: Vec::new() };
            read_request_limited(&mut fake, &mut Vec::new(), limit)
        };
        assert_eq!(read(5).unwrap().body, b"hello");
        let error = read(4).unwrap_err().to_string();
        assert!(error.contains("size 5 is larger than the limit of 4"), "{error}");
    }

    #[test]
    fn oversized_heads_are_refused_without_reading_forever() {
        let mut bytes = b"GET / HTTP/1.1\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 2 * MAX_HEADER_BYTES));
        assert!(matches!(parse(&bytes), Err(HttpError::HeadersTooLarge)));
    }

    #[test]
    fn responses_on_the_wire() {
        let no_content = String::from_utf8(Response::no_content().to_bytes(false)).unwrap();
        assert_eq!(no_content, "HTTP/1.1 204 No Content\r\nServer: Kestrel\r\n\r\n");
        let error = String::from_utf8(Response::bad_request("bad \"x\"").to_bytes(true)).unwrap();
        assert!(error.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(error.contains("Connection: close\r\n"));
        assert!(error.ends_with("\r\n\r\n{\"fault_message\":\"bad \\\"x\\\"\"}"));
    }
}
