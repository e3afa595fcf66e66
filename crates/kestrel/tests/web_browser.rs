//! The browser console (`kestrel daemon --web`) in a real browser: headless Chromium driven
//! through chromedriver (WebDriver) with fantoccini.
//!
//! - Without a guest: a wrong token is refused with the server's message; after logging in, the
//!   create form shows the daemon's refusal of a bad definition, and the pool page creates a
//!   volume, clones it and shows the daemon's refusal to delete the clone's base.
//! - Without a guest either: pools, networks and a VM defined, edited and deleted from the
//!   forms, each refusal shown in the daemon's words.
//! - With the kit's Linux: the VM is listed, started from the list (its state follows through
//!   the events stream), its page's serial console (xterm.js over the console WebSocket) shows a
//!   shell prompt, a command typed into the page runs in the guest and its output comes back,
//!   and Shut down powers it off.
//!
//! Each page is saved as a PNG under `target/web-screenshots/`. Chromium, chromedriver, KVM and
//! the kit are skipped without, except on CI (CI=true), where their absence fails the test.

mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::kit::*;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long the daemon, chromedriver or a page may take to be ready (a limit, not a goal).
const READY_LIMIT: Duration = Duration::from_secs(30);
/// A kit boot to its shell prompt: ~20 s here on an idle host, minutes under load.
const BOOT_LIMIT: Duration = Duration::from_secs(300);
/// How often a condition in the page is looked at again.
const POLL: Duration = Duration::from_millis(100);

/// One browser at a time: two Chromiums on a small host only slow each other past the limits.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// A login token minted over the daemon's socket (`kestrel daemon web-token`).
fn token(daemon: &Daemon) -> String {
    let out = daemon.cli_ok(&["daemon", "web-token"]);
    let token = out.split_whitespace().find(|word| word.starts_with("kst_"));
    token.unwrap_or_else(|| panic!("no kst_ token in {out:?}")).to_owned()
}

/// chromedriver on a free loopback port, killed when dropped.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// chromedriver on a free port. The port is the kernel's pick, handed over (chromedriver
    /// has no port 0), so another process may take it in between: chromedriver then exits, and
    /// a new port is tried.
    fn start(binary: &Path) -> Chromedriver {
        for _ in 0..3 {
            if let Some(driver) = Chromedriver::try_start(binary) {
                return driver;
            }
        }
        panic!("chromedriver exited before listening, three times");
    }

    fn try_start(binary: &Path) -> Option<Chromedriver> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            // Its own process group, so Drop also ends the Chromium it started (a test that
            // fails never closes its session).
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary:?}: {e}"));
        let mut driver = Chromedriver { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + READY_LIMIT;
        // Ready when chromedriver itself says so on GET /status (not merely when something
        // answers on the port).
        while !status_ready(port) {
            if let Ok(Some(_)) = driver.child.try_wait() {
                return None;
            }
            assert!(Instant::now() < deadline, "chromedriver was not ready within {READY_LIMIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(driver)
    }
}

/// Whether the WebDriver server on `port` answers `GET /status` with `"ready": true`.
fn status_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // chromedriver keeps the connection open whatever the request says: read until the body
    // is a whole JSON document (or the read fails or times out).
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            if serde_json::from_str::<Value>(body).is_ok() {
                break body.to_owned();
            }
        }
    };
    serde_json::from_str::<Value>(&body).is_ok_and(|status| status["value"]["ready"] == true)
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the group is the one chromedriver
        // leads (process_group(0)), and chromedriver is not reaped yet, so its id is not reused.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chromium and chromedriver, or `None` (skip; on CI, a failure).
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    Some((host_tool("chromium")?, host_tool("chromedriver")?))
}

/// A headless Chromium session that trusts the daemon's self-signed certificate.
async fn browser(driver: &Chromedriver, chromium: &Path) -> Client {
    let capabilities = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1400", "--hide-scrollbars"],
        },
    });
    let Value::Object(capabilities) = capabilities else { unreachable!() };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with chromedriver")
}

/// Runs `script` (a function body) in the page until it returns something other than null,
/// false or ""; that value. Fails after `limit`, naming `what`.
async fn wait_js(client: &Client, what: &str, script: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    loop {
        match client.execute(script, vec![]).await {
            Ok(Value::Null) | Ok(Value::Bool(false)) => {}
            Ok(Value::String(text)) if text.is_empty() => {}
            Ok(value) => return value,
            Err(error) => last = Value::String(error.to_string()),
        }
        if Instant::now() >= deadline {
            let page = client.execute("return document.body.innerText", vec![]).await.unwrap_or_default();
            panic!(
                "{what}: not within {limit:?} (last error: {last})\nthe page:\n{}",
                page.as_str().unwrap_or("")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The text of the first element matching `selector`, once it is shown and not empty.
async fn wait_text(client: &Client, what: &str, selector: &str) -> String {
    let script = format!(
        "const e = document.querySelector({selector:?}); return e && !e.hidden ? e.textContent.trim() : null;"
    );
    wait_js(client, what, &script, READY_LIMIT).await.as_str().unwrap_or_default().to_owned()
}

/// Clicks the element `selector` names. The pages redraw their tables when events arrive, so
/// an element found a moment ago may be gone (stale): it is then looked up again, within the
/// deadline. A stale element was never clicked, so the retry cannot click twice.
async fn click(client: &Client, selector: &str) {
    retry_stale(selector, || async {
        let element = client.wait().at_most(READY_LIMIT).for_element(Locator::Css(selector)).await?;
        // In the middle of the window, not under the sticky top bar.
        let center = "arguments[0].scrollIntoView({block: 'center'})";
        client.execute(center, vec![serde_json::to_value(&element).unwrap()]).await?;
        element.click().await
    })
    .await
}

/// Replaces the text of the input `selector` names (looked up again if a redraw replaced it).
async fn fill(client: &Client, selector: &str, text: &str) {
    retry_stale(selector, || async {
        let element = client.wait().at_most(READY_LIMIT).for_element(Locator::Css(selector)).await?;
        element.clear().await?;
        element.send_keys(text).await
    })
    .await
}

/// Runs `step` until it does not fail with a stale element reference (bounded by READY_LIMIT);
/// any other failure fails the test.
async fn retry_stale<F, Fut>(selector: &str, step: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        match step().await {
            Ok(()) => return,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => continue,
            Err(e) => panic!("{selector}: {e}"),
        }
    }
}

/// Saves the page as `target/web-screenshots/NAME.png` (a test artefact).
async fn screenshot(client: &Client, name: &str) {
    // target/debug/kestrel → target/
    let target =
        Path::new(env!("CARGO_BIN_EXE_kestrel")).parent().and_then(Path::parent).expect("target dir");
    let dir = target.join("web-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    client.execute("window.scrollTo(0, 0)", vec![]).await.expect("scroll to the top");
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// The login page refuses `kst_wrong` with the server's message, then takes the real token.
async fn log_in(client: &Client, daemon: &Daemon, url: &str) {
    client.goto(url).await.expect("open the console");
    fill(client, "#token", "kst_wrong").await;
    click(client, "#login").await;
    // The server's own words (its ErrorBody), not a message of the page's.
    let refusal = wait_text(client, "the wrong token's refusal", "#login-error").await;
    assert!(refusal.contains("unknown or revoked token"), "{refusal}");
    screenshot(client, "login").await;
    assert!(
        client.find(Locator::Css("[data-test=page-vms]")).await.is_err(),
        "not logged in with a wrong token"
    );
    fill(client, "#token", &token(daemon)).await;
    click(client, "#login").await;
    wait_js(
        client,
        "the VM list after login",
        "return document.querySelector('[data-test=page-vms]')",
        READY_LIMIT,
    )
    .await;
}

/// Runs a test's browser part (the daemon, the locks and chromedriver stay outside, in the test).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(future)
}

/// Every line of the terminal's buffer (what xterm.js shows, scrollback included).
const TERMINAL_TEXT: &str = "const t = window.kestrelTerminal; if (!t) return null; \
    const b = t.buffer.active; const lines = []; \
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true)); \
    return lines.join('\\n');";

#[test]
fn the_console_logs_in_validates_definitions_and_manages_volumes() {
    let Some((chromium, chromedriver)) = browser_tools() else { return };
    let _one = ONE_BROWSER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (daemon, url) = Daemon::start_with_web();
    let pool_dir = daemon.dir.path().join("pool");
    daemon.cli_ok(&["pool", "define", "images", "--path", path_str(&pool_dir)]);
    daemon.cli_ok(&["net", "define", "lab", "--address", "10.79.0.1/24"]);
    let driver = Chromedriver::start(&chromedriver);
    block_on(async {
        let client = browser(&driver, &chromium).await;
        log_in(&client, &daemon, &url).await;

        // The create form sends what it is given; the daemon's refusal is shown next to it.
        client.goto(&format!("{}#/create", url)).await.unwrap();
        wait_js(
            &client,
            "the networks in the form",
            "return document.querySelector('#create-network option[value=lab]')",
            READY_LIMIT,
        )
        .await;
        fill(&client, "#create-name", "web").await;
        fill(&client, "#create-kernel", "vmlinux").await;
        click(&client, "#create-submit").await;
        let refusal = wait_text(&client, "the daemon's refusal", "#create-error").await;
        assert!(refusal.contains("kernel must be an absolute path"), "{refusal}");
        screenshot(&client, "create").await;

        client.goto(&format!("{}#/networks", url)).await.unwrap();
        let state =
            wait_text(&client, "the network's row", "[data-network=lab] [data-test=network-state]").await;
        assert_eq!(state, "inactive");
        screenshot(&client, "networks").await;

        // A pool: a volume made, a thin clone of it, and the base's deletion refused.
        client.goto(&format!("{}#/pools", url)).await.unwrap();
        click(&client, "[data-pool=images] [data-test=pool-link]").await;
        fill(&client, "#volume-name", "base").await;
        fill(&client, "#volume-size", "64").await;
        click(&client, "#volume-unit option[value=MiB]").await;
        click(&client, "#volume-create").await;
        wait_text(&client, "the new volume", "[data-volume=base]").await;
        wait_js(
            &client,
            "the base offered for cloning",
            "return document.querySelector('#clone-base option[value=base]')",
            READY_LIMIT,
        )
        .await;
        fill(&client, "#clone-name", "web").await;
        click(&client, "#clone-create").await;
        let row = wait_text(&client, "the clone", "[data-volume=web]").await;
        assert!(row.contains("base"), "the clone's backing volume is shown: {row}");
        click(&client, "[data-volume=base] [data-test=volume-delete]").await;
        client.accept_alert().await.expect("the deletion's confirmation");
        let refusal = wait_text(&client, "the refusal to delete a base", "#pool-error").await;
        assert!(refusal.contains("base"), "{refusal}");
        assert!(client.find(Locator::Css("[data-volume=base]")).await.is_ok(), "the base is still listed");
        screenshot(&client, "pools").await;

        // Logging out ends the session: the login page again.
        click(&client, "#logout").await;
        wait_js(&client, "the login page", "return document.querySelector('#token')", READY_LIMIT).await;
        client.close().await.unwrap();
    });
}

#[test]
fn a_linux_vm_is_started_typed_into_and_shut_down_from_the_browser() {
    let Some(kit) = kit_available() else { return };
    let Some((chromium, chromedriver)) = browser_tools() else { return };
    let _one = ONE_BROWSER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let _boot = one_boot_at_a_time();
    let (daemon, url) = Daemon::start_with_web();
    // No `kestrel.run=`: the kit's /init starts a shell on the console.
    daemon.cli_ok(&[
        "vm",
        "define",
        "lin",
        "--kernel",
        path_str(&kit.0),
        "--initrd",
        path_str(&kit.1),
        "--memory",
        "256M",
        "--cmdline",
        &format!("{} quiet", kit_cmdline()),
    ]);
    let driver = Chromedriver::start(&chromedriver);
    block_on(async {
        let client = browser(&driver, &chromium).await;
        log_in(&client, &daemon, &url).await;

        // Listed, started from the list; the state follows through the events stream.
        assert_eq!(wait_text(&client, "the VM's row", "[data-vm=lin] [data-test=vm-state]").await, "stopped");
        click(&client, "[data-vm=lin] [data-test=action-start]").await;
        wait_js(
            &client,
            "the VM running in the list",
            "return document.querySelector('[data-vm=lin] [data-test=vm-state]')?.dataset.state === 'running'",
            BOOT_LIMIT,
        )
        .await;
        wait_js(
            &client,
            "a sample in the VM's sparkline",
            "return document.querySelector('[data-vm=lin] [data-test=vm-spark]')?.dataset.samples >= 2",
            READY_LIMIT,
        )
        .await;
        screenshot(&client, "vms").await;

        // Its page: the console shows the shell's prompt; a command typed there runs in the guest.
        click(&client, "[data-vm=lin] [data-test=vm-link]").await;
        let prompt = "const text = (() => { ".to_owned()
            + TERMINAL_TEXT
            + " })(); if (!text || !text.includes('starting a shell')) return null; \
               const last = text.trimEnd().split('\\n').pop(); \
               return /[#$]$/.test(last) ? last : null;";
        wait_js(&client, "a shell prompt in the console", &prompt, BOOT_LIMIT).await;
        let input = client.find(Locator::Css(".xterm-helper-textarea")).await.expect("xterm's input");
        input
            .send_keys(&format!("echo kestrel-$((6*7)){}", char::from(fantoccini::key::Key::Enter)))
            .await
            .unwrap();
        let answer = format!(
            "const text = (() => {{ {TERMINAL_TEXT} }})(); return text && text.includes('kestrel-42');"
        );
        wait_js(&client, "the command's output in the console", &answer, READY_LIMIT).await;
        wait_js(
            &client,
            "a sample in the graphs",
            "return document.querySelector('[data-test=graph-cpu]')?.dataset.samples >= 2",
            READY_LIMIT,
        )
        .await;
        screenshot(&client, "vm").await;

        // Shut down: the ACPI power button; the page shows it stopped.
        click(&client, "#action-shutdown").await;
        wait_js(
            &client,
            "the VM stopped on its page",
            "return document.querySelector('#vm-state')?.dataset.state === 'stopped'",
            BOOT_LIMIT,
        )
        .await;
        // The daemon lets the console's viewers go once the VM has stopped.
        wait_js(
            &client,
            "the console disconnected",
            "return document.querySelector('[data-test=console-status]')?.dataset.state === 'disconnected'",
            READY_LIMIT,
        )
        .await;
        assert!(
            client.find(Locator::Css("#console-reconnect:not([hidden])")).await.is_ok(),
            "a Reconnect button"
        );
        client.close().await.unwrap();
    });
}

/// Waits until `selector` matches nothing in a page that has drawn its list (`drawn` matches).
async fn wait_gone(client: &Client, what: &str, drawn: &str, selector: &str) {
    let script = format!(
        "return document.querySelector({drawn:?}) !== null && document.querySelector({selector:?}) === null;"
    );
    wait_js(client, what, &script, READY_LIMIT).await;
}

/// Answers the page's own confirmation (dom.js `confirmBar`, not a native dialog).
async fn confirm(client: &Client, screenshot_name: Option<&str>) {
    wait_text(client, "the confirmation", "#confirm").await;
    if let Some(name) = screenshot_name {
        screenshot(client, name).await;
    }
    click(client, "#confirm-yes").await;
}

/// The forms that change things, without a guest: a pool defined from its form (a relative path
/// refused first), a volume of it resized (a shrink refused), the pool deleted; a network defined from its form (a bad address refused first),
/// its deletion refused while a VM's card is on it; that VM edited (its vCPUs and command line
/// changed, a too-small memory refused, its card kept) and deleted; then the network deleted.
/// The network is never started, so neither root nor a bridge is needed.
#[test]
fn pools_networks_and_vms_are_defined_edited_and_deleted_from_the_browser() {
    let Some((chromium, chromedriver)) = browser_tools() else { return };
    let _one = ONE_BROWSER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (daemon, url) = Daemon::start_with_web();
    // Defining a VM needs a kernel file that exists; this one is never booted.
    let kernel = daemon.dir.path().join("vmlinux");
    std::fs::write(&kernel, b"never booted").unwrap();
    let pool_dir = daemon.dir.path().join("made-in-the-browser");
    let driver = Chromedriver::start(&chromedriver);
    block_on(async {
        let client = browser(&driver, &chromium).await;
        log_in(&client, &daemon, &url).await;

        // A pool: the daemon's refusal of a relative path, then one defined, listed and deleted.
        client.goto(&format!("{url}#/pools")).await.unwrap();
        wait_text(&client, "the empty pool list", "#pool-table .empty").await;
        fill(&client, "#pool-name", "browser").await;
        fill(&client, "#pool-path", "relative/dir").await;
        click(&client, "#pool-define").await;
        let refusal = wait_text(&client, "the relative path's refusal", "#pool-form-error").await;
        assert!(refusal.contains("must be an absolute path"), "{refusal}");
        fill(&client, "#pool-path", path_str(&pool_dir)).await;
        click(&client, "#pool-define").await;
        let row = wait_text(&client, "the new pool", "[data-pool=browser]").await;
        assert!(row.contains("made-in-the-browser"), "its directory is shown: {row}");
        assert!(pool_dir.is_dir(), "the daemon made the pool's directory");
        screenshot(&client, "pool-form").await;

        // Its page: a volume made and grown with Resize; a shrink is refused unless asked for.
        click(&client, "[data-pool=browser] [data-test=pool-link]").await;
        fill(&client, "#volume-name", "disk").await;
        fill(&client, "#volume-size", "64").await;
        click(&client, "#volume-unit option[value=MiB]").await;
        click(&client, "#volume-format option[value=raw]").await;
        click(&client, "#volume-create").await;
        wait_text(&client, "the new volume", "[data-volume=disk]").await;
        click(&client, "[data-volume=disk] [data-test=volume-resize]").await;
        fill(&client, "#resize-size", "128").await;
        click(&client, "#resize-unit option[value=MiB]").await;
        click(&client, "#resize-submit").await;
        wait_js(
            &client,
            "the volume's new size",
            "return document.querySelector('[data-volume=disk]')?.textContent.includes('128 MiB')",
            READY_LIMIT,
        )
        .await;
        fill(&client, "#resize-size", "32").await;
        click(&client, "#resize-submit").await;
        let refusal = wait_text(&client, "the shrink's refusal", "#pool-error").await;
        assert!(refusal.contains("drops data"), "{refusal}");
        screenshot(&client, "volume-resize").await;

        // Deleted from the list (its volumes are not in use): the daemon forgets it.
        client.goto(&format!("{url}#/pools")).await.unwrap();
        click(&client, "[data-pool=browser] [data-test=pool-delete]").await;
        confirm(&client, Some("pool-delete")).await;
        wait_gone(&client, "the pool deleted", "#pool-table .empty", "[data-pool=browser]").await;
        assert!(!daemon.cli_ok(&["pool", "list"]).contains("browser"), "the daemon forgot it");

        // A network: a bad address refused in the daemon's words, then one defined and listed.
        client.goto(&format!("{url}#/networks")).await.unwrap();
        wait_text(&client, "the empty network list", "#network-table .empty").await;
        fill(&client, "#network-name", "webnet").await;
        fill(&client, "#network-address", "10.78.0.1").await;
        click(&client, "#network-mode option[value=isolated]").await;
        fill(&client, "#network-domain", "web.test").await;
        click(&client, "#network-define").await;
        let refusal = wait_text(&client, "the bad address's refusal", "#network-form-error").await;
        assert!(refusal.contains("is not an IPv4 address with a prefix"), "{refusal}");
        screenshot(&client, "network-form-refused").await;
        fill(&client, "#network-address", "10.78.0.1/24").await;
        click(&client, "#network-define").await;
        let row = wait_text(&client, "the new network", "[data-network=webnet]").await;
        for expected in ["isolated", "10.78.0.0/24", "web.test"] {
            assert!(row.contains(expected), "{expected} in the row: {row}");
        }
        assert_eq!(
            wait_text(&client, "its state", "[data-network=webnet] [data-test=network-state]").await,
            "inactive"
        );
        screenshot(&client, "network-form").await;

        // A VM with a card on it: the network's deletion is refused, with the daemon's reason.
        daemon.cli_ok(&["vm", "define", "edit-me", "--kernel", path_str(&kernel), "--net", "network=webnet"]);
        click(&client, "[data-network=webnet] [data-test=network-delete]").await;
        confirm(&client, None).await;
        let refusal = wait_text(&client, "the refusal to delete a network in use", "#networks-error").await;
        assert!(refusal.contains("edit-me"), "the refusal names the VM: {refusal}");
        assert!(client.find(Locator::Css("[data-network=webnet]")).await.is_ok(), "still listed");

        // The VM's page: its vCPUs and command line edited; the new values come back from the
        // daemon (after a reload too), and the card the form does not show is kept.
        client.goto(&format!("{url}#/vms/edit-me")).await.unwrap();
        assert_eq!(wait_text(&client, "the VM's state", "#vm-state").await, "stopped");
        assert_eq!(wait_text(&client, "its vCPUs", "[data-test=vm-cpus]").await, "1");
        click(&client, "#vm-edit-open").await;
        let note = wait_text(&client, "the edit form's note", "[data-test=vm-edit-note]").await;
        assert!(note.contains("next start"), "{note}");
        fill(&client, "#edit-cpus", "3").await;
        fill(&client, "#edit-cmdline", "console=ttyS0 quiet").await;
        click(&client, "#vm-edit-save").await;
        wait_js(
            &client,
            "the new vCPU count on the page",
            "return document.querySelector('[data-test=vm-cpus]')?.textContent === '3' \
             && document.querySelector('#vm-edit').hidden",
            READY_LIMIT,
        )
        .await;
        client.refresh().await.unwrap();
        assert_eq!(wait_text(&client, "the vCPUs after a reload", "[data-test=vm-cpus]").await, "3");
        assert_eq!(
            wait_text(&client, "the command line after a reload", "[data-test=vm-cmdline]").await,
            "console=ttyS0 quiet"
        );
        let cards = wait_text(&client, "its card", "[data-test=vm-nics]").await;
        assert!(cards.contains("webnet"), "the card is kept: {cards}");

        // A memory below the minimum: the daemon's refusal next to the form, nothing changed.
        click(&client, "#vm-edit-open").await;
        fill(&client, "#edit-memory", "8").await;
        click(&client, "#vm-edit-save").await;
        let refusal = wait_text(&client, "the bad memory's refusal", "#vm-edit-error").await;
        assert!(refusal.contains("memory_mib must be at least 16, not 8"), "{refusal}");
        screenshot(&client, "vm-edit").await;
        // An emptied vCPUs field is refused in the page, not sent as "the default" (1 vCPU).
        fill(&client, "#edit-memory", "256").await;
        fill(&client, "#edit-cpus", "").await;
        click(&client, "#vm-edit-save").await;
        let refusal = wait_text(&client, "the empty vCPUs' refusal", "#vm-edit-error").await;
        assert!(refusal.contains("vCPUs must be a whole number"), "{refusal}");
        click(&client, "#vm-edit-cancel").await;
        let cpus = daemon.cli_ok(&["vm", "info", "edit-me", "--json"]);
        let cpus: Value = serde_json::from_str(&cpus).unwrap();
        assert_eq!(cpus["definition"]["cpus"], 3, "the VM kept its 3 vCPUs");

        // Deleted from its page (a stopped VM): back to the list, where it is gone.
        click(&client, "#vm-delete").await;
        confirm(&client, Some("vm-delete")).await;
        wait_gone(&client, "the VM gone from the list", "#vm-table .empty", "[data-vm=edit-me]").await;
        assert!(!daemon.cli_ok(&["vm", "list", "--all"]).contains("edit-me"), "the daemon undefined it");

        // Now nothing uses the network: it goes.
        client.goto(&format!("{url}#/networks")).await.unwrap();
        click(&client, "[data-network=webnet] [data-test=network-delete]").await;
        confirm(&client, None).await;
        wait_gone(&client, "the network deleted", "#network-table .empty", "[data-network=webnet]").await;
        client.close().await.unwrap();
    });
}
