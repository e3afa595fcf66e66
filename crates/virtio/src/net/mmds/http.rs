//! The metadata service's HTTP/1.1 answers to the guest, as Firecracker gives them: `GET` of a
//! path in the store (IMDS plain text or JSON), `PUT /latest/api/token` for a V2 session token,
//! 405 for other methods. The bytes come from the guest: any of them give a response or ask for
//! more (within [`MAX_REQUEST_BYTES`]), never a panic.

use model::api::MmdsVersion;
use model::mmds::NetMmds;
use serde_json::Value;

/// The most bytes a request (head and body) may take; a longer one is answered 400 and the
/// connection closed.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 32;

const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = ["x-metadata-token-ttl-seconds", "x-aws-ec2-metadata-token-ttl-seconds"];
const FORWARDED_FOR: &str = "x-forwarded-for";

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Incomplete,
    /// The first `consumed` bytes were one request; `response` answers it, and the connection
    /// closes after it if `close`.
    Complete { consumed: usize, response: Vec<u8>, close: bool },
}

/// A response before it is put in bytes.
struct Answer {
    status: u16,
    json: bool,
    body: String,
    /// Extra headers (name, value).
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer { status, json: false, body: body.into(), headers: Vec::new() }
    }

    fn to_bytes(&self, close: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            _ => "Not Implemented",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\nServer: Kestrel MMDS\r\n", self.status);
        if close {
            head.push_str("Connection: close\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let content_type = if self.json { "application/json" } else { "text/plain" };
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// Parses the request at the start of `bytes` and answers it from `mmds`.
pub fn handle(bytes: &[u8], mmds: &NetMmds) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_REQUEST_BYTES => return Parsed::Incomplete,
        Ok(httparse::Status::Partial) => return refuse(bytes.len(), 413, "The request is too large."),
        Err(e) => return refuse(bytes.len(), 400, format!("Invalid request: {e}.")),
    };
    let header = |names: &[&str]| {
        request
            .headers
            .iter()
            .find(|h| names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
            .map(|h| (h.name, String::from_utf8_lossy(h.value).trim().to_owned()))
    };
    if header(&["transfer-encoding"]).is_some() {
        return refuse(bytes.len(), 400, "Chunked requests are not supported.");
    }
    let body_len = match header(&["content-length"]).map(|(_, v)| v.parse::<usize>()) {
        None => 0,
        Some(Ok(len)) => len,
        Some(Err(_)) => return refuse(bytes.len(), 400, "Invalid Content-Length."),
    };
    let Some(consumed) = head_len.checked_add(body_len).filter(|&len| len <= MAX_REQUEST_BYTES) else {
        return refuse(bytes.len(), 413, "The request is too large.");
    };
    if bytes.len() < consumed {
        return Parsed::Incomplete;
    }
    let connection = header(&["connection"]).map(|(_, v)| v.to_ascii_lowercase());
    let close = match request.version {
        Some(1) => connection.as_deref() == Some("close"),
        _ => connection.as_deref() != Some("keep-alive"),
    };
    let path = absolute_path(request.path.unwrap_or_default());
    let answer = match request.method.unwrap_or_default() {
        _ if !path.starts_with('/') => Answer::text(400, "Invalid URI."),
        "GET" => get(path, &header, mmds),
        "PUT" => put(path, &header, mmds),
        _ => Answer {
            headers: vec![("Allow", "GET, PUT".into())],
            ..Answer::text(405, "Not allowed HTTP method.")
        },
    };
    Parsed::Complete { consumed, response: answer.to_bytes(close), close }
}

/// A request that cannot be read: answered, and the connection closed (its end is unknown).
fn refuse(consumed: usize, status: u16, message: impl Into<String>) -> Parsed {
    Parsed::Complete { consumed, response: Answer::text(status, message).to_bytes(true), close: true }
}

type Header<'h> = dyn Fn(&[&str]) -> Option<(&'h str, String)> + 'h;

/// The path of an absolute-form target (`http://169.254.169.254/latest`, as a client talking to
/// a proxy sends it), else the target as it is.
fn absolute_path(target: &str) -> &str {
    match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("/", |slash| &rest[slash..]),
        None => target,
    }
}

/// The path without its query, `//` collapsed (Firecracker's sanitising).
fn clean_path(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut clean = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && clean.ends_with('/')) {
            clean.push(c);
        }
    }
    clean
}

fn get(path: &str, header: &Header<'_>, mmds: &NetMmds) -> Answer {
    let token = header(&TOKEN_HEADERS);
    if mmds.version == MmdsVersion::V2 {
        match token {
            None => return Answer::text(401, "No MMDS token provided. Use `X-metadata-token` or `X-aws-ec2-metadata-token` header to specify the session token."),
            Some((_, token)) if !mmds.store.token_valid(&token) => {
                return Answer::text(401, "MMDS token not valid.")
            }
            Some(_) => {}
        }
    }
    let json = !mmds.imds_compat
        && header(&["accept"])
            .is_some_and(|(_, accept)| accept.to_ascii_lowercase().contains("application/json"));
    let clean = clean_path(path);
    let pointer = clean.strip_suffix('/').unwrap_or(&clean).to_owned();
    mmds.store.read(|data| match data.pointer(&pointer) {
        None => Answer::text(404, format!("Resource not found: {}.", clean_path(path))),
        Some(value) if json => Answer { json: true, ..Answer::text(200, value.to_string()) },
        Some(value) => match imds(value) {
            Some(text) => Answer::text(200, text),
            None => Answer::text(501, "Cannot retrieve value. The value has an unsupported type."),
        },
    })
}

/// EC2 IMDS plain text: an object lists its keys one per line (sub-objects with a trailing `/`),
/// a string is itself; other values have no IMDS form.
pub fn imds(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => Some(
            map.iter()
                .map(|(key, value)| if value.is_object() { format!("{key}/") } else { key.clone() })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::String(text) => Some(text.clone()),
        _ => None,
    }
}

fn put(path: &str, header: &Header<'_>, mmds: &NetMmds) -> Answer {
    if let Some((name, value)) = header(&[FORWARDED_FOR]) {
        return Answer::text(
            400,
            format!("Invalid header. Reason: Unsupported header name. Key: {name}, Value: {value}"),
        );
    }
    if clean_path(path) != TOKEN_PATH {
        return Answer::text(404, format!("Resource not found: {}.", clean_path(path)));
    }
    let Some((name, value)) = header(&TTL_HEADERS) else {
        return Answer::text(400, "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's lifetime.");
    };
    let Ok(ttl) = value.parse::<u32>() else {
        return Answer::text(
            400,
            format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}"),
        );
    };
    match mmds.store.issue_token(ttl) {
        Ok(token) => Answer {
            headers: vec![("X-metadata-token-ttl-seconds", ttl.to_string())],
            ..Answer::text(200, token)
        },
        Err(e) => Answer::text(400, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use model::mmds::MmdsStore;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn mmds(version: MmdsVersion, imds_compat: bool) -> NetMmds {
        let store = MmdsStore::new(10_000);
        store
            .put(json!({"latest": {"meta-data": {"ami-id": "ami-1", "tags": {"a": "b"}, "n": 7}}, "user": "hi"}))
            .unwrap();
        NetMmds { address: model::mmds::DEFAULT_MMDS_ADDRESS, version, imds_compat, store }
    }

    /// (status, headers, body) of the response to `request`, which must be whole.
    fn ask(mmds: &NetMmds, request: &str) -> (u16, String, String) {
        let Parsed::Complete { response, consumed, .. } = handle(request.as_bytes(), mmds) else {
            panic!("incomplete: {request:?}");
        };
        assert_eq!(consumed, request.len());
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), head.to_owned(), body.to_owned())
    }

    #[test]
    fn v1_get_answers_imds_text_or_json() {
        let m = mmds(MmdsVersion::V1, false);
        assert_eq!(ask(&m, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n").2, "ami-id\nn\ntags/");
        assert_eq!(ask(&m, "GET /latest/meta-data HTTP/1.1\r\n\r\n").2, "ami-id\nn\ntags/");
        assert_eq!(ask(&m, "GET //latest//meta-data/ami-id HTTP/1.1\r\n\r\n").2, "ami-1");
        let (status, head, body) =
            ask(&m, "GET /latest/meta-data/tags HTTP/1.1\r\nAccept: application/json\r\n\r\n");
        assert_eq!((status, body.as_str()), (200, r#"{"a":"b"}"#));
        assert!(head.contains("Content-Type: application/json"));
        assert_eq!(ask(&m, "GET /latest/meta-data/n HTTP/1.1\r\n\r\n").0, 501);
        assert_eq!(ask(&m, "GET /latest/meta-data/n HTTP/1.1\r\naccept: application/json\r\n\r\n").2, "7");
        assert_eq!(ask(&m, "GET http://169.254.169.254/user?x=1 HTTP/1.1\r\n\r\n").2, "hi");
        assert_eq!(ask(&m, "GET latest HTTP/1.1\r\n\r\n").0, 400);
        let (status, _, body) = ask(&m, "GET /nothing/here HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.as_str()), (404, "Resource not found: /nothing/here."));
    }

    #[test]
    fn imds_compat_answers_text_whatever_the_accept_header() {
        let m = mmds(MmdsVersion::V1, true);
        let (status, _, body) =
            ask(&m, "GET /latest/meta-data/tags HTTP/1.1\r\nAccept: application/json\r\n\r\n");
        assert_eq!((status, body.as_str()), (200, "a"));
    }

    #[test]
    fn v2_needs_a_token_from_put() {
        let m = mmds(MmdsVersion::V2, false);
        assert_eq!(ask(&m, "GET /user HTTP/1.1\r\n\r\n").0, 401);
        assert_eq!(ask(&m, "GET /user HTTP/1.1\r\nX-metadata-token: bogus\r\n\r\n").0, 401);
        let put = "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n";
        let (status, head, token) = ask(&m, put);
        assert_eq!(status, 200);
        assert!(head.contains("X-metadata-token-ttl-seconds: 60"));
        let get = format!("GET /user HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
        assert_eq!(ask(&m, &get).2, "hi");
        let get = format!("GET /user HTTP/1.1\r\nx-aws-ec2-metadata-token: {token}\r\n\r\n");
        assert_eq!(ask(&m, &get).2, "hi");
    }

    #[test]
    fn token_requests_follow_firecrackers_rules() {
        let m = mmds(MmdsVersion::V2, false);
        for (request, status) in [
            ("PUT /latest/api/token HTTP/1.1\r\n\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 21601\r\n\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: x\r\n\r\n", 400),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", 400),
            ("PUT /other HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n", 404),
            ("PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n", 200),
            ("DELETE / HTTP/1.1\r\n\r\n", 405),
            ("POST /latest/api/token HTTP/1.1\r\n\r\n", 405),
        ] {
            assert_eq!(ask(&m, request).0, status, "{request:?}");
        }
    }

    #[test]
    fn requests_are_framed_by_their_length_and_connection_header() {
        let m = mmds(MmdsVersion::V1, false);
        assert_eq!(handle(b"GET /user HTTP/1.1\r\n", &m), Parsed::Incomplete);
        assert_eq!(handle(b"GET /user HTTP/1.1\r\nContent-Length: 4\r\n\r\nab", &m), Parsed::Incomplete);
        let two = b"GET /user HTTP/1.1\r\n\r\nGET /user HTTP/1.1\r\n\r\n";
        let Parsed::Complete { consumed, close, .. } = handle(two, &m) else { panic!() };
        assert_eq!((consumed, close), (two.len() / 2, false));
        let Parsed::Complete { close, .. } = handle(b"GET /user HTTP/1.1\r\nConnection: close\r\n\r\n", &m)
        else {
            panic!()
        };
        assert!(close);
        let Parsed::Complete { close, .. } = handle(b"GET /user HTTP/1.0\r\n\r\n", &m) else { panic!() };
        assert!(close, "HTTP/1.0 closes unless asked to keep alive");
        let Parsed::Complete { response, close, .. } = handle(b"\x00\x01garbage\r\n\r\n", &m) else {
            panic!()
        };
        assert!(close && response.starts_with(b"HTTP/1.1 400"));
        let huge = vec![b'a'; MAX_REQUEST_BYTES];
        let Parsed::Complete { response, close, .. } = handle(&huge, &m) else { panic!() };
        assert!(close && response.starts_with(b"HTTP/1.1 4"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes: a response (consuming at least one byte, at most what was given) or a wait
        /// for more while under the request limit; never a panic.
        #[test]
        fn any_bytes_get_an_answer_or_a_bounded_wait(
            bytes in prop::collection::vec(any::<u8>(), 0..MAX_REQUEST_BYTES + 64),
            v2 in any::<bool>(),
        ) {
            let m = mmds(if v2 { MmdsVersion::V2 } else { MmdsVersion::V1 }, false);
            match handle(&bytes, &m) {
                Parsed::Incomplete => prop_assert!(bytes.len() < MAX_REQUEST_BYTES),
                Parsed::Complete { consumed, response, .. } => {
                    prop_assert!(consumed >= 1 && consumed <= bytes.len());
                    prop_assert!(response.starts_with(b"HTTP/1.1 "));
                }
            }
        }

        /// Request-shaped bytes with arbitrary paths and headers.
        #[test]
        fn any_request_line_and_headers_get_an_answer(
            method in "(GET|PUT|HEAD|[A-Z]{1,6})",
            path in "[ -~]{0,40}",
            headers in prop::collection::vec(("[!-9;-~]{1,20}", "[ -~]{0,30}"), 0..40),
        ) {
            let m = mmds(MmdsVersion::V2, false);
            let mut request = format!("{method} {path} HTTP/1.1\r\n");
            for (name, value) in headers {
                request.push_str(&format!("{name}: {value}\r\n"));
            }
            request.push_str("\r\n");
            match handle(request.as_bytes(), &m) {
                Parsed::Incomplete => prop_assert!(request.len() < MAX_REQUEST_BYTES),
                Parsed::Complete { consumed, .. } => prop_assert!(consumed <= request.len()),
            }
        }
    }
}
