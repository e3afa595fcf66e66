//! The browser console's server (`kestrel daemon --web`): its certificate, token logins and
//! their throttle, sessions, the CSRF and Origin checks in front of `/api`, the console's
//! WebSocket over HTTPS, revocation, and the security headers.
//!
//! The client trusts exactly the daemon's certificate (its `cert.pem` as the only root), not
//! anything: a test that passed here against another certificate would be a bug.
//!
//! `mod needs_kvm` starts the hello guest through the console (/dev/kvm; on CI its absence fails).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// How long any one web exchange may take before the test calls it hung.
const LIMIT: Duration = Duration::from_secs(30);

/// A client of one daemon's console.
struct Web {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

/// An answer: status, headers (lower-case names; `set-cookie` may repeat, joined by "\n") and body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A logged-in browser: its cookie (`__Host-kestrel_session=…`) and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn certificate_der(pem: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

impl Web {
    /// A client for the console at `url` that trusts only the certificate in `cert_pem`.
    fn new(url: &str, cert_pem: &Path) -> Web {
        let addr: SocketAddr = url.trim_start_matches("https://").trim_end_matches('/').parse().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(certificate_der(cert_pem))).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Web { addr, tls: tokio_rustls::TlsConnector::from(Arc::new(config)) }
    }

    /// The console of `daemon`, trusting its generated certificate.
    fn of(daemon: &Daemon, url: &str) -> Web {
        Web::new(url, &daemon.state().join("web/cert.pem"))
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, std::io::Error> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        tokio::time::timeout(LIMIT, self.tls.connect(name, tcp)).await.expect("TLS handshake in time")
    }

    /// One request on a fresh connection.
    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let stream = self.connect().await.expect("TLS connection to the console");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", self.host());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
        let response =
            tokio::time::timeout(LIMIT, sender.send_request(request)).await.expect("an answer").unwrap();
        let status = response.status().as_u16();
        let mut names: HashMap<String, String> = HashMap::new();
        for (name, value) in response.headers() {
            let value = value.to_str().unwrap_or("").to_owned();
            names
                .entry(name.as_str().to_owned())
                .and_modify(|v| *v = format!("{v}\n{value}"))
                .or_insert(value);
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        driver.abort();
        let answer = Answer { status, headers: names, body: String::from_utf8_lossy(&body).into_owned() };
        // Every answer, whatever its route or status, carries the security headers.
        assert_eq!(answer.header("content-security-policy"), CSP, "{method} {path}");
        assert_eq!(answer.header("x-content-type-options"), "nosniff");
        assert_eq!(answer.header("referrer-policy"), "no-referrer");
        assert_eq!(answer.header("x-frame-options"), "DENY");
        if path.starts_with("/api") || path.starts_with("/auth") {
            assert_eq!(answer.header("cache-control"), "no-store", "{method} {path}");
        }
        answer
    }

    /// Opens a GET whose answer streams: its status and body (read it with a deadline).
    async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> (u16, hyper::body::Incoming) {
        let stream = self.connect().await.expect("TLS connection to the console");
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        // The driver ends with the connection.
        tokio::spawn(connection);
        let mut request = hyper::Request::builder().uri(path).header("host", self.host());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let response =
            tokio::time::timeout(LIMIT, sender.send_request(request)).await.expect("an answer").unwrap();
        (response.status().as_u16(), response.into_body())
    }

    async fn login_with(&self, token: &str) -> Answer {
        let body = serde_json::json!({ "token": token }).to_string();
        self.request("POST", "/auth/login", &[("content-type", "application/json")], &body).await
    }

    /// Logs in with a fresh token from `kestrel daemon web-token`.
    async fn login(&self, daemon: &Daemon) -> Session {
        let token = daemon.cli_ok(&["daemon", "web-token"]).trim().to_owned();
        let answer = self.login_with(&token).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let set_cookie = answer.header("set-cookie");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set_cookie.split("; ").any(|f| f == flag), "{flag} missing: {set_cookie}");
        }
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        assert!(
            cookie.starts_with("__Host-kestrel_session=")
                && cookie.len() == "__Host-kestrel_session=".len() + 43,
            "{cookie}"
        );
        let csrf = answer.json()["csrf"].as_str().unwrap().to_owned();
        assert!(csrf.len() >= 43);
        Session { cookie, csrf }
    }

    /// A request as the logged-in page sends one: cookie, CSRF header and its own Origin.
    async fn api(&self, session: &Session, method: &str, path: &str, body: &str) -> Answer {
        let origin = self.origin();
        let headers = [
            ("cookie", session.cookie.as_str()),
            ("x-kestrel-csrf", session.csrf.as_str()),
            ("origin", origin.as_str()),
            ("content-type", "application/json"),
        ];
        self.request(method, path, &headers, body).await
    }

    /// Opens the console WebSocket of `vm` with these headers; the socket, or the refusal's status.
    async fn console(
        &self,
        vm: &str,
        headers: &[(&str, &str)],
    ) -> Result<tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>, u16> {
        let stream = self.connect().await.expect("TLS connection to the console");
        let url = format!("wss://{}/api/v1/vms/{vm}/console", self.host());
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        match tokio::time::timeout(LIMIT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("in time")
        {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("the WebSocket handshake failed: {e}"),
        }
    }
}

/// The web console's line in the daemon's log: its certificate fingerprint.
fn logged_fingerprint(daemon: &Daemon) -> String {
    let line = daemon.wait_for_log("kestrel daemon: web console at ");
    let start = line.find("SHA-256 ").expect("a fingerprint") + "SHA-256 ".len();
    line[start..].trim_end_matches(')').to_owned()
}

#[test]
fn the_generated_certificate_is_private_and_kept_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let (mut daemon, _) = Daemon::start_with_web();
    let web_dir = daemon.state().join("web");
    assert_eq!(std::fs::metadata(&web_dir).unwrap().permissions().mode() & 0o777, 0o700);
    for file in ["cert.pem", "key.pem"] {
        let mode = std::fs::metadata(web_dir.join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let der = certificate_der(&web_dir.join("cert.pem"));
    let fingerprint = logged_fingerprint(&daemon);
    assert_eq!(fingerprint, sha256_hex(&der), "the log names the served certificate");
    daemon.kill();
    daemon.restart();
    let url = daemon.web_url();
    assert_eq!(logged_fingerprint(&daemon), fingerprint, "the same certificate after a restart");
    assert_eq!(certificate_der(&web_dir.join("cert.pem")), der);
    // And it is the one served: a client trusting only it gets through.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer = runtime.block_on(Web::of(&daemon, &url).request("GET", "/auth/session", &[], ""));
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn a_given_certificate_is_served_instead() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("mine.pem"), dir.path().join("mine.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let daemon = Daemon::start_with(&[
        "--web",
        "127.0.0.1:0",
        "--web-cert",
        path_str(&cert_path),
        "--web-key",
        path_str(&key_path),
    ]);
    let url = daemon.web_url();
    assert_eq!(logged_fingerprint(&daemon), sha256_hex(cert.der()));
    assert!(!daemon.state().join("web/cert.pem").exists(), "nothing generated");
    let answer = Web::new(&url, &cert_path).request("GET", "/auth/session", &[], "").await;
    assert_eq!(answer.status, 401);
    // A client that trusts another certificate is refused in the handshake.
    let other = dir.path().join("other.pem");
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other_cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().self_signed(&other_key).unwrap();
    std::fs::write(&other, other_cert.pem()).unwrap();
    assert!(Web::new(&url, &other).connect().await.is_err());
}

#[tokio::test]
async fn logins_sessions_csrf_and_origin_guard_the_api() {
    let (daemon, url) = Daemon::start_with_web();
    let web = Web::of(&daemon, &url);
    vms::expect(&daemon, "POST", "/v1/vms", &vms::hello("webvm", "exit=hang"), 201);

    // Nothing without a session.
    let answer = web.request("GET", "/api/v1/vms", &[], "").await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["kind"], "unauthorized");
    let answer = web.request("GET", "/api/v1/vms", &[("cookie", "__Host-kestrel_session=made-up")], "").await;
    assert_eq!(answer.status, 401);
    assert_eq!(web.request("GET", "/auth/session", &[], "").await.status, 401);
    let answer = web.login_with("kst_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(answer.status, 401, "{}", answer.body);
    assert_eq!(web.login_with("").await.status, 401);
    assert_eq!(web.request("POST", "/auth/login", &[], "{not json").await.status, 400);
    let big = format!("{{\"token\": \"{}\"}}", "x".repeat(8000));
    assert_eq!(web.request("POST", "/auth/login", &[], &big).await.status, 400, "over 4 KiB");

    // `web-token --json` prints the API's JSON; a login from another site is refused.
    let json: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["daemon", "web-token", "--json"])).unwrap();
    let token = json["token"].as_str().unwrap();
    assert!(token.starts_with("kst_") && token.len() == 47, "{token}");
    let body = serde_json::json!({ "token": token }).to_string();
    let answer = web.request("POST", "/auth/login", &[("origin", "https://evil.example")], &body).await;
    assert_eq!(answer.status, 403);
    assert!(answer.header("set-cookie").is_empty());

    // A session sees the daemon's API: the VM defined over the socket.
    let session = web.login(&daemon).await;
    let cookie = [("cookie", session.cookie.as_str())];
    let answer = web.request("GET", "/api/v1/vms?all=true", &cookie, "").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("\"webvm\""), "{}", answer.body);
    let answer = web.request("GET", "/auth/session", &cookie, "").await;
    assert_eq!(answer.json()["csrf"], session.csrf.as_str(), "a reloaded page gets its CSRF token back");

    // Changes need the CSRF header and the console's own Origin.
    let origin = web.origin();
    let no_csrf = [("cookie", session.cookie.as_str()), ("origin", origin.as_str())];
    let answer = web.request("POST", "/api/v1/vms/webvm/start", &no_csrf, "").await;
    assert_eq!(answer.status, 403);
    assert!(answer.body.contains("X-Kestrel-CSRF"), "{}", answer.body);
    let foreign = [
        ("cookie", session.cookie.as_str()),
        ("x-kestrel-csrf", session.csrf.as_str()),
        ("origin", "https://evil.example"),
    ];
    assert_eq!(web.request("POST", "/api/v1/vms/webvm/start", &foreign, "").await.status, 403);
    let no_origin = [("cookie", session.cookie.as_str()), ("x-kestrel-csrf", session.csrf.as_str())];
    assert_eq!(web.request("DELETE", "/api/v1/vms/webvm", &no_origin, "").await.status, 403);
    let (status, _) = vms::call(&daemon, "GET", "/v1/vms/webvm", "");
    assert_eq!(status, 200, "nothing refused reached the daemon");
    // With both, a change goes through (a definition: no KVM needed).
    let answer = web.api(&session, "POST", "/api/v1/vms", &vms::hello("fromweb", "exit=hang")).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    vms::expect(&daemon, "GET", "/v1/vms/fromweb", "", 200);

    // Tokens are minted only on the socket: the web's API has no such route.
    assert_eq!(web.api(&session, "POST", "/api/v1/web/tokens", "").await.status, 404);
    assert_eq!(web.api(&session, "DELETE", "/api/v1/web/tokens", "").await.status, 404);
    assert_eq!(web.request("GET", "/api/v1/web/tokens", &cookie, "").await.status, 404);

    // Paths at the edge of the guard: each refused or unknown, none served.
    let with_csrf = [
        ("cookie", session.cookie.as_str()),
        ("x-kestrel-csrf", session.csrf.as_str()),
        ("origin", origin.as_str()),
    ];
    let ws_no_csrf = [
        ("cookie", session.cookie.as_str()),
        ("origin", origin.as_str()),
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
    ];
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let edges: [(&str, &str, Headers, &[u16]); 14] = [
        ("GET", "/api", &[], &[401]),
        // Outside the nested router (axum's `nest` takes `/api` and `/api/…`): a plain 404.
        ("GET", "/api/", &[], &[401, 404]),
        ("HEAD", "/api/v1/vms", &[], &[401]),
        ("GET", "/API/v1/vms", &cookie, &[404]),
        ("GET", "//api/v1/vms", &cookie, &[404]),
        ("GET", "/api", &cookie, &[404]),
        ("GET", "/api/", &cookie, &[404]),
        ("HEAD", "/api/v1/web/tokens", &cookie, &[404]),
        ("POST", "/api/v1/%77eb/tokens", &with_csrf, &[404]),
        ("POST", "/api/v1/web/tokens/", &with_csrf, &[404]),
        ("DELETE", "/api/v1/web/tokens/", &with_csrf, &[404]),
        ("POST", "/%61pi/v1/web/tokens", &with_csrf, &[404]),
        ("POST", "/api/v1/vms", &ws_no_csrf, &[403]),
        ("DELETE", "/api/v1/vms/webvm", &ws_no_csrf, &[403]),
    ];
    for (method, path, headers, expected) in edges {
        let answer = web.request(method, path, headers, "").await;
        assert!(expected.contains(&answer.status), "{method} {path}: {} {}", answer.status, answer.body);
    }
    vms::expect(&daemon, "GET", "/v1/vms/webvm", "", 200);

    // Logout ends the session and clears the cookie.
    let second = web.login(&daemon).await;
    let origin_only = [("cookie", second.cookie.as_str()), ("origin", origin.as_str())];
    let answer = web.request("POST", "/auth/logout", &origin_only, "").await;
    assert_eq!(answer.status, 204);
    assert!(answer.header("set-cookie").contains("Max-Age=0"), "{}", answer.header("set-cookie"));
    assert_eq!(
        web.request("GET", "/api/v1/vms", &[("cookie", second.cookie.as_str())], "").await.status,
        401
    );
    assert_eq!(web.request("GET", "/api/v1/vms", &cookie, "").await.status, 200, "the other session lives");

    // --revoke-all: every session ends, and the tokens log nobody in again.
    let revoked: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["daemon", "web-token", "--revoke-all", "--json"])).unwrap();
    assert!(revoked["tokens"].as_u64().unwrap() >= 3, "{revoked}");
    assert_eq!(revoked["sessions"], 1, "{revoked}");
    assert_eq!(web.request("GET", "/api/v1/vms", &cookie, "").await.status, 401);
    assert_eq!(web.login_with(token).await.status, 401, "a revoked token");
    let text = daemon.cli_ok(&["daemon", "web-token", "--revoke-all"]);
    assert_eq!(text, "0 tokens revoked, 0 web sessions ended\n");

    // The UI's routes need no login (whatever they serve, they carry the headers).
    let answer = web.request("GET", "/", &[], "").await;
    assert_ne!(answer.status, 401);
    // Nor does a path no router knows: it is a 404, not a login prompt.
    assert_eq!(web.request("GET", "/no/such/page", &[], "").await.status, 404);
    assert_eq!(
        web.request("GET", "/api/v1/no-such-route", &[], "").await.status,
        401,
        "all of /api is guarded"
    );
    let session = web.login(&daemon).await;
    let answer =
        web.request("GET", "/api/v1/no-such-route", &[("cookie", session.cookie.as_str())], "").await;
    assert_eq!((answer.status, answer.json()["kind"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn the_eleventh_failed_login_in_a_minute_is_throttled() {
    let (daemon, url) = Daemon::start_with_web();
    let web = Web::of(&daemon, &url);
    let wrong = "kst_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    for attempt in 1..=10 {
        assert_eq!(web.login_with(wrong).await.status, 401, "attempt {attempt}");
    }
    let answer = web.login_with(wrong).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.json()["kind"], "too_many_requests");
    let retry: u64 = answer.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(web.login_with(wrong).await.status, 429, "wrong tokens stay refused");
    // A right token still logs in: bogus tries cannot lock the console's users out.
    let session = web.login(&daemon).await;
    let cookie = [("cookie", session.cookie.as_str())];
    assert_eq!(web.request("GET", "/api/v1/vms", &cookie, "").await.status, 200);
    let log = daemon.log();
    assert!(log.contains("failed logins within a minute (this one from 127.0.0.1:"), "{log}");
    assert!(log.contains("a failed login from 127.0.0.1:"), "{log}");
    assert!(log.contains("a session began (login from 127.0.0.1:"), "{log}");
}

/// Reads `body` to its end (bounded by [`LIMIT`]): what it held.
async fn read_to_end(mut body: hyper::body::Incoming) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await.expect("the stream ends in time") {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
            Some(Err(e)) => panic!("the stream failed instead of ending: {e}"),
            None => return text,
        }
    }
}

#[tokio::test]
async fn an_ended_session_ends_its_event_streams() {
    let (daemon, url) = Daemon::start_with_web();
    let web = Web::of(&daemon, &url);
    let (first, second) = (web.login(&daemon).await, web.login(&daemon).await);
    let follow = "/api/v1/events?follow=true";
    let (status, by_logout) = web.stream(follow, &[("cookie", first.cookie.as_str())]).await;
    assert_eq!(status, 200);
    let (status, by_revocation) = web.stream(follow, &[("cookie", second.cookie.as_str())]).await;
    assert_eq!(status, 200);
    // Logout ends the first session's stream (and only that one).
    let origin = web.origin();
    let logout = [("cookie", first.cookie.as_str()), ("origin", origin.as_str())];
    assert_eq!(web.request("POST", "/auth/logout", &logout, "").await.status, 204);
    read_to_end(by_logout).await;
    // An event still reaches the second session's stream, which revocation then ends.
    vms::expect(&daemon, "POST", "/v1/vms", &vms::hello("after-logout", "exit=hang"), 201);
    daemon.cli_ok(&["daemon", "web-token", "--revoke-all"]);
    let seen = read_to_end(by_revocation).await;
    assert!(seen.contains("after-logout"), "{seen}");
}

#[tokio::test]
async fn plain_http_and_silent_clients_do_not_hurt_others() {
    let (daemon, url) = Daemon::start_with_web();
    let web = Web::of(&daemon, &url);
    // A client that connects and sends nothing holds its handshake open meanwhile.
    let _silent = TcpStream::connect(web.addr).await.unwrap();
    // Plain HTTP gets no HTTP answer: the TLS handshake fails and the connection closes.
    let mut plain = TcpStream::connect(web.addr).await.unwrap();
    plain
        .write_all(format!("GET /api/v1/vms HTTP/1.1\r\nHost: {}\r\n\r\n", web.host()).as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIMIT, plain.read_to_end(&mut got)).await.expect("closed in time");
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1"), "{got:?} ({read:?})");
    // Garbage that looks like a TLS record, too.
    let mut junk = TcpStream::connect(web.addr).await.unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    // A TLS client is served all the same.
    let answer = web.request("GET", "/api/v1/vms", &[], "").await;
    assert_eq!(answer.status, 401);
    let session = web.login(&daemon).await;
    assert_eq!(
        web.request("GET", "/api/v1/vms", &[("cookie", session.cookie.as_str())], "").await.status,
        200
    );
}

/// Starts the hello guest and attaches to its console through the web console.
mod needs_kvm {
    use super::*;

    /// Reads console output until it contains `needle` (bounded); what was read.
    async fn read_until(
        socket: &mut tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>,
        needle: &str,
        seen: &mut String,
    ) {
        let deadline = Instant::now() + LIMIT;
        while !seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.next()).await {
                Ok(Some(Ok(Message::Binary(bytes)))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Some(Ok(_))) => {}
                other => panic!("the console ended before '{needle}' ({other:?}); output:\n{seen}"),
            }
        }
    }

    #[tokio::test]
    async fn a_vm_started_over_the_web_has_its_console_there() {
        if !kvm_available() {
            return;
        }
        let (daemon, url) = Daemon::start_with_web();
        let web = Web::of(&daemon, &url);
        vms::expect(&daemon, "POST", "/v1/vms", &vms::hello("echo", "exit=echo"), 201);
        let session = web.login(&daemon).await;
        let answer = web.api(&session, "POST", "/api/v1/vms/echo/start", "").await;
        assert_eq!(answer.status, 200, "{}\n{}", answer.body, daemon.log());
        assert_eq!(answer.json()["state"], "running", "{}", answer.body);

        // The console: the cookie and the console's own Origin, both needed.
        let origin = web.origin();
        assert_eq!(web.console("echo", &[("origin", origin.as_str())]).await.err(), Some(401));
        let foreign = [("cookie", session.cookie.as_str()), ("origin", "https://evil.example")];
        assert_eq!(web.console("echo", &foreign).await.err(), Some(403));
        let no_origin = [("cookie", session.cookie.as_str())];
        assert_eq!(web.console("echo", &no_origin).await.err(), Some(403));
        let both = [("cookie", session.cookie.as_str()), ("origin", origin.as_str())];
        let mut socket = web.console("echo", &both).await.expect("the console");
        let mut seen = String::new();
        read_until(&mut socket, "echo: ready", &mut seen).await;
        assert!(seen.contains("Hello from the Kestrel test guest"), "{seen}");
        // Input reaches the guest, which echoes it (then resets, and is started again).
        socket.send(Message::Binary(b"typed in a browser\n".to_vec().into())).await.unwrap();
        read_until(&mut socket, "echo: typed in a browser", &mut seen).await;

        // A frame over 64 KiB closes the socket, with 1009 (message too big).
        let _ = socket.send(Message::Binary(vec![b'x'; 1 << 20].into())).await;
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.next()).await.expect("the socket closes in time") {
                Some(Ok(Message::Binary(_))) => continue, // output from before the close
                Some(Ok(Message::Close(frame))) => {
                    let frame = frame.expect("a close frame with a code");
                    assert_eq!(u16::from(frame.code), 1009, "message too big: {frame:?}");
                    break;
                }
                Some(Ok(other)) => panic!("unexpected {other:?}"),
                Some(Err(e)) => panic!("the socket broke instead of closing with 1009: {e}"),
                None => panic!("the socket ended without a close frame"),
            }
        }
        vms::expect(&daemon, "GET", "/v1/vms/echo", "", 200);
        // The CLI's console (4 KiB reads) is unaffected: its own test is daemon_console.rs.
        let answer = web.api(&session, "POST", "/api/v1/vms/echo/destroy", "").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    #[tokio::test]
    async fn revocation_closes_an_open_console() {
        if !kvm_available() {
            return;
        }
        let (daemon, url) = Daemon::start_with_web();
        let web = Web::of(&daemon, &url);
        vms::running_hang(&daemon, "watched");
        let session = web.login(&daemon).await;
        let origin = web.origin();
        let both = [("cookie", session.cookie.as_str()), ("origin", origin.as_str())];
        let mut socket = web.console("watched", &both).await.expect("the console");
        let mut seen = String::new();
        read_until(&mut socket, "Hello from the Kestrel test guest", &mut seen).await;
        daemon.cli_ok(&["daemon", "web-token", "--revoke-all"]);
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.next()).await.expect("the console closes in time") {
                Some(Ok(Message::Binary(_))) => continue, // output from before the close
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
                    assert_eq!(frame.reason.as_str(), "your web session ended");
                    break;
                }
                other => panic!("expected a close for the ended session, got {other:?}"),
            }
        }
        // The VM itself runs on.
        let info = vms::expect(&daemon, "GET", "/v1/vms/watched", "", 200);
        assert_eq!(info["state"], "running", "{info}");
        daemon.cli_ok(&["vm", "destroy", "watched"]);
    }

    #[tokio::test]
    async fn stats_show_the_vmm_process_cost() {
        if !kvm_available() {
            return;
        }
        let daemon = Daemon::start();
        vms::running_hang(&daemon, "busy");
        let stats = vms::expect(&daemon, "GET", "/v1/vms/busy/stats", "", 200);
        assert!(stats["memory_rss_bytes"].as_u64().unwrap() > 1 << 20, "{stats}");
        assert!(stats["cpu_time_us"].as_u64().is_some(), "{stats}");
        let text = daemon.cli_ok(&["vm", "stats", "busy"]);
        assert!(text.contains("memory (RSS)") && text.contains("cpu time"), "{text}");
        daemon.cli_ok(&["vm", "destroy", "busy"]);
        let stats = vms::expect(&daemon, "GET", "/v1/vms/busy/stats", "", 200);
        assert!(stats.get("memory_rss_bytes").is_none(), "a stopped VM has no process: {stats}");
    }
}
