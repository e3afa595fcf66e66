//! The control plane's crates stay free of the engine: the model crate, the API server and the
//! manager daemon link no KVM, no guest-memory crate and no device model, so a client or the
//! manager can use them without the engine. Fails as soon as one of them gains such a dependency, even indirectly.

use std::process::Command;

/// Crates only the engine may depend on.
const ENGINE_CRATES: [&str; 8] =
    ["vmm", "virtio", "devices", "arch", "kvm-ioctls", "kvm-bindings", "vm-memory", "vmm-sys-util"];

/// The names of every crate `package` depends on, directly or not (build dependencies too).
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(output.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    text.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn model_api_and_manager_do_not_depend_on_the_engine() {
    for package in ["model", "api", "manager"] {
        let found = dependencies(package);
        assert!(
            found.iter().any(|name| name == package),
            "cargo tree listed nothing for {package}: {found:?}"
        );
        let engine: Vec<_> = found.iter().filter(|name| ENGINE_CRATES.contains(&name.as_str())).collect();
        assert!(engine.is_empty(), "{package} depends on {engine:?}");
    }
    assert!(dependencies("api").iter().any(|name| name == "model"), "api speaks the model crate");
}
