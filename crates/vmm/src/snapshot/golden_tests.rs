//! The golden state: a state file committed with the code. Today's encoder must produce exactly
//! its bytes from [`sample_state`], and today's decoder must read it (and every older golden file
//! kept beside it). An encoding change that forgets its version bump fails here.

use std::path::{Path, PathBuf};

use super::testing::sample_state;
use super::{read_state, write_state, FORMAT_VERSION};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/snapshot/testdata")
}

const HOW_TO_FIX: &str = "\
The state encoding changed. If you changed what a component saves (a field added, removed,
renamed or retyped in a *Snapshot struct, VcpuState, VmConfig, ...):
  1. bump that component's VERSION in crates/vmm/src/snapshot/components.rs and keep a decoder
     for the old version (see ConfigSection::decode: version 1 gets a default for the new field);
  2. keep the old golden file: rename testdata/state-v<N>.bin to testdata/state-v<N>-<date>.bin
     (every testdata/state-*.bin must still decode);
  3. regenerate the golden file: KESTREL_BLESS=1 cargo test -p vmm golden";

#[test]
fn the_encoder_writes_the_golden_bytes_and_the_decoder_reads_them() {
    let golden_path = testdata().join(format!("state-v{FORMAT_VERSION}.bin"));
    let mut encoded = Vec::new();
    write_state(&sample_state(), &mut encoded).unwrap();
    if std::env::var_os("KESTREL_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&golden_path, &encoded).unwrap();
    }
    let golden = std::fs::read(&golden_path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{HOW_TO_FIX}", golden_path.display()));
    assert!(encoded == golden, "today's encoder does not write {}.\n{HOW_TO_FIX}", golden_path.display());

    let decoded = read_state(&mut golden.as_slice()).unwrap_or_else(|e| {
        panic!("today's decoder cannot read {}: {e}\n{HOW_TO_FIX}", golden_path.display())
    });
    let mut again = Vec::new();
    write_state(&decoded, &mut again).unwrap();
    assert!(again == golden, "the golden state does not decode to what it encodes.\n{HOW_TO_FIX}");
    assert_eq!(decoded.config.virtio, sample_state().config.virtio);
    assert_eq!(decoded.vcpus[1].regs.rip, 0x20_0200);
    assert_eq!(decoded.cmos, sample_state().cmos);
}

#[test]
fn every_older_golden_state_still_decodes() {
    let mut checked = 0;
    for entry in std::fs::read_dir(testdata()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("state-") && name.ends_with(".bin")) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let state = read_state(&mut bytes.as_slice())
            .unwrap_or_else(|e| panic!("{name} no longer decodes: {e}\n{HOW_TO_FIX}"));
        assert_eq!(state.vcpus.len(), usize::from(state.config.vcpus), "{name}");
        checked += 1;
    }
    assert!(checked >= 1, "no golden state in {}", testdata().display());
}

/// The state Kestrel wrote before disks had options restores them as they were: a writeback raw
/// image with one queue.
#[test]
fn a_state_from_before_disk_options_restores_a_raw_writeback_disk() {
    let bytes = std::fs::read(testdata().join("state-v2-2026-12-03.bin")).unwrap();
    let state = read_state(&mut bytes.as_slice()).unwrap();
    let disks: Vec<_> = state
        .config
        .virtio
        .iter()
        .filter_map(|device| match device {
            crate::config::VirtioConfig::Block(disk) => Some(disk.clone()),
            _ => None,
        })
        .collect();
    let expected = crate::config::BlockConfig {
        id: Some("rootfs".into()),
        ..crate::config::BlockConfig::new("/images/rootfs.ext4")
    };
    assert_eq!(disks, [expected]);
    assert_eq!(state.disk_sectors, [2048]);
}

/// The state Kestrel wrote before network cards had rate limiters (config section 3, written by
/// the tree just before they came) restores them limiting nothing, everything else as it was.
#[test]
fn a_state_from_before_net_rate_limiters_restores_unlimited_cards() {
    let bytes = std::fs::read(testdata().join("state-v2-config-v3-2026-12-03.bin")).unwrap();
    let state = read_state(&mut bytes.as_slice()).unwrap();
    // That tree's sample had no card: today's sample without it is what the file holds.
    let mut expected = sample_state().config.virtio;
    expected.retain(|device| !matches!(device, crate::config::VirtioConfig::Net(_)));
    assert_eq!(state.config.virtio, expected);
    assert_eq!(state.disk_sectors, [2048]);
}

/// The state Kestrel wrote before cards could serve MMDS (config section 4) restores its card
/// with its rate limiters and without MMDS.
#[test]
fn a_state_from_before_mmds_restores_cards_without_it() {
    let bytes = std::fs::read(testdata().join("state-v2-config-v4-2026-12-04.bin")).unwrap();
    let state = read_state(&mut bytes.as_slice()).unwrap();
    let expected: Vec<_> = sample_state()
        .config
        .virtio
        .into_iter()
        .map(|device| match device {
            crate::config::VirtioConfig::Net(net) => {
                crate::config::VirtioConfig::Net(crate::config::NetConfig { mmds: None, ..net })
            }
            other => other,
        })
        .collect();
    assert_eq!(state.config.virtio, expected);
    let net = state.config.virtio.iter().find_map(|device| match device {
        crate::config::VirtioConfig::Net(net) => Some(net),
        _ => None,
    });
    assert!(net.expect("the sample has a card").rx_rate_limiter.is_some());
}
