//! `docs/manager-api.yaml` describes every route the daemon serves: each `.route("PATH", …)` call
//! in the crate's source, with each of its methods, is an operation of the OpenAPI file (and the
//! file describes no route the daemon does not serve). A route added without its documentation
//! fails here.
//!
//! Both sides are read as text, without a YAML or Rust parser: the routes from the source's
//! `.route("…", get(…).post(…))` calls, the operations from the indentation of the file's `paths:`
//! section (two spaces for a path, four for a method).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `(method, path)`, e.g. `("post", "/v1/vms/{vm}/start")`.
type Operation = (String, String);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The text of a call's arguments: from just after its `(` to its matching `)`.
fn arguments(text: &str) -> &str {
    let mut depth = 1usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    text
}

/// Every `.route("PATH", method(handler).method(handler)…)` call in `source`.
fn routes_in(source: &str, file: &Path) -> Vec<Operation> {
    let mut found = Vec::new();
    for (start, _) in source.match_indices(".route(") {
        let args = arguments(&source[start + ".route(".len()..]);
        let args = args.trim_start();
        let Some(rest) = args.strip_prefix('"') else {
            panic!("{}: a .route( call whose path is not a string literal: {args}", file.display());
        };
        let (path, handlers) = rest.split_once('"').expect("a closed path literal");
        // The method routers: `get(`, `.post(`, … (a handler is a plain name, so a method's
        // name followed by `(` is always a method router).
        let mut methods = 0;
        for method in METHODS {
            for (at, _) in handlers.match_indices(&format!("{method}(")) {
                let before = handlers[..at].chars().next_back();
                if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                    found.push((method.to_owned(), path.to_owned()));
                    methods += 1;
                }
            }
        }
        assert!(methods > 0, "{}: no method router in .route(\"{path}\", {handlers})", file.display());
    }
    found
}

fn source_routes() -> BTreeSet<Operation> {
    let mut files = Vec::new();
    rust_files(&manifest_dir().join("src"), &mut files);
    let web = manifest_dir().join("src/web");
    let mut routes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let found = routes_in(&source, &file);
        // The browser console's own routes (`src/web/`: the UI's files, `/auth/*`) are served
        // only over HTTPS and are not the socket's API; its socket routes are under /v1/.
        let socket_api = |(_, path): &Operation| !file.starts_with(&web) || path.starts_with("/v1/");
        routes.extend(found.into_iter().filter(socket_api));
    }
    routes
}

/// The operations of an OpenAPI file's `paths:` section.
fn documented_operations(yaml: &str) -> BTreeSet<Operation> {
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for line in yaml.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(key) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) {
            let key = key.trim_end().strip_suffix(':').unwrap_or_else(|| panic!("a path key: {line}"));
            path = Some(key.trim_matches('"').to_owned());
        } else if let Some(key) = line.strip_prefix("    ").filter(|l| !l.starts_with(' ')) {
            let key = key.split(':').next().unwrap_or("");
            if METHODS.contains(&key) {
                let path = path.clone().unwrap_or_else(|| panic!("a method before any path: {line}"));
                operations.insert((key.to_owned(), path));
            }
        }
    }
    operations
}

#[test]
fn every_route_the_daemon_serves_is_documented_and_nothing_else() {
    let routes = source_routes();
    // The scan found the router: a scan that matched nothing would pass vacuously.
    assert!(routes.contains(&("post".to_owned(), "/v1/vms".to_owned())), "{routes:?}");
    assert!(routes.contains(&("get".to_owned(), "/metrics".to_owned())), "{routes:?}");
    let yaml_path = manifest_dir().join("../../docs/manager-api.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).unwrap();
    let documented = documented_operations(&yaml);
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes missing from docs/manager-api.yaml: {undocumented:?}");
    let stale: Vec<_> = documented.difference(&routes).collect();
    assert!(stale.is_empty(), "docs/manager-api.yaml documents routes the daemon does not serve: {stale:?}");
}

#[test]
fn the_scanners_read_what_they_are_meant_to() {
    let source = r#"Router::new().route("/a", get(list).post(define))
        .route("/a/{x}", get(info).delete(undefine)).route("/b", post(forget_post))"#;
    let routes: BTreeSet<_> = routes_in(source, Path::new("x.rs")).into_iter().collect();
    let expected: BTreeSet<_> =
        [("get", "/a"), ("post", "/a"), ("get", "/a/{x}"), ("delete", "/a/{x}"), ("post", "/b")]
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
    assert_eq!(routes, expected);

    let yaml = "info:\n  title: x\npaths:\n  /a:\n    parameters: []\n    get:\n      summary: y\n  \
                \"/b\":\n    post: { summary: z }\ncomponents:\n  schemas:\n    get:\n      type: string\n";
    let documented: Vec<_> = documented_operations(yaml).into_iter().collect();
    assert_eq!(documented, vec![("get".to_owned(), "/a".to_owned()), ("post".to_owned(), "/b".to_owned())]);
}
