//! Filling the guest's buffers with entropy.

use std::io::{self, Write};
use std::sync::Arc;

use crate::GuestRam;
use virtio_queue::{Queue, QueueState};

use crate::device::{GuestErrorLog, Interrupt};
use crate::metrics::EntropyMetrics;
use crate::worker::{serve_queue, QueueHandler};

/// At most this many bytes per request: a guest offering a huge buffer gets it partly filled,
/// instead of holding the worker (and host entropy) for as long as it likes.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

/// The host's entropy source failing: once per request the guest sends, so limited like the
/// guest's own problems.
static ENTROPY_ERRORS: GuestErrorLog = GuestErrorLog::site("virtio-rng entropy errors");

/// Where random bytes come from (the host's getrandom, or a fixed pattern in tests).
pub trait EntropySource: Send + 'static {
    fn fill(&mut self, buffer: &mut [u8]) -> io::Result<()>;
}

/// The host kernel's CSPRNG, through getrandom(2).
pub struct HostEntropy;

impl EntropySource for HostEntropy {
    fn fill(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buffer.len() {
            let rest = &mut buffer[filled..];
            // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we own.
            let count = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if count < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            } else {
                filled += count as usize;
            }
        }
        Ok(())
    }
}

/// The rng's request queue and what it needs to serve it.
pub struct RngHandler<E> {
    memory: GuestRam,
    queue: Queue,
    interrupt: Arc<dyn Interrupt>,
    guest_errors: Arc<GuestErrorLog>,
    metrics: Arc<EntropyMetrics>,
    entropy: E,
}

impl<E: EntropySource> RngHandler<E> {
    pub fn new(
        memory: GuestRam,
        queue: Queue,
        interrupt: Arc<dyn Interrupt>,
        guest_errors: Arc<GuestErrorLog>,
        metrics: Arc<EntropyMetrics>,
        entropy: E,
    ) -> Self {
        RngHandler { memory, queue, interrupt, guest_errors, metrics, entropy }
    }

    /// Serves every available request, then interrupts the driver once if it wants to know.
    fn process_requests(&mut self) {
        let (memory, entropy, guest_errors, metrics) =
            (&self.memory, &mut self.entropy, &self.guest_errors, &self.metrics);
        serve_queue("virtio-rng", memory, &mut self.queue, 0, self.interrupt.as_ref(), |chain| {
            // A malformed request (a buffer outside guest memory, say) is completed with nothing
            // written: it fails alone, and the device keeps serving the others.
            match chain.writer(memory) {
                Ok(mut writer) => {
                    let wanted = writer.available_bytes().min(MAX_BYTES_PER_REQUEST);
                    let written = fill(entropy, &mut writer, wanted).unwrap_or_else(|e| {
                        metrics.host_rng_fails.inc();
                        ENTROPY_ERRORS.log(format_args!("virtio-rng: request failed: {e}"));
                        0
                    });
                    metrics.entropy_bytes.add(written.into());
                    written
                }
                Err(e) => {
                    metrics.entropy_event_fails.inc();
                    guest_errors.log(format_args!("malformed request: {e:?}"));
                    0
                }
            }
        });
    }
}

/// Writes `wanted` bytes of entropy through `writer`, a page at a time.
fn fill(entropy: &mut impl EntropySource, writer: &mut impl Write, wanted: usize) -> io::Result<u32> {
    let mut buffer = [0u8; 4096];
    let mut written = 0;
    while written < wanted {
        let chunk = &mut buffer[..(wanted - written).min(4096)];
        entropy.fill(chunk)?;
        writer.write_all(chunk)?;
        written += chunk.len();
    }
    Ok(written as u32)
}

impl<E: EntropySource> QueueHandler for RngHandler<E> {
    fn queue_states(&self) -> Vec<(usize, QueueState)> {
        vec![(0, self.queue.state())]
    }

    fn process_queue(&mut self, _index: usize) {
        self.metrics.entropy_event_count.inc();
        self.process_requests();
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::device::testing::{descriptor, guest_errors, Recorder};
    use crate::device::InterruptCause;
    use crate::metrics::Counts;

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const NEXT: u16 = 1; // VRING_DESC_F_NEXT

    /// Fills every buffer with 0xA5, so tests can see exactly what was written.
    struct Pattern;
    impl EntropySource for Pattern {
        fn fill(&mut self, buffer: &mut [u8]) -> io::Result<()> {
            buffer.fill(0xA5);
            Ok(())
        }
    }

    fn memory() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Runs the handler over `chains` (each a list of descriptors) and returns the used lengths,
    /// the interrupts raised and what it counted.
    fn serve(memory: &GuestRam, chains: &[&[RawDescriptor]]) -> (Vec<u32>, Vec<InterruptCause>, Counts) {
        let mock = MockSplitQueue::new(memory, 16);
        let mut offset = 0;
        for chain in chains {
            mock.add_desc_chains(chain, offset).unwrap();
            offset += chain.len() as u16;
        }
        let queue: Queue = mock.create_queue().unwrap();
        let interrupts = Arc::new(Recorder::default());
        let metrics = Arc::new(EntropyMetrics::default());
        let mut handler = RngHandler::new(
            memory.clone(),
            queue,
            interrupts.clone(),
            guest_errors(),
            metrics.clone(),
            Pattern,
        );
        handler.process_queue(0);
        let used: Vec<u32> = (0..chains.len())
            .map(|i| memory.read_obj::<u32>(mock.used_addr().unchecked_add(4 + 8 * i as u64 + 4)).unwrap())
            .collect();
        let raised = interrupts.0.lock().unwrap().clone();
        (used, raised, metrics.take())
    }

    #[test]
    fn fills_writable_buffers_and_interrupts_once() {
        let memory = memory();
        let (used, interrupts, counts) = serve(
            &memory,
            &[
                &[descriptor(0x8000, 64, WRITE, 0)],
                &[descriptor(0x9000, 16, WRITE | NEXT, 2), descriptor(0xa000, 16, WRITE, 0)],
            ],
        );
        assert_eq!(used, [64, 32]);
        assert_eq!(interrupts, [InterruptCause::Queue(0)]);
        assert_eq!((counts.get("entropy_bytes"), counts.get("entropy_event_count")), (Some(96), Some(1)));
        let mut bytes = [0u8; 64];
        memory.read_slice(&mut bytes, GuestAddress(0x8000)).unwrap();
        assert!(bytes.iter().all(|&b| b == 0xA5));
        memory.read_slice(&mut bytes[..16], GuestAddress(0xa000)).unwrap();
        assert!(bytes[..16].iter().all(|&b| b == 0xA5));
    }

    #[test]
    fn a_buffer_outside_guest_memory_fails_alone() {
        let memory = memory();
        let (used, _, counts) =
            serve(&memory, &[&[descriptor(0xFFFF_0000, 64, WRITE, 0)], &[descriptor(0x8000, 8, WRITE, 0)]]);
        assert_eq!(used, [0, 8]);
        assert_eq!((counts.get("entropy_event_fails"), counts.get("entropy_bytes")), (Some(1), Some(8)));
    }

    #[test]
    fn read_only_buffers_get_nothing() {
        let memory = memory();
        let (used, _, _) = serve(&memory, &[&[descriptor(0x8000, 64, 0, 0)]]);
        assert_eq!(used, [0]);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0);
    }

    #[test]
    fn oversized_requests_are_capped() {
        let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let (used, _, _) = serve(&memory, &[&[descriptor(0x10_0000, 0x20_0000, WRITE, 0)]]);
        assert_eq!(used, [MAX_BYTES_PER_REQUEST as u32]);
    }

    #[test]
    fn a_descriptor_loop_does_not_hang() {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, 16);
        // Descriptor 0 chains to itself forever.
        mock.desc_table().store(0, descriptor(0x8000, 16, WRITE | NEXT, 0)).unwrap();
        memory.write_obj::<u16>(0, mock.avail_addr().unchecked_add(4)).unwrap();
        memory.write_obj::<u16>(1, mock.avail_addr().unchecked_add(2)).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        let recorder = Arc::new(Recorder::default());
        let mut handler =
            RngHandler::new(memory.clone(), queue, recorder, guest_errors(), Arc::default(), Pattern);
        handler.process_queue(0);
        let used_idx = memory.read_obj::<u16>(mock.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 1, "the looping request is completed (with what fit) and the queue moves on");
    }

    #[test]
    fn host_entropy_is_not_constant() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        HostEntropy.fill(&mut a).unwrap();
        HostEntropy.fill(&mut b).unwrap();
        assert_ne!(a, b);
    }

    /// A host entropy source that always fails.
    struct Broken;
    impl EntropySource for Broken {
        fn fill(&mut self, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }

    #[test]
    fn a_failing_entropy_source_logs_a_few_lines_and_a_count() {
        use devices::guest_log::{capture, LINES_PER_INTERVAL};

        let memory = memory();
        let ((), lines) = capture::lines(|| {
            for _ in 0..1000 {
                let mock = MockSplitQueue::new(&memory, 16);
                for head in 0..8u16 {
                    mock.add_desc_chains(&[descriptor(0x8000, 16, WRITE, 0)], head).unwrap();
                }
                let queue: Queue = mock.create_queue().unwrap();
                let recorder = Arc::new(Recorder::default());
                let mut handler =
                    RngHandler::new(memory.clone(), queue, recorder, guest_errors(), Arc::default(), Broken);
                handler.process_queue(0);
            }
            ENTROPY_ERRORS.flush();
        });
        capture::assert_limited(
            &lines,
            "virtio-rng: request failed",
            "virtio-rng entropy errors",
            8000 - u64::from(LINES_PER_INTERVAL),
        );
    }
}
