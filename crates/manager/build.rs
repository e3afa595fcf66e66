//! Fetches the browser console's npm packages (xterm.js and its fit add-on, pinned by
//! `web/package-lock.json`) into OUT_DIR, where `src/web/assets.rs` embeds them.
//!
//! `npm ci` runs in a copy of the manifest under OUT_DIR so the source tree stays clean, with
//! `--ignore-scripts` so no package runs code at build time; it runs again only when the
//! manifest or its lock file changes (cargo tracks the app's own files through `include_bytes!`).
//! Without npm (or when it fails) the build fails, so no build ships a console without its
//! terminal by accident; `KESTREL_WEB_STUB=1` asks for a build without xterm.js on purpose, with
//! a stub that makes the console panel say why.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files taken from `node_modules`, each as (its path there, the name it is embedded under).
const VENDORED: [(&str, &str); 3] = [
    ("@xterm/xterm/lib/xterm.js", "xterm.js"),
    ("@xterm/xterm/css/xterm.css", "xterm.css"),
    ("@xterm/addon-fit/lib/addon-fit.js", "addon-fit.js"),
];

/// What the stub defines instead of `window.Terminal`; `web/console.js` shows it.
const STUB_JS: &str = "window.kestrelXtermMissing = \"the serial console was built without xterm.js \
(it was built with KESTREL_WEB_STUB=1); install npm (scripts/install-prerequisites) and rebuild\";\n";

fn main() {
    println!("cargo:rerun-if-changed=web/package.json");
    println!("cargo:rerun-if-changed=web/package-lock.json");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KESTREL_WEB_STUB");
    println!("cargo:rerun-if-env-changed=NPM");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let web = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("web");
    match vendor(&web, &out) {
        Ok(()) => {}
        Err(why) if std::env::var("KESTREL_WEB_STUB").as_deref() != Ok("1") => {
            panic!(
                "the browser console needs xterm.js from npm: {why}; scripts/install-prerequisites \
                 installs npm (or build with KESTREL_WEB_STUB=1 for a console without a terminal)"
            )
        }
        Err(why) => {
            println!(
                "cargo:warning=the browser console is built without xterm.js ({why}; KESTREL_WEB_STUB=1)"
            );
            write(&out.join("xterm.js"), STUB_JS.as_bytes());
            write(&out.join("addon-fit.js"), b"// xterm.js is missing: see xterm.js\n");
            write(&out.join("xterm.css"), b"/* xterm.js is missing: see xterm.js */\n");
        }
    }
}

/// `npm ci` in OUT_DIR/npm, then the vendored files copied to OUT_DIR.
fn vendor(web: &Path, out: &Path) -> Result<(), String> {
    let npm_dir = out.join("npm");
    std::fs::create_dir_all(&npm_dir).map_err(|e| format!("creating {}: {e}", npm_dir.display()))?;
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(web.join(file), npm_dir.join(file)).map_err(|e| format!("copying {file}: {e}"))?;
    }
    // `NPM=/path/to/npm` picks another npm (and `NPM=false` tries the build without one).
    let npm = std::env::var_os("NPM").unwrap_or_else(|| "npm".into());
    let output = Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
        .current_dir(&npm_dir)
        .output()
        .map_err(|e| format!("running npm: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(format!("npm ci failed ({}): {last}", output.status));
    }
    for (from, to) in VENDORED {
        let source = npm_dir.join("node_modules").join(from);
        std::fs::copy(&source, out.join(to)).map_err(|e| format!("copying {}: {e}", source.display()))?;
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
