//! Storage pools through the real daemon and CLI (`kestrel pool|vol`), with qemu-img as the
//! referee of what the volumes are.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::daemon::Daemon;

fn fails(output: &Output, needle: &str) {
    let stderr = common::stderr(output);
    assert!(!output.status.success(), "expected a failure, got success:\n{}", common::stdout(output));
    assert!(stderr.contains(needle), "expected '{needle}' in:\n{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

/// The daemon with pool `p` defined at `<dir>/pool`.
fn daemon_with_pool() -> (Daemon, PathBuf) {
    let daemon = Daemon::start();
    let pool = daemon.dir.path().join("pool");
    daemon.cli_ok(&["pool", "define", "p", "--path", common::path_str(&pool)]);
    (daemon, pool)
}

fn qemu_info(qemu_img: &Path, path: &Path) -> serde_json::Value {
    let text = common::run_tool(qemu_img, &["info", "-U", "--output=json", common::path_str(path)]);
    serde_json::from_str(&text).expect("qemu-img's JSON")
}

/// Names of the files in a directory, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Deterministic bytes that do not compress or repeat (a simple xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[test]
fn volumes_are_what_qemu_img_says_they_are() {
    let Some(qemu_img) = common::host_tool("qemu-img") else { return };
    let (daemon, pool) = daemon_with_pool();
    let mode = std::fs::metadata(&pool).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o700);

    daemon.cli_ok(&["vol", "create", "p", "data", "--size", "64M"]);
    daemon.cli_ok(&["vol", "create", "p", "base", "--size", "1G", "--format", "qcow2"]);
    daemon.cli_ok(&["vol", "clone", "p", "base", "web"]);
    let info = qemu_info(&qemu_img, &pool.join("data"));
    assert_eq!((info["format"].as_str(), info["virtual-size"].as_u64()), (Some("raw"), Some(64 << 20)));
    let info = qemu_info(&qemu_img, &pool.join("base"));
    assert_eq!((info["format"].as_str(), info["virtual-size"].as_u64()), (Some("qcow2"), Some(1 << 30)));
    let info = qemu_info(&qemu_img, &pool.join("web"));
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 1u64 << 30);
    assert_eq!(info["backing-filename"], "base", "a relative backing file");
    assert_eq!(info["backing-filename-format"], "qcow2");
    common::run_tool(&qemu_img, &["check", "-U", common::path_str(&pool.join("web"))]);

    // Grow; shrinking needs asking.
    daemon.cli_ok(&["vol", "resize", "p", "web", "2G"]);
    assert_eq!(qemu_info(&qemu_img, &pool.join("web"))["virtual-size"], 2u64 << 30);
    fails(&daemon.cli(&["vol", "resize", "p", "data", "1M"]), "--shrink");
    assert_eq!(qemu_info(&qemu_img, &pool.join("data"))["virtual-size"], 64u64 << 20);
    // A running VM holds its disk's write lock (QEMU's lock bytes): no resize, no delete, no
    // download of a moving image.
    let vmm = std::fs::OpenOptions::new().read(true).write(true).open(pool.join("data")).unwrap();
    storage::lock::lock(&vmm, storage::lock::Access::Write).unwrap();
    fails(&daemon.cli(&["vol", "resize", "p", "data", "128M"]), "in use");
    fails(&daemon.cli(&["vol", "delete", "p", "data"]), "in use");
    let out = daemon.dir.path().join("data.out");
    fails(&daemon.cli(&["vol", "download", "p", "data", common::path_str(&out)]), "while it is written");
    drop(vmm);
    daemon.cli_ok(&["vol", "resize", "p", "data", "1M", "--shrink"]);
    assert_eq!(qemu_info(&qemu_img, &pool.join("data"))["virtual-size"], 1u64 << 20);

    // The list agrees, in JSON.
    let list: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["vol", "list", "p", "--json"])).unwrap();
    let summary: Vec<(String, String, u64, Option<String>)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["format"].as_str().unwrap().to_owned(),
                v["size_bytes"].as_u64().unwrap(),
                v["backing"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("base".into(), "qcow2".into(), 1 << 30, None),
            ("data".into(), "raw".into(), 1 << 20, None),
            ("web".into(), "qcow2".into(), 2 << 30, Some("base".into())),
        ]
    );
    let text = daemon.cli_ok(&["vol", "list", "p"]);
    assert!(text.starts_with("NAME") && text.contains("web") && text.contains("2 GiB"), "{text}");

    // A base with clones stays; once they are gone it goes.
    fails(&daemon.cli(&["vol", "delete", "p", "base"]), "web");
    assert!(pool.join("base").exists());
    daemon.cli_ok(&["vol", "delete", "p", "web"]);
    daemon.cli_ok(&["vol", "delete", "p", "base"]);
    assert_eq!(files(&pool), ["data"]);
    fails(&daemon.cli(&["vol", "info", "p", "base"]), "no volume 'base'");

    // The pool and its volumes are in the store: a restarted daemon has them.
    let mut daemon = daemon;
    daemon.kill();
    daemon.restart();
    let info: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["pool", "info", "p", "--json"])).unwrap();
    assert_eq!(info["volumes"], 1);
    daemon.cli_ok(&["pool", "undefine", "p"]);
    assert_eq!(files(&pool), ["data"], "undefine keeps the files");
    fails(&daemon.cli(&["vol", "list", "p"]), "no pool named 'p'");
}

/// Peak resident memory of a process, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn an_upload_is_streamed_and_downloads_the_same_bytes() {
    let (daemon, pool) = daemon_with_pool();
    let source = daemon.dir.path().join("big.img");
    let bytes = noise(64 << 20);
    std::fs::write(&source, &bytes).unwrap();
    let pid = daemon.pid().unwrap();
    let before = peak_rss(pid);

    let output =
        daemon.cli_ok(&["vol", "import", "p", common::path_str(&source), "--format", "raw", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!((info["name"].as_str(), info["size_bytes"].as_u64()), (Some("big.img"), Some(64 << 20)));
    let grown = peak_rss(pid).saturating_sub(before);
    assert!(grown < 32 << 20, "the daemon's peak RSS grew by {grown} bytes for a 64 MiB upload");
    assert!(std::fs::read(pool.join("big.img")).unwrap() == bytes, "the volume differs from the upload");

    let back = daemon.dir.path().join("back.img");
    daemon.cli_ok(&["vol", "download", "p", "big.img", common::path_str(&back)]);
    assert!(std::fs::read(&back).unwrap() == bytes, "the download differs from the upload");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&back).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // An existing file is not replaced, and a name is not taken twice.
    fails(&daemon.cli(&["vol", "download", "p", "big.img", common::path_str(&back)]), "exists");
    fails(
        &daemon.cli(&["vol", "import", "p", common::path_str(&source)]),
        "already has a file named 'big.img'",
    );
    assert_eq!(files(&pool), ["big.img"], "no temporary file is left");
}

#[test]
fn an_upload_of_a_sparse_image_stays_sparse() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let (daemon, pool) = daemon_with_pool();
    // 64 MiB, of which 1 MiB of data in pieces (at the start, at odd offsets, at the very end).
    let source = daemon.dir.path().join("sparse.img");
    let file = std::fs::File::create(&source).unwrap();
    file.set_len(64 << 20).unwrap();
    let data = noise(1 << 18);
    for offset in [0u64, (20 << 20) + 1234, (40 << 20) + 77] {
        file.write_all_at(&data, offset).unwrap();
    }
    file.write_all_at(b"end", (64 << 20) - 3).unwrap();
    drop(file);
    daemon.cli_ok(&["vol", "import", "p", common::path_str(&source), "--format", "raw"]);
    let volume = pool.join("sparse.img");
    let meta = std::fs::metadata(&volume).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    let allocated = meta.blocks() * 512;
    assert!(allocated < 8 << 20, "a 64 MiB image of 1 MiB of data took {allocated} bytes in the pool");
    assert!(std::fs::read(&volume).unwrap() == std::fs::read(&source).unwrap(), "the bytes differ");
}

#[test]
fn a_qcow2_upload_is_probed_checked_and_keeps_its_backing_in_the_pool() {
    let Some(qemu_img) = common::host_tool("qemu-img") else { return };
    let (daemon, pool) = daemon_with_pool();
    let work = daemon.dir.path();
    let img = |name: &str| work.join(name);
    let path = |name: &str| common::path_str(&img(name)).to_owned();

    // A good image, probed as qcow2, and an overlay over it: both taken.
    common::run_tool(&qemu_img, &["create", "-q", "-f", "qcow2", &path("base.qcow2"), "16M"]);
    common::run_tool(
        &qemu_img,
        &["create", "-q", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2", &path("top.qcow2"), "16M"],
    );
    let info: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["vol", "import", "p", &path("base.qcow2"), "--json"])).unwrap();
    assert_eq!(info["format"], "qcow2");
    daemon.cli_ok(&["vol", "import", "p", &path("top.qcow2")]);
    let info = qemu_info(&qemu_img, &pool.join("top.qcow2"));
    assert_eq!(info["backing-filename"], "base.qcow2");

    // A header naming a host file as backing file.
    common::run_tool(
        &qemu_img,
        &["create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", &path("evil.qcow2"), "1M"],
    );
    fails(&daemon.cli(&["vol", "import", "p", &path("evil.qcow2")]), "not a volume of this pool");
    // … or a file next to the pool.
    common::run_tool(
        &qemu_img,
        &["create", "-q", "-f", "qcow2", "-u", "-b", "../secret", "-F", "raw", &path("sneaky.qcow2"), "1M"],
    );
    fails(&daemon.cli(&["vol", "import", "p", &path("sneaky.qcow2")]), "not a volume of this pool");
    // A truncated image.
    common::run_tool(&qemu_img, &["create", "-q", "-f", "qcow2", &path("cut.qcow2"), "1G"]);
    let whole = std::fs::read(img("cut.qcow2")).unwrap();
    std::fs::write(img("cut.qcow2"), &whole[..whole.len() / 2]).unwrap();
    fails(
        &daemon.cli(&["vol", "import", "p", &path("cut.qcow2"), "--format", "qcow2"]),
        "not a usable qcow2 image",
    );
    // Raw bytes stated as qcow2.
    std::fs::write(img("junk"), noise(1 << 20)).unwrap();
    fails(
        &daemon.cli(&["vol", "import", "p", &path("junk"), "--format", "qcow2"]),
        "not a usable qcow2 image",
    );
    assert_eq!(files(&pool), ["base.qcow2", "top.qcow2"], "nothing is left of a refused upload");
}

/// One raw HTTP request to the daemon; the status and the body.
fn raw_request(socket: &Path, request: &str) -> (u16, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(common::HANG_LIMIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

#[test]
fn names_and_symlinks_cannot_escape_the_pool() {
    let (daemon, pool) = daemon_with_pool();
    let secret = daemon.dir.path().join("secret");
    std::fs::write(&secret, b"host file").unwrap();

    // The CLI refuses such names, and so does the daemon when a client sends them anyway.
    fails(&daemon.cli(&["vol", "create", "p", "../secret", "--size", "1M"]), "may only hold");
    for name in ["..%2Fsecret", "%2E%2E", ".hidden"] {
        let body = "overwritten";
        let request = format!(
            "PUT /v1/pools/p/volumes/{name}/data?format=raw HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, answer) = raw_request(&daemon.socket, &request);
        assert!(status == 400 || status == 404, "{name}: {answer}");
        let request =
            format!("DELETE /v1/pools/p/volumes/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, answer) = raw_request(&daemon.socket, &request);
        assert!(status == 400 || status == 404, "{name}: {answer}");
    }
    let body = r#"{"name":"x","path":"relative/dir"}"#;
    let request = format!(
        "POST /v1/pools HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = raw_request(&daemon.socket, &request);
    assert_eq!(status, 400, "{answer}");
    assert_eq!(std::fs::read(&secret).unwrap(), b"host file");

    // A symlink planted in the pool is neither taken in nor followed.
    std::os::unix::fs::symlink(&secret, pool.join("link")).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["pool", "refresh", "p", "--json"])).unwrap();
    assert_eq!(report["skipped"][0]["name"], "link");
    fails(&daemon.cli(&["vol", "info", "p", "link"]), "no volume 'link'");
    // Even when a volume is swapped for one after it was made.
    daemon.cli_ok(&["vol", "create", "p", "disk", "--size", "1M"]);
    std::fs::remove_file(pool.join("disk")).unwrap();
    std::os::unix::fs::symlink(&secret, pool.join("disk")).unwrap();
    fails(&daemon.cli(&["vol", "info", "p", "disk"]), "symbolic link");
    fails(&daemon.cli(&["vol", "resize", "p", "disk", "2M"]), "symbolic link");
    let out = daemon.dir.path().join("out");
    fails(&daemon.cli(&["vol", "download", "p", "disk", common::path_str(&out)]), "symbolic link");
    assert!(!out.exists(), "a refused download leaves no file");
    daemon.cli_ok(&["vol", "delete", "p", "disk"]);
    assert_eq!(std::fs::read(&secret).unwrap(), b"host file");
}

#[test]
fn an_upload_cut_off_midway_leaves_nothing() {
    let (daemon, pool) = daemon_with_pool();
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let head =
        "PUT /v1/pools/p/volumes/half/data?format=raw HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&noise(1 << 20)).unwrap();
    // The temporary file appears while the bytes come in …
    let deadline = std::time::Instant::now() + common::HANG_LIMIT;
    while files(&pool).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the upload never started");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(files(&pool)[0].starts_with('.'), "not yet a volume: {:?}", files(&pool));
    // … and goes when the client does.
    drop(stream);
    while !files(&pool).is_empty() {
        assert!(std::time::Instant::now() < deadline, "left behind: {:?}\n{}", files(&pool), daemon.log());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    fails(&daemon.cli(&["vol", "info", "p", "half"]), "no volume 'half'");
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mount tmpfs on {}", path.display());
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_pool_refuses_clearly_and_keeps_nothing_partial() {
    if !common::is_root() {
        return;
    }
    let daemon = Daemon::start();
    let pool = daemon.dir.path().join("small");
    let _tmpfs = Tmpfs::mount(&pool, "1m");
    daemon.cli_ok(&["pool", "define", "small", "--path", common::path_str(&pool)]);
    let source = daemon.dir.path().join("two-mib.img");
    std::fs::write(&source, noise(2 << 20)).unwrap();
    fails(&daemon.cli(&["vol", "import", "small", common::path_str(&source)]), "full");
    assert!(files(&pool).is_empty(), "a partial volume was left: {:?}", files(&pool));

    // Filled to the brim by hand, a qcow2 create fails the same way.
    let filler = pool.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    while file.write_all(&[1u8; 4096]).is_ok() {}
    drop(file);
    daemon.cli_ok(&["pool", "refresh", "small"]);
    fails(&daemon.cli(&["vol", "create", "small", "q", "--size", "1G", "--format", "qcow2"]), "full");
    assert_eq!(files(&pool), ["filler"]);
}
