//! Pools and volumes against a real directory and an in-memory store.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use model::disk::ImageFormat;
use model::manager::pool::{PoolDefinition, VolumeCreate, VolumeResize};
use model::manager::ErrorKind;

use super::*;

fn pools() -> (tempfile::TempDir, Pools) {
    let dir = tempfile::tempdir().unwrap();
    let pools = Pools::new(Arc::new(Store::in_memory(&[SCHEMA]).unwrap()), &dir.path().join("state"));
    pools.define(&PoolDefinition { name: "p".into(), path: dir.path().join("pool") }).unwrap();
    (dir, pools)
}

fn nobody(_: &str) -> Vec<String> {
    Vec::new()
}

fn create(
    pools: &Pools,
    name: &str,
    format: ImageFormat,
    size: u64,
) -> ApiResult<model::manager::pool::VolumeInfo> {
    pools.create_volume(
        "p",
        &VolumeCreate { name: name.into(), format, size_bytes: Some(size), clone_of: None },
    )
}

fn clone(pools: &Pools, name: &str, base: &str) -> ApiResult<model::manager::pool::VolumeInfo> {
    let request = VolumeCreate {
        name: name.into(),
        format: ImageFormat::Qcow2,
        size_bytes: None,
        clone_of: Some(base.into()),
    };
    pools.create_volume("p", &request)
}

fn kind<T: std::fmt::Debug>(result: ApiResult<T>) -> ErrorKind {
    result.unwrap_err().kind
}

#[test]
fn define_makes_a_private_directory_and_names_are_unique() {
    let (dir, pools) = pools();
    let mode = std::fs::metadata(dir.path().join("pool")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let again = PoolDefinition { name: "p".into(), path: dir.path().join("other") };
    assert_eq!(kind(pools.define(&again)), ErrorKind::Conflict);
    let same_dir = PoolDefinition { name: "q".into(), path: dir.path().join("pool/.") };
    assert_eq!(kind(pools.define(&same_dir)), ErrorKind::Conflict);
    let relative = PoolDefinition { name: "r".into(), path: "pool".into() };
    assert_eq!(kind(pools.define(&relative)), ErrorKind::Invalid);
    let escape = PoolDefinition { name: "../r".into(), path: dir.path().join("r") };
    assert_eq!(kind(pools.define(&escape)), ErrorKind::Invalid);
    assert_eq!(pools.list().unwrap().len(), 1);
}

#[test]
fn volumes_are_created_cloned_resized_and_deleted() {
    let (dir, pools) = pools();
    let raw = create(&pools, "disk.raw", ImageFormat::Raw, (1 << 30) + 1).unwrap();
    assert_eq!(raw.size_bytes, (1 << 30) + 512, "rounded up to a sector");
    assert!(raw.allocated_bytes < 1 << 20, "a raw volume is sparse: {}", raw.allocated_bytes);
    let base = create(&pools, "base", ImageFormat::Qcow2, 64 << 20).unwrap();
    assert_eq!((base.format, base.size_bytes, base.backing), (ImageFormat::Qcow2, 64 << 20, None));
    assert_eq!(kind(create(&pools, "base", ImageFormat::Raw, 1 << 20)), ErrorKind::Conflict);

    let clone = clone(&pools, "web", "base").unwrap();
    assert_eq!((clone.format, clone.size_bytes), (ImageFormat::Qcow2, 64 << 20));
    assert_eq!(clone.backing.as_deref(), Some("base"), "relative to the pool");
    let error = pools.delete_volume("p", "base", &nobody).unwrap_err();
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert!(error.message.contains("web"), "{}", error.message);

    let grown =
        pools.resize_volume("p", "web", &VolumeResize { size_bytes: 128 << 20, shrink: false }).unwrap();
    assert_eq!(grown.size_bytes, 128 << 20);
    let shrink = VolumeResize { size_bytes: 1 << 20, shrink: false };
    assert_eq!(kind(pools.resize_volume("p", "disk.raw", &shrink)), ErrorKind::Invalid);
    let shrunk = pools.resize_volume("p", "disk.raw", &VolumeResize { shrink: true, ..shrink }).unwrap();
    assert_eq!(shrunk.size_bytes, 1 << 20);

    let names: Vec<_> = pools.volumes("p", &nobody).unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["base", "disk.raw", "web"]);
    pools.delete_volume("p", "web", &nobody).unwrap();
    pools.delete_volume("p", "base", &nobody).unwrap();
    assert!(!dir.path().join("pool/base").exists());
    assert_eq!(kind(pools.volume_info("p", "base", &nobody)), ErrorKind::NotFound);
    let resolved = pools.resolve_volume("p/disk.raw").unwrap();
    assert_eq!(resolved, ResolvedVolume { path: dir.path().join("pool/disk.raw"), format: ImageFormat::Raw });
}

#[test]
fn volumes_in_use_are_not_deleted_resized_or_undefined() {
    let (dir, pools) = pools();
    create(&pools, "disk", ImageFormat::Raw, 1 << 20).unwrap();
    let users = |reference: &str| if reference == "p/disk" { vec!["web".to_owned()] } else { Vec::new() };
    let error = pools.delete_volume("p", "disk", &users).unwrap_err();
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert!(error.message.contains("web"), "{}", error.message);
    let error = pools.undefine("p", &users).unwrap_err();
    assert!(error.message.contains("web"), "{}", error.message);

    // A running VM holds its disk's write lock.
    let vmm = std::fs::OpenOptions::new().read(true).write(true).open(dir.path().join("pool/disk")).unwrap();
    storage::lock::lock(&vmm, storage::lock::Access::Write).unwrap();
    let grow = VolumeResize { size_bytes: 2 << 20, shrink: false };
    assert_eq!(kind(pools.resize_volume("p", "disk", &grow)), ErrorKind::Conflict);
    assert_eq!(kind(pools.delete_volume("p", "disk", &nobody)), ErrorKind::Conflict);
    drop(vmm);
    assert_eq!(pools.info("p").unwrap().volumes, 1);
    pools.delete_volume("p", "disk", &nobody).unwrap();
    pools.undefine("p", &users).unwrap();
    assert_eq!(kind(pools.info("p")), ErrorKind::NotFound);
}

#[test]
fn hostile_names_and_planted_symlinks_are_refused() {
    let (dir, pools) = pools();
    let outside = dir.path().join("secret");
    std::fs::write(&outside, b"do not touch").unwrap();
    for bad in ["../secret", "..", "a/b", ".hidden", "-rf"] {
        assert_eq!(kind(create(&pools, bad, ImageFormat::Raw, 1 << 20)), ErrorKind::Invalid, "{bad}");
        assert_eq!(kind(pools.volume_info("p", bad, &nobody)), ErrorKind::Invalid, "{bad}");
        assert_eq!(kind(pools.delete_volume("p", bad, &nobody)), ErrorKind::Invalid, "{bad}");
    }
    assert_eq!(kind(pools.resolve_volume("p/../secret")), ErrorKind::Invalid);
    assert_eq!(kind(pools.resolve_volume("../p/secret")), ErrorKind::Invalid);

    // A volume replaced by a symlink to a host file is refused, not followed.
    create(&pools, "disk", ImageFormat::Raw, 1 << 20).unwrap();
    std::fs::remove_file(dir.path().join("pool/disk")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("pool/disk")).unwrap();
    let error = pools.volume_info("p", "disk", &nobody).unwrap_err();
    assert!(error.message.contains("symbolic link"), "{}", error.message);
    assert_eq!(kind(pools.resolve_volume("p/disk")), ErrorKind::Invalid);
    let grow = VolumeResize { size_bytes: 2 << 20, shrink: false };
    assert_eq!(kind(pools.resize_volume("p", "disk", &grow)), ErrorKind::Invalid);
    assert_eq!(kind(clone(&pools, "c", "disk")), ErrorKind::Invalid);
    // Deleting it removes the link only.
    pools.delete_volume("p", "disk", &nobody).unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"do not touch");
    assert!(std::fs::symlink_metadata(dir.path().join("pool/disk")).is_err());
}

#[test]
fn refresh_takes_in_files_put_there_by_hand_and_skips_hostile_ones() {
    let (dir, pools) = pools();
    let pool = dir.path().join("pool");
    std::fs::write(pool.join("copied.img"), vec![7u8; 4096]).unwrap();
    let qcow2 = |path: &std::path::Path, backing: Option<(&str, storage::image::Format)>| {
        let options = storage::image::CreateOptions {
            format: storage::image::Format::Qcow2,
            size: Some(1 << 20),
            backing: backing.map(|(name, format)| (name.to_owned(), format)),
            cluster_size: None,
            preallocation: storage::image::Preallocation::Off,
        };
        storage::image::create(path, &options).unwrap();
    };
    qcow2(&pool.join("copied.qcow2"), None);
    qcow2(&pool.join("clone.qcow2"), Some(("copied.img", storage::image::Format::Raw)));
    // A header naming a host file as its backing file.
    std::fs::write(dir.path().join("passwd"), b"root:x:0:0").unwrap();
    qcow2(&pool.join("evil.qcow2"), Some(("../passwd", storage::image::Format::Raw)));
    std::os::unix::fs::symlink("/etc/passwd", pool.join("link")).unwrap();
    std::fs::write(pool.join(format!("{}1-x", dir::TEMP_PREFIX)), b"stale").unwrap();

    let report = pools.refresh("p").unwrap();
    assert_eq!(report.added, ["clone.qcow2", "copied.img", "copied.qcow2"]);
    let skipped: Vec<_> = report.skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(skipped, ["evil.qcow2", "link"]);
    assert!(report.skipped[0].reason.contains("not a volume of this pool"), "{:?}", report.skipped);
    if std::process::id() != 1 {
        assert!(!pool.join(format!("{}1-x", dir::TEMP_PREFIX)).exists(), "a stale temporary file stays");
    }
    // A new daemon sweeps them too.
    std::fs::write(pool.join(format!("{}1-y", dir::TEMP_PREFIX)), b"stale").unwrap();
    let again = Pools::new(pools.store.clone(), &pools.state_dir);
    assert!(
        pool.join(format!("{}1-y", dir::TEMP_PREFIX)).exists(),
        "swept before the daemon holds its socket"
    );
    again.after_bind();
    if std::process::id() != 1 {
        assert!(!pool.join(format!("{}1-y", dir::TEMP_PREFIX)).exists(), "a stale temporary file stays");
    }
    assert_eq!(pools.resolve_volume("p/copied.qcow2").unwrap().format, ImageFormat::Qcow2);
    assert_eq!(pools.resolve_volume("p/copied.img").unwrap().format, ImageFormat::Raw);
    assert_eq!(kind(pools.resolve_volume("p/evil.qcow2")), ErrorKind::NotFound);

    std::fs::remove_file(pool.join("copied.qcow2")).unwrap();
    let report = pools.refresh("p").unwrap();
    assert_eq!(report.removed, ["copied.qcow2"]);
    assert!(report.added.is_empty());
}

#[test]
fn backing_names_must_be_volumes_of_the_pool_with_their_format() {
    let known = |name: &str| (name == "base").then_some(Some(ImageFormat::Qcow2));
    assert!(volumes::check_backing("base", Some("qcow2"), known).is_ok());
    for (backing, format) in [
        ("/etc/passwd", Some("raw")),
        ("../base", Some("qcow2")),
        ("other", Some("qcow2")),
        ("base", None),
        ("base", Some("raw")),
    ] {
        assert!(volumes::check_backing(backing, format, known).is_err(), "{backing} {format:?}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]
    /// Whatever a hostile header names, an accepted backing file is one plain name in the pool.
    #[test]
    fn an_accepted_backing_name_is_a_plain_file_of_the_pool(name in "\\PC{0,40}", format in "(raw|qcow2|\\PC{0,8})") {
        let any = |_: &str| Some(None);
        if volumes::check_backing(&name, Some(&format), any).is_ok() {
            let components: Vec<_> = std::path::Path::new(&name).components().collect();
            proptest::prop_assert_eq!(components.len(), 1);
            proptest::prop_assert!(matches!(components[0], std::path::Component::Normal(_)));
            proptest::prop_assert!(!name.starts_with('.'));
            proptest::prop_assert!(format == "raw" || format == "qcow2");
        }
    }
}

#[test]
fn system_and_state_directories_are_not_pools() {
    let (dir, pools) = pools();
    for (name, path) in [("a", "/etc/cron.d"), ("b", "/etc"), ("c", "/"), ("d", "/lib64/x"), ("e", "/run/k")]
    {
        let definition = PoolDefinition { name: name.into(), path: path.into() };
        let error = pools.define(&definition).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Invalid, "{path}: {}", error.message);
        assert!(error.message.contains("cannot be a pool's directory"), "{}", error.message);
    }
    assert!(!std::path::Path::new("/run/k").exists());
    // The state directory is refused but for its pools/ folder.
    let state_dir = dir.path().join("state");
    let state = PoolDefinition { name: "s".into(), path: state_dir.join("vms") };
    assert_eq!(kind(pools.define(&state)), ErrorKind::Invalid);
    assert!(!state_dir.join("vms").exists(), "nothing created");
    let sneaky = PoolDefinition { name: "t".into(), path: state_dir.join("pools/../vms") };
    assert_eq!(kind(pools.define(&sneaky)), ErrorKind::Invalid);
    pools.define(&PoolDefinition { name: "u".into(), path: state_dir.join("pools/u") }).unwrap();
}

#[test]
fn a_pool_directory_others_may_write_is_refused() {
    let (dir, pools) = pools();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let error = pools.define(&PoolDefinition { name: "o".into(), path: open.clone() }).unwrap_err();
    assert_eq!(error.kind, ErrorKind::Invalid);
    assert!(error.message.contains("writable by its owner only"), "{}", error.message);
    // A pool whose directory became writable by others since is refused at each use.
    let pool = dir.path().join("pool");
    std::fs::set_permissions(&pool, std::fs::Permissions::from_mode(0o775)).unwrap();
    let error = create(&pools, "v", ImageFormat::Raw, 1 << 20).unwrap_err();
    assert!(error.message.contains("writable by its owner only"), "{}", error.message);
    std::fs::set_permissions(&pool, std::fs::Permissions::from_mode(0o700)).unwrap();
    create(&pools, "v", ImageFormat::Raw, 1 << 20).unwrap();
}

#[test]
fn a_raw_volume_stays_raw_across_undefine_and_define() {
    let (dir, pools) = pools();
    create(&pools, "disk", ImageFormat::Raw, 1 << 20).unwrap();
    create(&pools, "other", ImageFormat::Qcow2, 1 << 20).unwrap();
    // The guest writes a qcow2 header (backed by another volume) into its raw disk.
    let pool = dir.path().join("pool");
    let qcow2_header = std::fs::read(pool.join("other")).unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).open(pool.join("disk")).unwrap();
        file.write_all(&qcow2_header[..4096.min(qcow2_header.len())]).unwrap();
    }
    pools.undefine("p", &nobody).unwrap();
    pools.define(&PoolDefinition { name: "p2".into(), path: pool.clone() }).unwrap();
    assert_eq!(pools.resolve_volume("p2/disk").unwrap().format, ImageFormat::Raw);
    assert_eq!(pools.resolve_volume("p2/other").unwrap().format, ImageFormat::Qcow2);
}

#[test]
fn a_base_with_clones_is_not_written_by_a_vm() {
    let (_dir, pools) = pools();
    create(&pools, "base", ImageFormat::Raw, 1 << 20).unwrap();
    pools.resolve_volume_for("p/base", true).unwrap();
    clone(&pools, "c1", "base").unwrap();
    let error = pools.resolve_volume_for("p/base", true).unwrap_err();
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert!(error.message.contains("c1") && error.message.contains("read-only"), "{}", error.message);
    assert_eq!(pools.resolve_volume_for("p/base", false).unwrap().format, ImageFormat::Raw);
    pools.resolve_volume_for("p/c1", true).unwrap();
}
