//! The virtio-pci transport driven the way Linux's virtio_pci_modern driver drives it, with
//! recording stand-ins for the VMM's MSI-X delivery and ioeventfd binding.

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use devices::ioapic::MsiMessage;
use devices::pci::config_space::{CAPABILITIES_POINTER, COMMAND, COMMAND_MEMORY_SPACE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::common_config::{
    CONFIG_GENERATION, CONFIG_MSIX_VECTOR, DEVICE_FEATURE, DEVICE_FEATURE_SELECT, DEVICE_STATUS,
    DRIVER_FEATURE, DRIVER_FEATURE_SELECT, NUM_QUEUES, QUEUE_DESC, QUEUE_DEVICE, QUEUE_DRIVER, QUEUE_ENABLE,
    QUEUE_MSIX_VECTOR, QUEUE_NOTIFY_OFF, QUEUE_SELECT, QUEUE_SIZE,
};
use super::layout::{COMMON_CONFIG, MSIX_PBA};
use super::*;
use crate::device::{Interrupt, InterruptCause};
use crate::rng::Rng;
use crate::transport::STATUS_FEATURES_OK;

/// What reached the VMM side, in order.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Route(u16, MsiMessage),
    Trigger(u16),
    Bind(u64),
    Unbind(u64),
}

/// Records deliveries and bindings on a channel, so a test can wait for the worker thread's
/// interrupt without sleeping.
struct Recorder(Mutex<Sender<Event>>);

impl Recorder {
    fn send(&self, event: Event) {
        let _ = self.0.lock().unwrap().send(event);
    }
}

impl MsixDelivery for Recorder {
    fn set_route(&self, vector: u16, message: MsiMessage) -> io::Result<()> {
        self.send(Event::Route(vector, message));
        Ok(())
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        self.send(Event::Trigger(vector));
        Ok(())
    }
}

impl NotifyBinder for Recorder {
    fn bind(&self, _event: &EventFd, address: u64) -> io::Result<()> {
        self.send(Event::Bind(address));
        Ok(())
    }

    fn unbind(&self, _event: &EventFd, address: u64) -> io::Result<()> {
        self.send(Event::Unbind(address));
        Ok(())
    }
}

const MESSAGE: MsiMessage = MsiMessage { address_lo: 0xfee0_0000, address_hi: 0, data: 0x4041 };
const BAR: u32 = 0xe000_0000;

fn memory() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn transport(memory: &GuestRam) -> (PciTransport, Receiver<Event>) {
    let (sender, receiver) = mpsc::channel();
    let recorder = Arc::new(Recorder(Mutex::new(sender)));
    let transport =
        PciTransport::new(Box::new(Rng::new()), memory.clone(), BAR, recorder.clone(), recorder).unwrap();
    (transport, receiver)
}

fn read(t: &mut PciTransport, offset: u64, len: usize) -> u64 {
    let mut data = [0u8; 8];
    t.read_bar(0, offset, &mut data[..len]);
    u64::from_le_bytes(data)
}

fn write(t: &mut PciTransport, offset: u64, len: usize, value: u64) {
    t.write_bar(0, offset, &value.to_le_bytes()[..len]);
}

fn config_byte(t: &mut PciTransport, offset: usize) -> u8 {
    let mut byte = [0u8];
    t.read_config(offset, &mut byte);
    byte[0]
}

/// The capabilities as (offset, ID), following the list from the header.
fn capabilities(t: &mut PciTransport) -> Vec<(usize, u8)> {
    let mut found = Vec::new();
    let mut at = usize::from(config_byte(t, CAPABILITIES_POINTER));
    while at != 0 && found.len() < 16 {
        found.push((at, config_byte(t, at)));
        at = usize::from(config_byte(t, at + 1));
    }
    found
}

fn msix_capability(t: &mut PciTransport) -> usize {
    capabilities(t).into_iter().find(|&(_, id)| id == 0x11).expect("MSI-X capability").0
}

/// Enables MSI-X and programs `vector` with MESSAGE, unmasked.
fn enable_msix(t: &mut PciTransport, vector: u64) {
    let control = msix_capability(t) + 2;
    t.write_config(control, &0x8000u16.to_le_bytes());
    write(t, MSIX_TABLE + 16 * vector, 4, u64::from(MESSAGE.address_lo));
    write(t, MSIX_TABLE + 16 * vector + 8, 4, u64::from(MESSAGE.data));
    write(t, MSIX_TABLE + 16 * vector + 12, 4, 0);
}

/// Feature negotiation and queue 0 setup as virtio_pci_modern does it, ending with DRIVER_OK.
fn driver_init(t: &mut PciTransport, mock: &MockSplitQueue<GuestRam>, queue_vector: u16) {
    write(t, DEVICE_STATUS, 1, 1);
    write(t, DEVICE_STATUS, 1, 1 | 2);
    write(t, DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(read(t, DEVICE_FEATURE, 4) & 1, 1, "VIRTIO_F_VERSION_1 offered");
    write(t, DRIVER_FEATURE_SELECT, 4, 1);
    write(t, DRIVER_FEATURE, 4, 1);
    write(t, DEVICE_STATUS, 1, 1 | 2 | 8);
    assert_eq!(read(t, DEVICE_STATUS, 1), 1 | 2 | 8);
    write(t, QUEUE_SELECT, 2, 0);
    assert_eq!(read(t, QUEUE_SIZE, 2), 256);
    write(t, QUEUE_SIZE, 2, 16);
    // 64-bit addresses as two halves, like vp_iowrite64_twopart.
    for (field, address) in [
        (QUEUE_DESC, mock.desc_table_addr()),
        (QUEUE_DRIVER, mock.avail_addr()),
        (QUEUE_DEVICE, mock.used_addr()),
    ] {
        write(t, field, 4, address.0 & 0xffff_ffff);
        write(t, field + 4, 4, address.0 >> 32);
        assert_eq!(read(t, field, 8), address.0);
    }
    assert_eq!(read(t, QUEUE_NOTIFY_OFF, 2), 0);
    write(t, QUEUE_MSIX_VECTOR, 2, u64::from(queue_vector));
    write(t, QUEUE_ENABLE, 2, 1);
    write(t, DEVICE_STATUS, 1, 1 | 2 | 8 | 4);
}

/// Puts one 32-byte writable buffer on the queue and notifies through BAR 0.
fn request_entropy(t: &mut PciTransport, mock: &MockSplitQueue<GuestRam>) {
    let buffer = RawDescriptor::from(Descriptor::new(0x8000, 32, 2, 0));
    mock.add_desc_chains(&[buffer], 0).unwrap();
    write(t, NOTIFY, 2, 0);
}

/// Polls `condition` (state the worker thread changes) for up to 10 s.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::yield_now();
    }
}

fn next_event(events: &Receiver<Event>) -> Event {
    events.recv_timeout(Duration::from_secs(10)).expect("no event within 10 s")
}

#[test]
fn identifies_itself_with_its_capabilities() {
    let (mut t, _) = transport(&memory());
    let mut header = [0u8; 0x30];
    t.read_config(0, &mut header);
    assert_eq!(&header[..4], &[0xf4, 0x1a, 0x44, 0x10], "1AF4:1044 (0x1040 + rng)");
    assert_eq!(header[8], 1, "revision 1: modern only");
    assert_eq!(&header[0x2c..0x30], &[0xf4, 0x1a, 0x44, 0x10], "subsystem IDs");
    assert_eq!(u32::from_le_bytes(header[0x10..0x14].try_into().unwrap()), BAR);

    let caps = capabilities(&mut t);
    assert_eq!(caps.iter().map(|&(_, id)| id).collect::<Vec<_>>(), [0x11, 9, 9, 9, 9]);
    let msix = caps[0].0;
    let mut control = [0u8; 10];
    t.read_config(msix + 2, &mut control);
    assert_eq!(u16::from_le_bytes([control[0], control[1]]), 1, "2 vectors: the queue and config");
    assert_eq!(u32::from_le_bytes(control[2..6].try_into().unwrap()), 0x2000, "table in BAR 0");
    assert_eq!(u32::from_le_bytes(control[6..10].try_into().unwrap()), 0x3000, "PBA in BAR 0");

    // (cfg_type, bar, offset, length) of each virtio structure.
    let structures: Vec<(u8, u8, u32, u32)> = caps[1..]
        .iter()
        .map(|&(at, _)| {
            let mut cap = [0u8; 16];
            t.read_config(at, &mut cap);
            let word = |i: usize| u32::from_le_bytes(cap[i..i + 4].try_into().unwrap());
            (cap[3], cap[4], word(8), word(12))
        })
        .collect();
    assert_eq!(structures, [(1, 0, 0, 0x38), (2, 0, 0x1000, 0x1000), (3, 0, 0x400, 1), (4, 0, 0x800, 0x800)]);
    let notify = caps[2].0;
    assert_eq!(config_byte(&mut t, notify + 2), 20, "notify capability length");
    assert_eq!(config_byte(&mut t, notify + 16), 4, "notify_off_multiplier");
    assert_eq!(read(&mut t, NUM_QUEUES, 2), 1);
}

#[test]
fn rng_serves_a_request_through_msix() {
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let (mut t, events) = transport(&memory);
    enable_msix(&mut t, 0);
    driver_init(&mut t, &mock, 0);
    assert_eq!(read(&mut t, DEVICE_STATUS, 1), 1 | 2 | 8 | 4, "activated");
    assert_eq!(read(&mut t, QUEUE_MSIX_VECTOR, 2), 0);

    request_entropy(&mut t, &mock);
    assert_eq!(next_event(&events), Event::Route(0, MESSAGE));
    assert_eq!(next_event(&events), Event::Trigger(0));
    let used_len: u32 = memory.read_obj(mock.used_addr().unchecked_add(8)).unwrap();
    assert_eq!(used_len, 32);
    assert_eq!(read(&mut t, ISR, 1), 0, "with MSI-X, queue interrupts leave the ISR alone");
}

#[test]
fn a_masked_vector_is_pending_until_unmasked() {
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let (mut t, events) = transport(&memory);
    enable_msix(&mut t, 0);
    write(&mut t, MSIX_TABLE + 12, 4, 1); // mask vector 0
    driver_init(&mut t, &mock, 0);
    request_entropy(&mut t, &mock);
    // The worker triggers after completing the request: its vector becomes pending.
    wait_until("vector 0 pending", || read(&mut t, MSIX_PBA, 8) == 1);
    assert!(events.try_recv().is_err(), "nothing delivered while masked");
    write(&mut t, MSIX_TABLE + 12, 4, 0);
    assert_eq!(next_event(&events), Event::Route(0, MESSAGE));
    assert_eq!(next_event(&events), Event::Trigger(0));
    assert_eq!(read(&mut t, MSIX_PBA, 8), 0);
}

#[test]
fn no_vector_means_no_interrupt_and_no_harm() {
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let (mut t, events) = transport(&memory);
    enable_msix(&mut t, 0);
    driver_init(&mut t, &mock, NO_VECTOR);
    assert_eq!(read(&mut t, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    request_entropy(&mut t, &mock);
    let used = mock.used_addr().unchecked_add(2);
    wait_until("request completed", || memory.read_obj::<u16>(used).unwrap() == 1);
    write(&mut t, DEVICE_STATUS, 1, 0); // stops the worker, so it has triggered (or not) by now
    assert!(events.try_recv().is_err());
}

#[test]
fn vectors_past_the_table_read_back_as_no_vector() {
    let (mut t, _) = transport(&memory());
    write(&mut t, CONFIG_MSIX_VECTOR, 2, 1);
    assert_eq!(read(&mut t, CONFIG_MSIX_VECTOR, 2), 1);
    write(&mut t, CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(read(&mut t, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    write(&mut t, QUEUE_MSIX_VECTOR, 2, 7);
    assert_eq!(read(&mut t, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    write(&mut t, QUEUE_SELECT, 2, 5);
    assert_eq!(read(&mut t, QUEUE_SIZE, 2), 0, "queue 5 does not exist");
    write(&mut t, QUEUE_MSIX_VECTOR, 2, 0);
    assert_eq!(read(&mut t, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
}

#[test]
fn feature_windows_and_a_driver_without_virtio_1() {
    let (mut t, _) = transport(&memory());
    write(&mut t, DEVICE_FEATURE_SELECT, 4, 0);
    assert_eq!(read(&mut t, DEVICE_FEATURE, 4), 0);
    write(&mut t, DEVICE_FEATURE_SELECT, 4, 2);
    assert_eq!(read(&mut t, DEVICE_FEATURE, 4), 0);
    write(&mut t, DRIVER_FEATURE_SELECT, 4, 1);
    write(&mut t, DRIVER_FEATURE, 4, 0);
    assert_eq!(read(&mut t, DRIVER_FEATURE, 4), 0);
    write(&mut t, DEVICE_STATUS, 1, 1 | 2 | 8);
    assert_eq!(read(&mut t, DEVICE_STATUS, 1) as u32 & STATUS_FEATURES_OK, 0, "refused");
}

#[test]
fn reset_clears_the_driver_state() {
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let (mut t, _) = transport(&memory);
    enable_msix(&mut t, 0);
    write(&mut t, CONFIG_MSIX_VECTOR, 2, 1);
    driver_init(&mut t, &mock, 0);
    write(&mut t, DEVICE_STATUS, 1, 0);
    assert_eq!(read(&mut t, DEVICE_STATUS, 1), 0);
    assert_eq!(read(&mut t, QUEUE_ENABLE, 2), 0);
    assert_eq!(read(&mut t, QUEUE_DESC, 8), 0);
    assert_eq!(read(&mut t, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(read(&mut t, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    // The device comes up again after a reset.
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
    driver_init(&mut t, &mock, 0);
    assert_eq!(read(&mut t, DEVICE_STATUS, 1), 1 | 2 | 8 | 4);
}

/// The used ring's index of `mock`'s queue.
fn used_index(memory: &GuestRam, mock: &MockSplitQueue<GuestRam>) -> u16 {
    memory.read_obj(mock.used_addr().unchecked_add(2)).unwrap()
}

/// Waits for queue 0's vector to fire, past the routing that may come first.
fn wait_for_queue_interrupt(events: &Receiver<Event>) {
    while next_event(events) != Event::Trigger(0) {}
}

#[test]
fn a_reset_stops_the_worker_and_the_next_activation_serves_the_new_ring() {
    let memory = memory();
    let old = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let (mut t, events) = transport(&memory);
    enable_msix(&mut t, 0);
    driver_init(&mut t, &old, 0);
    request_entropy(&mut t, &old);
    wait_for_queue_interrupt(&events);
    assert_eq!(used_index(&memory, &old), 1);

    // The reset returns once the worker is joined: a request on the old ring, notified straight
    // through the queue's event, finds no one to serve it.
    write(&mut t, DEVICE_STATUS, 1, 0);
    old.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x8000, 32, 2, 0))], 1).unwrap();
    t.state.queue_events()[0].write(1).unwrap();
    assert_eq!(used_index(&memory, &old), 1, "the stopped worker served the old ring");

    // The driver starts over on a new ring that already holds a request: the count the event kept
    // from before is the only wake-up, and it serves the new ring, not the old one.
    let new = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
    new.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x9000, 16, 2, 0))], 0).unwrap();
    driver_init(&mut t, &new, 0);
    assert_eq!(read(&mut t, DEVICE_STATUS, 1), 1 | 2 | 8 | 4);
    wait_for_queue_interrupt(&events);
    assert_eq!(used_index(&memory, &new), 1);
    let used_len: u32 = memory.read_obj(new.used_addr().unchecked_add(8)).unwrap();
    assert_eq!(used_len, 16);
    assert_eq!(used_index(&memory, &old), 1, "the old ring stays unserved");
}

#[test]
fn a_config_change_bumps_the_generation() {
    let (mut t, _) = transport(&memory());
    assert_eq!(read(&mut t, CONFIG_GENERATION, 1), 0);
    // Through the interrupt the device gets.
    let interrupt = t.state.interrupt().clone();
    interrupt.trigger(InterruptCause::Queue(0)).unwrap();
    assert_eq!(read(&mut t, CONFIG_GENERATION, 1), 0, "used buffers change no config");
    interrupt.trigger(InterruptCause::Config).unwrap();
    assert_eq!(read(&mut t, CONFIG_GENERATION, 1), 1);
    assert_eq!(read(&mut t, ISR, 1) & 2, 2, "the config-change bit");
}

#[test]
fn queues_cannot_change_while_the_device_runs() {
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let (mut t, _) = transport(&memory);
    driver_init(&mut t, &mock, NO_VECTOR);
    write(&mut t, QUEUE_SIZE, 2, 32);
    write(&mut t, QUEUE_DESC, 8, 0x9000);
    assert_eq!(read(&mut t, QUEUE_SIZE, 2), 16);
    assert_eq!(read(&mut t, QUEUE_DESC, 8), mock.desc_table_addr().0);
}

#[test]
fn notifications_follow_bar_0() {
    let (mut t, events) = transport(&memory());
    t.bar_moved(0, Some(0xe000_0000));
    assert_eq!(next_event(&events), Event::Bind(0xe000_1000));
    t.bar_moved(0, Some(0xe000_0000));
    t.bar_moved(1, None);
    t.bar_moved(0, Some(0xe001_0000));
    assert_eq!(next_event(&events), Event::Unbind(0xe000_1000));
    assert_eq!(next_event(&events), Event::Bind(0xe001_1000));
    t.bar_moved(0, None);
    assert_eq!(next_event(&events), Event::Unbind(0xe001_1000));
    assert!(events.try_recv().is_err());
}

#[test]
fn any_access_is_harmless() {
    let (mut t, _) = transport(&memory());
    t.write_config(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
    for offset in (0..u64::from(layout::BAR_SIZE) + 8).step_by(3).chain([COMMON_CONFIG, u64::MAX - 3]) {
        for len in [0usize, 1, 2, 3, 4, 8, 16] {
            let mut data = vec![0u8; len];
            t.read_bar(0, offset, &mut data);
            t.read_bar(3, offset, &mut data);
            // Status writes would start and reset the device; keep the rest of the sweep about
            // register decoding.
            if offset != DEVICE_STATUS {
                t.write_bar(0, offset, &vec![0xffu8; len]);
            }
        }
    }
    for offset in (0..0x1010).chain([usize::MAX - 1, usize::MAX]) {
        for len in [1usize, 2, 4] {
            let mut data = vec![0u8; len];
            t.read_config(offset, &mut data);
            t.write_config(offset, &vec![0xffu8; len]);
        }
    }
}

/// A running rng behind virtio-pci with MSI-X on and one request served, as a snapshot saves it.
fn running_snapshot() -> PciSnapshot {
    let memory = memory();
    let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
    let (mut t, events) = transport(&memory);
    enable_msix(&mut t, 0);
    driver_init(&mut t, &mock, 0);
    request_entropy(&mut t, &mock);
    assert_eq!(next_event(&events), Event::Route(0, MESSAGE));
    assert_eq!(next_event(&events), Event::Trigger(0));
    let VirtioSnapshot::Pci(saved) = t.hold().unwrap() else { unreachable!("a PCI transport") };
    t.release();
    write(&mut t, DEVICE_STATUS, 1, 0);
    saved
}

fn restore(saved: &PciSnapshot) -> Result<PciTransport, RestoreError> {
    let (mut t, _) = transport(&memory());
    t.restore(&VirtioSnapshot::Pci(saved.clone())).map(|()| t)
}

/// The field a refused restore names.
fn refused_field(result: Result<PciTransport, RestoreError>) -> String {
    match result {
        Err(RestoreError::Value { source, .. }) => match source {
            devices::RestoreError::Value { field, .. } => field,
            devices::RestoreError::Length { field, .. } | devices::RestoreError::TooLong { field, .. } => {
                field.into()
            }
            devices::RestoreError::ReadOnly { offset, .. } => format!("read-only byte {offset:#x}"),
        },
        other => panic!("expected a refused value, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_restore_takes_the_saved_vectors_and_refuses_ones_past_the_table() {
    let saved = running_snapshot();
    let mut t = restore(&saved).unwrap();
    assert_eq!(read(&mut t, DEVICE_STATUS, 1), 1 | 2 | 8 | 4);
    assert_eq!(read(&mut t, QUEUE_MSIX_VECTOR, 2), 0);
    write(&mut t, DEVICE_STATUS, 1, 0);

    // Two vectors: 0 and 1. NO_VECTOR is what a driver leaves when it wants none.
    let mut none = saved.clone();
    none.config_vector = NO_VECTOR;
    write(&mut restore(&none).unwrap(), DEVICE_STATUS, 1, 0);
    let change = |edit: &dyn Fn(&mut PciSnapshot)| {
        let mut bad = saved.clone();
        edit(&mut bad);
        refused_field(restore(&bad))
    };
    assert_eq!(change(&|s| s.queue_vectors[0] = 2), "queue 0 vector");
    assert_eq!(change(&|s| s.config_vector = 0x7ff), "configuration vector");
    assert_eq!(change(&|s| s.queue_vectors.push(0)), "queue vectors");
    assert_eq!(change(&|s| s.isr = 4), "ISR");
    assert_eq!(change(&|s| s.config_space[0] ^= 1), "read-only byte 0x0");
    assert_eq!(change(&|s| s.config_space.truncate(64)), "registers");
}

#[test]
fn a_restore_refuses_msix_entries_beyond_the_table_and_a_disagreeing_control() {
    let saved = running_snapshot();
    let (mut t, _) = transport(&memory());
    let control = msix_capability(&mut t) + 2;
    // MSI-X enabled in the saved state, but not in the capability the guest wrote it to.
    let mut disabled = saved.clone();
    disabled.config_space[control + 1] &= !0x80;
    assert_eq!(refused_field(restore(&disabled)), "message control");

    // One entry more than the table's two, as a state file could decode to.
    let mut msix = serde_json::to_value(&saved.msix).unwrap();
    let vectors = msix["vectors"].as_array_mut().unwrap();
    vectors.push(vectors[0].clone());
    let mut beyond = saved.clone();
    beyond.msix = serde_json::from_value(msix).unwrap();
    assert_eq!(refused_field(restore(&beyond)), "vector table");
}

#[test]
fn a_restore_refuses_the_other_transport() {
    let saved = running_snapshot();
    let mmio = crate::mmio::MmioSnapshot { transport: saved.transport, interrupt_status: 0 };
    let (mut t, _) = transport(&memory());
    let result = t.restore(&VirtioSnapshot::Mmio(mmio));
    assert!(matches!(result, Err(RestoreError::Transport { saved: "virtio-mmio", expected: "virtio-pci" })));
}
