//! A virtio-mmio device restored from saved states a hostile state file could hold: each value the
//! transport or the device never holds is refused with an error naming it, and a property test
//! restores arbitrarily mutated states and drives the registers, asserting that nothing panics.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::tests::{
    driver_init, driver_init_with_rings, memory, read, used_index, wait_for_interrupt, write,
};
use super::*;
use crate::balloon::BalloonState;
use crate::rng::Rng;
use crate::snapshot::DeviceState;
use crate::transport::STATUS_DEVICE_NEEDS_RESET;

/// A running rng's saved state: one request served, its queue of 16 at 0x1000.
fn running_snapshot() -> MmioSnapshot {
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let mut transport = MmioTransport::new(Box::new(Rng::new()), memory.clone()).unwrap();
    driver_init(&mut transport, &mock, 1);
    mock.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x8000, 32, 2, 0))], 0).unwrap();
    write(&mut transport, REG_QUEUE_NOTIFY, 0);
    wait_for_interrupt(&transport);
    let VirtioSnapshot::Mmio(saved) = transport.hold().unwrap() else { unreachable!("an MMIO transport") };
    transport.release();
    saved
}

fn restore(saved: MmioSnapshot) -> Result<MmioTransport, RestoreError> {
    let mut transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
    transport.restore(&VirtioSnapshot::Mmio(saved)).map(|()| transport)
}

/// Restores `saved` changed by `change`, expecting a refusal of a value; returns the field named.
fn refused_field(saved: &MmioSnapshot, change: impl FnOnce(&mut MmioSnapshot)) -> String {
    let mut bad = saved.clone();
    change(&mut bad);
    match restore(bad) {
        Err(RestoreError::Value { source: devices::RestoreError::Value { field, .. }, .. }) => field,
        Err(RestoreError::Value { source: devices::RestoreError::Length { field, .. }, .. }) => field.into(),
        other => panic!("expected a refused value, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_running_device_restores_and_serves_its_queue_on() {
    let saved = running_snapshot();
    assert_eq!(saved.transport.device_queues.len(), 1);
    assert_eq!(saved.transport.device_queues[0].next_avail, 1);
    // The guest's ring as the memory file brings it back, with a second request added since.
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let chain = [RawDescriptor::from(Descriptor::new(0x8000, 8, 2, 0))];
    mock.add_desc_chains(&chain, 0).unwrap();
    mock.add_desc_chains(&chain, 1).unwrap();
    let mut transport = MmioTransport::new(Box::new(Rng::new()), memory.clone()).unwrap();
    transport.restore(&VirtioSnapshot::Mmio(saved)).unwrap();
    assert_eq!(read(&mut transport, REG_STATUS), 1 | 2 | 8 | 4);
    // Entry 0 was served before the snapshot; the restored worker goes on from entry 1.
    wait_for_interrupt(&transport);
    assert_eq!(used_index(&memory, &mock), 2);
    write(&mut transport, REG_STATUS, 0);
}

#[test]
fn queues_outside_guest_memory_or_of_invalid_sizes_are_refused() {
    let saved = running_snapshot();
    let beyond = 0x10_0000u64;
    let field = refused_field(&saved, |s| s.transport.device_queues[0].desc_table = beyond);
    assert_eq!(field, "queue 0 descriptor table");
    let field = refused_field(&saved, |s| s.transport.device_queues[0].used_ring = beyond - 4);
    assert_eq!(field, "queue 0 descriptor table", "the used ring's end is past memory");
    let field = refused_field(&saved, |s| s.transport.queue_registers[0].1[1] = beyond);
    assert_eq!(field, "queue 0 descriptor table");
    let field = refused_field(&saved, |s| s.transport.device_queues[0].avail_ring = 0x3001);
    assert_eq!(field, "queue 0 driver ring");
    for size in [0u16, 3, 512, 65535] {
        let field = refused_field(&saved, |s| s.transport.device_queues[0].size = size);
        assert_eq!(field, "queue 0 size", "running size {size}");
        let field = refused_field(&saved, |s| s.transport.queue_registers[0].0 = size);
        assert_eq!(field, "queue 0 size", "register size {size}");
    }
    let field = refused_field(&saved, |s| s.transport.device_queues[0].max_size = 128);
    assert_eq!(field, "running queue 0 maximum size");
    let field = refused_field(&saved, |s| s.transport.device_queues[0].next_avail = 18);
    assert_eq!(field, "running queue 0 next available entry");
    let field = refused_field(&saved, |s| s.transport.device_queues[0].event_idx_enabled = true);
    assert_eq!(field, "running queue 0 event index");
    let field = refused_field(&saved, |s| s.transport.device_queues.push(s.transport.device_queues[0]));
    assert_eq!(field, "running device's queues");
    let field = refused_field(&saved, |s| s.transport.queue_registers.clear());
    assert_eq!(field, "queues");
}

#[test]
fn registers_the_driver_cannot_leave_are_refused() {
    let saved = running_snapshot();
    let field = refused_field(&saved, |s| s.transport.driver_features |= 1 << 40);
    assert_eq!(field, "driver features");
    let field = refused_field(&saved, |s| s.transport.queue_select = 1);
    assert_eq!(field, "queue select");
    let field = refused_field(&saved, |s| s.transport.status |= 0x100);
    assert_eq!(field, "device status");
    let field = refused_field(&saved, |s| s.transport.status &= !4);
    assert_eq!(field, "device status", "a running device without DRIVER_OK");
    let field = refused_field(&saved, |s| s.transport.driver_features = 0);
    assert_eq!(field, "device status", "FEATURES_OK without VIRTIO_F_VERSION_1");
    let field = refused_field(&saved, |s| s.interrupt_status = 4);
    assert_eq!(field, "interrupt status");
    let field = refused_field(&saved, |s| {
        s.transport.device_state = DeviceState::Balloon(BalloonState::default());
    });
    assert_eq!(field, "device state");
    let mut other_device = saved.clone();
    other_device.transport.device_type = 5;
    assert!(matches!(restore(other_device), Err(RestoreError::DeviceType { .. })));
    // Feature selects and the config generation may hold anything a driver can write.
    let mut odd = saved;
    odd.transport.device_features_select = u32::MAX;
    odd.transport.driver_features_select = 7;
    odd.transport.config_generation = u32::MAX;
    let mut transport = restore(odd).unwrap();
    assert_eq!(read(&mut transport, REG_DEVICE_FEATURES), 0);
    assert_eq!(read(&mut transport, REG_CONFIG_GENERATION), u32::MAX);
    write(&mut transport, REG_STATUS, 0);
}

#[test]
fn a_device_the_transport_already_refused_still_restores() {
    // The guest's rings lie outside memory: the device waits for a reset, its registers hold
    // what the driver wrote, and they are checked again at the next activation.
    let mut transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
    driver_init_with_rings(&mut transport, 0xF000_0000);
    let VirtioSnapshot::Mmio(saved) = transport.hold().unwrap() else { unreachable!("an MMIO transport") };
    assert!(saved.transport.device_queues.is_empty());
    let mut restored = restore(saved).unwrap();
    assert_ne!(read(&mut restored, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
}

/// One change a hostile state file could make to a saved MMIO device.
#[derive(Clone, Debug)]
enum Mutation {
    QueueSelect(u32),
    FeatureSelects(u32, u32),
    DriverFeatures(u64),
    Status(u32),
    InterruptStatus(u32),
    RegisterSize(u16),
    RegisterRing(usize, u64),
    RegisterReady(bool),
    Running(bool),
    RunningSize(u16),
    RunningRing(usize, u64),
    Positions(u16, u16),
    EventIdx(bool),
    ReadyQueue(bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Addresses near the end of the 1 MiB guest memory, and anywhere.
    let address = prop_oneof![0u64..0x11_0000, any::<u64>()];
    prop_oneof![
        any::<u32>().prop_map(Mutation::QueueSelect),
        any::<(u32, u32)>().prop_map(|(a, b)| Mutation::FeatureSelects(a, b)),
        any::<u64>().prop_map(Mutation::DriverFeatures),
        any::<u32>().prop_map(Mutation::Status),
        any::<u32>().prop_map(Mutation::InterruptStatus),
        any::<u16>().prop_map(Mutation::RegisterSize),
        (0usize..3, address.clone()).prop_map(|(ring, a)| Mutation::RegisterRing(ring, a)),
        any::<bool>().prop_map(Mutation::RegisterReady),
        any::<bool>().prop_map(Mutation::Running),
        prop_oneof![Just(1u16), Just(2), Just(16), any::<u16>()].prop_map(Mutation::RunningSize),
        (0usize..3, address).prop_map(|(ring, a)| Mutation::RunningRing(ring, a)),
        any::<(u16, u16)>().prop_map(|(a, u)| Mutation::Positions(a, u)),
        any::<bool>().prop_map(Mutation::EventIdx),
        any::<bool>().prop_map(Mutation::ReadyQueue),
    ]
}

fn apply(saved: &mut MmioSnapshot, mutation: &Mutation) {
    let transport = &mut saved.transport;
    match *mutation {
        Mutation::QueueSelect(select) => transport.queue_select = select,
        Mutation::FeatureSelects(device, driver) => {
            transport.device_features_select = device;
            transport.driver_features_select = driver;
        }
        Mutation::DriverFeatures(features) => transport.driver_features = features,
        Mutation::Status(status) => transport.status = status,
        Mutation::InterruptStatus(status) => saved.interrupt_status = status,
        Mutation::RegisterSize(size) => transport.queue_registers[0].0 = size,
        Mutation::RegisterRing(ring, address) => transport.queue_registers[0].1[ring] = address,
        Mutation::RegisterReady(ready) => transport.queue_registers[0].2 = ready,
        Mutation::Running(false) => transport.device_queues.clear(),
        Mutation::Running(true) => {}
        Mutation::RunningSize(size) => transport.device_queues.iter_mut().for_each(|q| q.size = size),
        Mutation::RunningRing(ring, address) => transport.device_queues.iter_mut().for_each(|q| match ring {
            0 => q.desc_table = address,
            1 => q.avail_ring = address,
            _ => q.used_ring = address,
        }),
        Mutation::Positions(next_avail, next_used) => transport.device_queues.iter_mut().for_each(|q| {
            q.next_avail = next_avail;
            q.next_used = next_used;
        }),
        Mutation::EventIdx(enabled) => {
            transport.device_queues.iter_mut().for_each(|q| q.event_idx_enabled = enabled)
        }
        Mutation::ReadyQueue(ready) => transport.device_queues.iter_mut().for_each(|q| q.ready = ready),
    }
}

#[test]
fn mutated_states_never_make_the_restored_device_panic() {
    let saved = running_snapshot();
    let mut runner = TestRunner::new(Config { cases: 200, failure_persistence: None, ..Config::default() });
    let accesses = prop::collection::vec((0u64..0x110, any::<u32>()), 0..16);
    let case = (prop::collection::vec(mutation(), 1..4), accesses);
    runner
        .run(&case, |(mutations, accesses)| {
            let mut state = saved.clone();
            for mutation in &mutations {
                apply(&mut state, mutation);
            }
            if let Ok(mut transport) = restore(state) {
                for (offset, value) in accesses {
                    // QueueNotify and the status register are driven too: a notification wakes the
                    // restored worker on whatever ring it took; a reset stops it.
                    let offset = offset & !3;
                    read(&mut transport, offset);
                    write(&mut transport, offset, value);
                }
                write(&mut transport, REG_STATUS, 0);
            }
            Ok(())
        })
        .unwrap();
}
