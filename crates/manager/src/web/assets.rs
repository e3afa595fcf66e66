//! The single-page app's files, embedded at build time: our own (`crates/manager/web/`) and
//! xterm.js with its fit add-on, which `build.rs` fetches with npm into OUT_DIR.
//!
//! Every answer carries an ETag (a hash of the file) and `Cache-Control: no-cache`: the browser
//! keeps its copy but asks each time, so a new daemon's UI is never mixed with an old cached one,
//! and an unchanged file costs a 304.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

/// Our own files, by name under `web/`.
macro_rules! own {
    ($name:literal) => {
        ($name, include_bytes!(concat!("../../web/", $name)).as_slice())
    };
}

/// The files build.rs put in OUT_DIR.
macro_rules! vendored {
    ($name:literal) => {
        ($name, include_bytes!(concat!(env!("OUT_DIR"), "/", $name)).as_slice())
    };
}

/// Everything served under `/assets/` (index.html is also `/`).
const FILES: &[(&str, &[u8])] = &[
    own!("index.html"),
    own!("style.css"),
    own!("favicon.svg"),
    own!("app.js"),
    own!("api.js"),
    own!("dom.js"),
    own!("format.js"),
    own!("events.js"),
    own!("chart.js"),
    own!("stats.js"),
    own!("console.js"),
    own!("actions.js"),
    own!("page-login.js"),
    own!("page-vms.js"),
    own!("page-vm.js"),
    own!("page-create.js"),
    own!("page-networks.js"),
    own!("page-pools.js"),
    own!("page-pool.js"),
    vendored!("xterm.js"),
    vendored!("xterm.css"),
    vendored!("addon-fit.js"),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(name, bytes)| Asset {
            name,
            bytes,
            content_type: content_type(name),
            etag: HeaderValue::from_str(&format!("\"{:016x}\"", fnv1a(bytes)))
                .expect("hex is a header value"),
        })
        .collect()
});

/// `GET /` and `GET /assets/{file}`: the UI. Needs no login (the app asks for one).
pub fn router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move { serve(&file, &headers) }),
        )
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let cache =
        [(header::ETAG, asset.etag.clone()), (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))];
    if matches(headers.get(header::IF_NONE_MATCH), &asset.etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
}

/// Whether `If-None-Match` names the ETag (a list of tags, or `*`).
fn matches(if_none_match: Option<&HeaderValue>, etag: &HeaderValue) -> bool {
    let Some(Ok(value)) = if_none_match.map(HeaderValue::to_str) else { return false };
    let etag = etag.to_str().unwrap_or_default();
    value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// FNV-1a, 64 bits: a stable content hash for the ETag (not a security boundary: a collision
/// only means a stale cached file).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router on a loopback port, asked over HTTP/1: (status, headers, body).
    async fn get(path: &str, if_none_match: Option<&str>) -> (StatusCode, HeaderMap, Vec<u8>) {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router::<()>()).await });
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::get(path).header(header::HOST, "localhost");
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        let response = sender
            .send_request(request.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        server.abort();
        (parts.status, parts.headers, body)
    }

    fn own_source(name: &str) -> String {
        let path = format!("{}/web/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The files of web/ that are the app (not npm's manifest).
    fn app_files() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/web"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with("package"))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn every_file_is_served_with_its_type_an_etag_and_no_cache() {
        let expected = [
            ("index.html", "text/html; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("xterm.js", "text/javascript; charset=utf-8"),
            ("addon-fit.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
            ("xterm.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ];
        for (name, expected) in expected {
            assert_eq!(content_type(name), expected, "{name}");
        }
        for &(name, bytes) in FILES {
            let (status, headers, body) = get(&format!("/assets/{name}"), None).await;
            assert_eq!(status, StatusCode::OK, "{name}");
            assert_eq!(headers[header::CONTENT_TYPE], content_type(name), "{name}");
            assert_ne!(content_type(name), "application/octet-stream", "{name} has no known type");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{name}");
            let etag = headers[header::ETAG].to_str().unwrap();
            assert!(etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'), "{name}: {etag}");
            assert_eq!(body, bytes, "{name}");
        }
        let (status, headers, body) = get("/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], content_type("index.html"));
        assert_eq!(body, own_source("index.html").into_bytes(), "/ is index.html");
    }

    #[tokio::test]
    async fn unknown_files_are_not_found() {
        for path in
            ["/assets/nope.js", "/assets/", "/assets/..%2FCargo.toml", "/assets/INDEX.HTML", "/index.html"]
        {
            let (status, _, _) = get(path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn an_unchanged_file_is_not_sent_again() {
        let (_, headers, _) = get("/assets/app.js", None).await;
        let etag = headers[header::ETAG].to_str().unwrap().to_owned();
        let (status, again, body) = get("/assets/app.js", Some(&etag)).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(again[header::ETAG], etag.as_str());
        assert!(body.is_empty());
        let (status, _, _) = get("/assets/app.js", Some("\"0000000000000000\"")).await;
        assert_eq!(status, StatusCode::OK, "another tag: the file is sent");
        let (_, other, _) = get("/assets/style.css", None).await;
        assert_ne!(other[header::ETAG], etag.as_str(), "tags differ with the content");
    }

    /// Every value of `attribute="…"` in `text`.
    fn attribute_values<'a>(text: &'a str, attribute: &str) -> Vec<&'a str> {
        let needle = format!("{attribute}=\"");
        text.match_indices(&needle)
            .map(|(at, _)| {
                let rest = &text[at + needle.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect()
    }

    #[test]
    fn the_page_loads_only_embedded_assets_and_every_app_file_is_embedded() {
        let embedded: Vec<&str> = FILES.iter().map(|(name, _)| *name).collect();
        let index = own_source("index.html");
        let mut references = attribute_values(&index, "src");
        references.extend(attribute_values(&index, "href").into_iter().filter(|h| !h.starts_with('#')));
        assert!(references.len() >= 5, "{references:?}");
        for reference in references {
            let file = reference
                .strip_prefix("/assets/")
                .unwrap_or_else(|| panic!("{reference} is not under /assets/"));
            assert!(embedded.contains(&file), "index.html loads {reference}, which is not embedded");
        }
        // Every module the app imports is embedded too (the imports are all `from './x.js'`).
        for name in
            embedded.iter().filter(|n| n.ends_with(".js") && !["xterm.js", "addon-fit.js"].contains(n))
        {
            let source = own_source(name);
            for (at, _) in source.match_indices("from './") {
                let rest = &source[at + "from './".len()..];
                let module = &rest[..rest.find('\'').unwrap()];
                assert!(embedded.contains(&module), "{name} imports {module}, which is not embedded");
            }
        }
        // And a file added to web/ but not to FILES would be missing from the binary.
        for file in app_files() {
            assert!(embedded.contains(&file.as_str()), "web/{file} is not in assets.rs's FILES");
        }
    }

    /// The page is served with `script-src 'self'`: inline scripts, inline handlers and eval
    /// would be blocked, so none may be used; and no page text is parsed as HTML.
    #[test]
    fn the_app_keeps_to_the_content_security_policy() {
        let index = own_source("index.html");
        for (at, _) in index.match_indices("<script") {
            let tag = &index[at..at + index[at..].find('>').unwrap()];
            assert!(tag.contains(" src=\"/assets/"), "an inline script: {tag}");
        }
        for file in app_files() {
            let source = own_source(&file);
            for banned in
                ["eval(", "new Function", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"]
            {
                assert!(!source.contains(banned), "web/{file} uses {banned}");
            }
            let lower = source.to_lowercase();
            for handler in [" onclick=", " onload=", " onerror=", " onsubmit=", " oninput="] {
                assert!(!lower.contains(handler), "web/{file} has an inline handler {handler}");
            }
        }
    }

    #[test]
    fn the_etag_is_a_content_hash() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"ab"), fnv1a(b"ba"));
    }
}
