//! What each section of the state holds, and in which version: every component (the
//! configuration, the memory layout, the clock, each vCPU, the IOAPIC, each legacy device, each
//! virtio device) has its own section name, its own `VERSION` and a decoder that matches on the
//! version it finds. A component whose encoding changes gets a new version and keeps the decoder
//! of the old one, so a newer Kestrel restores an older state; a section this build does not
//! know, or from a newer version than it knows, is refused by name.
//!
//! The payload of each section is postcard; [`super::container`] frames the sections.

use std::io::{Read, Write};

use devices::ioapic::IoapicSnapshot;
use devices::legacy::{CmosSnapshot, I8042Snapshot, SerialSnapshot};
use kvm_bindings::kvm_clock_data;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use virtio::snapshot::VirtioSnapshot;

use super::container::{self, Section, SectionWriter};
use super::legacy_config::{VmConfigV2, VmConfigV3, VmConfigV4};
use super::memory_file::SavedRegion;
use super::vcpu_state::VcpuState;
use super::{SnapshotError, VmState};
use crate::config::VmConfig;

/// One component's section: its name in the state, the version this build writes, and how it
/// reads each version it knows.
pub(crate) trait Component: Sized {
    /// The section's name.
    const NAME: &'static str;
    /// The version this build writes; it reads every version from 1 up to this one.
    const VERSION: u32;
    /// The current encoding.
    fn encode(&self) -> Result<Vec<u8>, SnapshotError>;
    /// Reads a section of `version` (any this build knows).
    fn decode(version: u32, payload: &[u8]) -> Result<Self, SnapshotError>;
}

fn encode<T: Serialize>(name: &str, value: &T) -> Result<Vec<u8>, SnapshotError> {
    postcard::to_allocvec(value).map_err(|e| SnapshotError::Encode(format!("the {name} section: {e}")))
}

/// Decodes a whole section: bytes left over mean it was not what its version says.
fn decode_exact<T: DeserializeOwned>(name: &str, payload: &[u8]) -> Result<T, SnapshotError> {
    let (value, rest) = postcard::take_from_bytes(payload)
        .map_err(|e| SnapshotError::Corrupt(format!("cannot decode its {name} section: {e}")))?;
    if !rest.is_empty() {
        return Err(SnapshotError::Corrupt(format!(
            "{} bytes follow its {name} section's contents",
            rest.len()
        )));
    }
    Ok(value)
}

fn unsupported(name: &str, found: u32, supported: u32) -> SnapshotError {
    SnapshotError::ComponentVersion { component: name.to_owned(), found, supported }
}

/// A component that has had one encoding so far.
macro_rules! first_version {
    ($type:ty, $name:literal) => {
        impl Component for $type {
            const NAME: &'static str = $name;
            const VERSION: u32 = 1;
            fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
                encode(Self::NAME, self)
            }
            fn decode(version: u32, payload: &[u8]) -> Result<Self, SnapshotError> {
                match version {
                    1 => decode_exact(Self::NAME, payload),
                    found => Err(unsupported(Self::NAME, found, Self::VERSION)),
                }
            }
        }
    };
}

/// The memory layout: where each region of guest RAM lies in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemoryLayout(pub Vec<SavedRegion>);

/// The KVM clock (kvmclock's base).
#[derive(Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Clock(pub kvm_clock_data);

first_version!(MemoryLayout, "memory");
first_version!(Clock, "clock");
first_version!(VcpuState, "vcpu");
first_version!(IoapicSnapshot, "ioapic");
first_version!(SerialSnapshot, "serial");
first_version!(CmosSnapshot, "cmos");
first_version!(I8042Snapshot, "i8042");
first_version!(VirtioSnapshot, "virtio");

/// The configuration the VM was built from, and what the guest saw of its host files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ConfigSection {
    pub config: VmConfig,
    /// Each disk's capacity in 512-byte sectors when the state was saved, in the order of the
    /// configuration's disks; empty in a version 1 section, which did not record it.
    pub disk_sectors: Vec<u64>,
}

impl Component for ConfigSection {
    const NAME: &'static str = "config";
    /// 1: the configuration alone. 2: and the disks' capacities. 3: disks have a format, a cache
    /// mode, a backing-file rule, queues, an I/O engine and a rate limiter. 4: network cards have
    /// receive and transmit rate limiters. (Rate limiters are saved as configured; their budgets
    /// are not, so a restored device starts with full buckets.) 5: network cards may serve MMDS
    /// (address, version, IMDS mode; the store is not saved, as in Firecracker).
    const VERSION: u32 = 5;

    fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        encode(Self::NAME, self)
    }

    fn decode(version: u32, payload: &[u8]) -> Result<Self, SnapshotError> {
        match version {
            1 => {
                let config: VmConfigV2 = decode_exact(Self::NAME, payload)?;
                Ok(ConfigSection { config: config.into(), disk_sectors: Vec::new() })
            }
            2 => {
                let (config, disk_sectors): (VmConfigV2, Vec<u64>) = decode_exact(Self::NAME, payload)?;
                Ok(ConfigSection { config: config.into(), disk_sectors })
            }
            3 => {
                let (config, disk_sectors): (VmConfigV3, Vec<u64>) = decode_exact(Self::NAME, payload)?;
                Ok(ConfigSection { config: config.into(), disk_sectors })
            }
            4 => {
                let (config, disk_sectors): (VmConfigV4, Vec<u64>) = decode_exact(Self::NAME, payload)?;
                Ok(ConfigSection { config: config.into(), disk_sectors })
            }
            5 => decode_exact(Self::NAME, payload),
            found => Err(unsupported(Self::NAME, found, Self::VERSION)),
        }
    }
}

fn put<T: Component>(writer: &mut SectionWriter, component: &T) -> Result<(), SnapshotError> {
    writer.section(T::NAME, T::VERSION, &component.encode()?)
}

/// Writes `state` to `output` (a file, a socket, a `Vec`): one section per component, in a fixed
/// order. Returns the number of bytes written.
pub fn write_state(state: &VmState, output: &mut (impl Write + ?Sized)) -> Result<u64, SnapshotError> {
    let mut writer = SectionWriter::default();
    let config = ConfigSection { config: state.config.clone(), disk_sectors: state.disk_sectors.clone() };
    put(&mut writer, &config)?;
    put(&mut writer, &MemoryLayout(state.memory.clone()))?;
    put(&mut writer, &Clock(state.clock))?;
    for vcpu in &state.vcpus {
        put(&mut writer, vcpu)?;
    }
    put(&mut writer, &state.ioapic)?;
    put(&mut writer, &state.serial)?;
    put(&mut writer, &state.cmos)?;
    put(&mut writer, &state.i8042)?;
    for device in &state.virtio {
        put(&mut writer, device)?;
    }
    writer.finish(output)
}

/// Reads one state from `input`, bounded (see [`container`]): exactly the container's bytes are
/// read, so a stream may carry more after it.
pub fn read_state(input: &mut (impl Read + ?Sized)) -> Result<VmState, SnapshotError> {
    decode_payload(&container::read_payload(input)?)
}

/// A component that appears once.
fn once<T: Component>(slot: &mut Option<T>, section: &Section<'_>) -> Result<(), SnapshotError> {
    if slot.is_some() {
        return Err(SnapshotError::Corrupt(format!("it has two {} sections", T::NAME)));
    }
    *slot = Some(T::decode(section.version, section.payload)?);
    Ok(())
}

fn required<T: Component>(slot: Option<T>) -> Result<T, SnapshotError> {
    slot.ok_or(SnapshotError::MissingComponent(T::NAME))
}

/// The most virtio devices a state may list: far more than either transport can place.
const MAX_VIRTIO_DEVICES: usize = 256;

fn decode_payload(payload: &[u8]) -> Result<VmState, SnapshotError> {
    let mut config: Option<ConfigSection> = None;
    let mut memory: Option<MemoryLayout> = None;
    let mut clock: Option<Clock> = None;
    let mut ioapic: Option<IoapicSnapshot> = None;
    let mut serial: Option<SerialSnapshot> = None;
    let mut cmos: Option<CmosSnapshot> = None;
    let mut i8042: Option<I8042Snapshot> = None;
    let mut vcpus = Vec::new();
    let mut virtio = Vec::new();
    for section in container::sections(payload)? {
        match section.name {
            ConfigSection::NAME => once(&mut config, &section)?,
            MemoryLayout::NAME => once(&mut memory, &section)?,
            Clock::NAME => once(&mut clock, &section)?,
            IoapicSnapshot::NAME => once(&mut ioapic, &section)?,
            SerialSnapshot::NAME => once(&mut serial, &section)?,
            CmosSnapshot::NAME => once(&mut cmos, &section)?,
            I8042Snapshot::NAME => once(&mut i8042, &section)?,
            VcpuState::NAME => {
                if vcpus.len() >= usize::from(arch::layout::MAX_VCPUS) {
                    return Err(SnapshotError::Invalid("vCPU count (more than Kestrel supports)"));
                }
                vcpus.push(VcpuState::decode(section.version, section.payload)?);
            }
            VirtioSnapshot::NAME => {
                if virtio.len() >= MAX_VIRTIO_DEVICES {
                    return Err(SnapshotError::Invalid("virtio device count"));
                }
                virtio.push(VirtioSnapshot::decode(section.version, section.payload)?);
            }
            other => return Err(SnapshotError::UnknownComponent(other.to_owned())),
        }
    }
    let ConfigSection { config, disk_sectors } = required(config)?;
    Ok(VmState {
        config,
        disk_sectors,
        memory: required(memory)?.0,
        clock: required(clock)?.0,
        vcpus,
        ioapic: required(ioapic)?,
        serial: required(serial)?,
        cmos: required(cmos)?,
        i8042: required(i8042)?,
        virtio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BlockConfig, VirtioConfig};
    use crate::snapshot::testing::sample_state;

    fn encoded() -> Vec<u8> {
        let mut bytes = Vec::new();
        write_state(&sample_state(), &mut bytes).unwrap();
        bytes
    }

    /// Re-frames the sections of `bytes` through `edit`, with a valid header and CRC.
    fn reframed(bytes: &[u8], edit: impl Fn(&Section<'_>, &mut SectionWriter)) -> Vec<u8> {
        let payload = container::read_payload(&mut &bytes[..]).unwrap();
        let mut writer = SectionWriter::default();
        for section in container::sections(&payload).unwrap() {
            edit(&section, &mut writer);
        }
        let mut out = Vec::new();
        writer.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn a_state_round_trips_through_a_byte_stream() {
        let bytes = encoded();
        let mut stream = bytes.clone();
        stream.extend_from_slice(b"what follows on the stream");
        let mut input = stream.as_slice();
        let state = read_state(&mut input).unwrap();
        assert_eq!(input, b"what follows on the stream", "the reader stops at the state's end");
        assert_eq!(state.vcpus.len(), 2);
        assert_eq!(state.disk_sectors, [2048]);
        assert_eq!(state.vcpus[1].regs.rip, 0x20_0200);
        let mut again = Vec::new();
        write_state(&state, &mut again).unwrap();
        assert_eq!(again, bytes, "what is read writes back the same bytes");
    }

    /// Version 1 and 2 config sections (disks without options; v1 without disk capacities) from
    /// an older Kestrel still read, each disk a writeback raw image; a version 2 cmos section is
    /// refused by name.
    #[test]
    fn older_config_sections_are_upgraded_and_a_newer_section_refused() {
        let bytes = encoded();
        for version in [1, 2] {
            let older = reframed(&bytes, |section, writer| {
                if section.name == "config" {
                    let current: ConfigSection = decode_exact("config", section.payload).unwrap();
                    let old = super::super::legacy_config::downgrade(&current.config);
                    let payload = match version {
                        1 => postcard::to_allocvec(&old).unwrap(),
                        _ => postcard::to_allocvec(&(old, &current.disk_sectors)).unwrap(),
                    };
                    writer.section("config", version, &payload).unwrap();
                } else {
                    writer.section(section.name, section.version, section.payload).unwrap();
                }
            });
            let state = read_state(&mut older.as_slice()).unwrap();
            assert_eq!(state.disk_sectors.is_empty(), version == 1);
            assert_eq!(state.config.vcpus, 2);
            let sample = sample_state().config.virtio;
            let disks: Vec<_> = state
                .config
                .virtio
                .iter()
                .zip(&sample)
                .filter_map(|pair| match pair {
                    (VirtioConfig::Block(old), VirtioConfig::Block(now)) => Some((old.clone(), now.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(disks.len(), 1);
            let (old, now) = &disks[0];
            assert_eq!(
                *old,
                BlockConfig { read_only: now.read_only, id: now.id.clone(), ..BlockConfig::new(&now.path) }
            );
        }

        let newer = reframed(&bytes, |section, writer| {
            let version = if section.name == "cmos" { 2 } else { section.version };
            writer.section(section.name, version, section.payload).unwrap();
        });
        let error = read_state(&mut newer.as_slice()).err().unwrap();
        assert!(
            matches!(&error, SnapshotError::ComponentVersion { component, found: 2, supported: 1 } if component == "cmos"),
            "{error}"
        );
        assert!(error.to_string().contains("cmos"), "{error}");
    }

    /// A version 3 config section (cards without rate limiters) reads as cards that limit
    /// nothing, with their tap, MAC and ID kept; the disks keep their options.
    #[test]
    fn a_version_3_config_section_gives_cards_no_rate_limiters() {
        let bytes = encoded();
        let older = reframed(&bytes, |section, writer| {
            if section.name == "config" {
                let current: ConfigSection = decode_exact("config", section.payload).unwrap();
                let old = super::super::legacy_config::downgrade_v3(&current.config);
                let payload = postcard::to_allocvec(&(old, &current.disk_sectors)).unwrap();
                writer.section("config", 3, &payload).unwrap();
            } else {
                writer.section(section.name, section.version, section.payload).unwrap();
            }
        });
        let state = read_state(&mut older.as_slice()).unwrap();
        let expected: Vec<VirtioConfig> = sample_state()
            .config
            .virtio
            .into_iter()
            .map(|device| match device {
                VirtioConfig::Net(net) => VirtioConfig::Net(crate::config::NetConfig {
                    rx_rate_limiter: None,
                    tx_rate_limiter: None,
                    mmds: None,
                    ..net
                }),
                other => other,
            })
            .collect();
        assert!(expected
            .iter()
            .any(|d| matches!(d, VirtioConfig::Net(net) if net.tap.as_deref() == Some("tap0"))));
        assert_eq!(state.config.virtio, expected);
        assert_eq!(state.disk_sectors, [2048]);
    }

    /// A version 4 config section (cards without MMDS) reads as cards that do not serve it,
    /// with their rate limiters kept.
    #[test]
    fn a_version_4_config_section_gives_cards_no_mmds() {
        let bytes = encoded();
        assert!(sample_state()
            .config
            .virtio
            .iter()
            .any(|d| matches!(d, VirtioConfig::Net(net) if net.mmds.is_some())));
        let older = reframed(&bytes, |section, writer| {
            if section.name == "config" {
                let current: ConfigSection = decode_exact("config", section.payload).unwrap();
                let old = super::super::legacy_config::downgrade_v4(&current.config);
                let payload = postcard::to_allocvec(&(old, &current.disk_sectors)).unwrap();
                writer.section("config", 4, &payload).unwrap();
            } else {
                writer.section(section.name, section.version, section.payload).unwrap();
            }
        });
        let state = read_state(&mut older.as_slice()).unwrap();
        let expected: Vec<VirtioConfig> = sample_state()
            .config
            .virtio
            .into_iter()
            .map(|device| match device {
                VirtioConfig::Net(net) => VirtioConfig::Net(crate::config::NetConfig { mmds: None, ..net }),
                other => other,
            })
            .collect();
        assert_eq!(state.config.virtio, expected);
    }

    #[test]
    fn unknown_missing_and_doubled_sections_are_refused() {
        let bytes = encoded();
        let unknown = reframed(&bytes, |section, writer| {
            writer.section(section.name, section.version, section.payload).unwrap();
            if section.name == "clock" {
                writer.section("gpu", 1, b"").unwrap();
            }
        });
        let error = read_state(&mut unknown.as_slice()).err().unwrap();
        assert!(matches!(&error, SnapshotError::UnknownComponent(name) if name == "gpu"), "{error}");

        let missing = reframed(&bytes, |section, writer| {
            if section.name != "i8042" {
                writer.section(section.name, section.version, section.payload).unwrap();
            }
        });
        let error = read_state(&mut missing.as_slice()).err().unwrap();
        assert!(matches!(error, SnapshotError::MissingComponent("i8042")), "{error}");

        let doubled = reframed(&bytes, |section, writer| {
            writer.section(section.name, section.version, section.payload).unwrap();
            if section.name == "serial" {
                writer.section(section.name, section.version, section.payload).unwrap();
            }
        });
        assert!(matches!(read_state(&mut doubled.as_slice()), Err(SnapshotError::Corrupt(_))));

        let padded = reframed(&bytes, |section, writer| {
            let mut payload = section.payload.to_vec();
            if section.name == "cmos" {
                payload.push(0);
            }
            writer.section(section.name, section.version, &payload).unwrap();
        });
        assert!(matches!(read_state(&mut padded.as_slice()), Err(SnapshotError::Corrupt(_))));
    }
}
