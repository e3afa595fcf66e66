//! State files are hostile input: a bounded, seeded mutation test. A valid state is mutated
//! (bytes flipped or set, sections cut, padded, dropped, doubled, renamed, re-versioned, or the
//! raw section framing damaged), its CRC fixed up, and decoded; whatever decodes is checked the
//! way a restore checks it and its legacy devices' states are restored into fresh device models
//! (no KVM). Nothing may panic. Fixed seed and case count: the same cases in CI every time.

use std::collections::BTreeMap;
use std::sync::Arc;

use devices::ioapic::Ioapic;
use devices::legacy::{Cmos, Serial, I8042};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::container::{self, SectionWriter, FORMAT_VERSION, HEADER_LEN};
use super::testing::{sample_state, NoInterrupts};
use super::{read_state, write_state, VmState};
use crate::builder::{restored_config, RestoreOptions};
use crate::config::SerialConfig;

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const CASES: usize = 3000;

/// A container around `payload` with a valid header and CRC.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(b"KSTLSNAP");
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn mutate_bytes(bytes: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..=rng.below(4) {
        if bytes.is_empty() {
            bytes.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = 0xff,
            2 => bytes[at] = 0,
            3 => bytes[at] = rng.next() as u8,
            4 => bytes.truncate(at),
            _ => bytes.insert(at, rng.next() as u8),
        }
    }
}

fn mutated(valid: &[u8], rng: &mut Rng) -> Vec<u8> {
    let payload = container::read_payload(&mut &valid[..]).unwrap();
    if rng.below(8) == 0 {
        // The framing itself: section names, versions, lengths.
        let mut raw = payload.clone();
        mutate_bytes(&mut raw, rng);
        return framed(&raw);
    }
    let sections = container::sections(&payload).unwrap();
    let target = rng.below(sections.len());
    let mut writer = SectionWriter::default();
    for (index, section) in sections.iter().enumerate() {
        let (mut name, mut version, mut body) = (section.name, section.version, section.payload.to_vec());
        if index == target {
            match rng.below(10) {
                0 => continue,                                      // dropped
                1 => writer.section(name, version, &body).unwrap(), // doubled
                2 => version = [0, 2, u32::MAX][rng.below(3)],
                3 => name = ["vcpu", "virtio", "cmos", "x"][rng.below(4)],
                _ => mutate_bytes(&mut body, rng),
            }
        }
        writer.section(name, version, &body).unwrap();
    }
    let mut bytes = Vec::new();
    writer.finish(&mut bytes).unwrap();
    bytes
}

/// What a restore does with a decoded state short of KVM: every check of the state against its
/// configuration (as `builder::restore` makes them), then the legacy devices' restores.
fn restore_without_kvm(state: &VmState) {
    let options = RestoreOptions {
        serial: SerialConfig::None,
        track_dirty_pages: false,
        vsock_uds: None,
        drive_paths: BTreeMap::new(),
        tap_names: BTreeMap::new(),
        memory_backend: model::api::MemoryBackendType::File,
        host: Default::default(),
        mmds: None,
    };
    let _ = restored_config(state, &options);
    let _ = Cmos::new(1 << 30, 0).restore(&state.cmos);
    let mut i8042 = I8042::new(EventFd::new(EFD_NONBLOCK).unwrap(), Arc::new(NoInterrupts));
    let _ = i8042.restore(&state.i8042);
    let _ = Serial::restore(Arc::new(NoInterrupts), Box::new(std::io::sink()), &state.serial);
    let _ = Ioapic::new(Arc::new(NoInterrupts)).restore(&state.ioapic);
}

#[test]
fn mutated_state_files_with_valid_crcs_never_panic() {
    let mut valid = Vec::new();
    write_state(&sample_state(), &mut valid).unwrap();
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let (mut decoded, mut refused) = (0, 0);
    for case in 0..CASES {
        let bytes = mutated(&valid, &mut rng);
        let outcome = std::panic::catch_unwind(|| match read_state(&mut bytes.as_slice()) {
            Ok(state) => {
                restore_without_kvm(&state);
                true
            }
            Err(_) => false,
        });
        match outcome {
            Ok(true) => decoded += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("case {case} panicked; its state file: {bytes:02x?}"),
        }
    }
    // Both paths were exercised: mutations that decode reach the device restores.
    assert!(decoded > CASES / 20 && refused > CASES / 20, "{decoded} decoded, {refused} refused");
}
