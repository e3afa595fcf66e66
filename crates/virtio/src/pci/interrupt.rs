//! How a virtio-pci device interrupts: through the MSI-X vector the driver chose for the queue
//! (or for configuration changes), plus the ISR status byte.

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use devices::pci::msix::Msix;
use devices::RestoreError;

use crate::device::{Interrupt, InterruptCause};

/// The vector value meaning "no interrupt for this queue or for configuration changes".
pub const NO_VECTOR: u16 = 0xffff;
// ISR status bits.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// The device's interrupt, shared between the transport (which the driver programs) and the
/// device's worker (which triggers it).
pub(crate) struct PciInterrupt {
    msix: Arc<Mutex<Msix>>,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    isr: AtomicU8,
}

impl PciInterrupt {
    pub(crate) fn new(msix: Arc<Mutex<Msix>>, queues: usize) -> PciInterrupt {
        PciInterrupt {
            msix,
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            isr: AtomicU8::new(0),
        }
    }

    pub(crate) fn msix(&self) -> MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::SeqCst)
    }

    pub(crate) fn queue_vector(&self, queue: usize) -> u16 {
        self.queue_vectors.get(queue).map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst))
    }

    /// Sets the config vector; a vector the table does not have reads back as [`NO_VECTOR`], which
    /// tells the driver to try fewer vectors (virtio 1.2, 4.1.5.1.2).
    pub(crate) fn set_config_vector(&self, vector: u16) {
        self.config_vector.store(self.valid_vector(vector), Ordering::SeqCst);
    }

    pub(crate) fn set_queue_vector(&self, queue: usize, vector: u16) {
        if let Some(slot) = self.queue_vectors.get(queue) {
            slot.store(self.valid_vector(vector), Ordering::SeqCst);
        }
    }

    fn valid_vector(&self, vector: u16) -> u16 {
        if vector < self.msix().count() {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// Reading the ISR status clears it (virtio 1.2, 4.1.4.5).
    pub(crate) fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    /// The vectors the driver chose (configuration, then per queue) and the ISR, for a snapshot.
    pub(crate) fn snapshot(&self) -> (u16, Vec<u16>, u8) {
        let queues = self.queue_vectors.iter().map(|v| v.load(Ordering::SeqCst)).collect();
        (self.config_vector(), queues, self.isr.load(Ordering::SeqCst))
    }

    /// Takes saved vectors and ISR: one vector per queue, each in the MSI-X table or
    /// [`NO_VECTOR`] (the driver's writes of others read back as `NO_VECTOR`), and only the ISR's
    /// queue and configuration bits.
    pub(crate) fn restore(
        &self,
        config_vector: u16,
        queue_vectors: &[u16],
        isr: u8,
    ) -> Result<(), RestoreError> {
        const COMPONENT: &str = "virtio-pci interrupt";
        if queue_vectors.len() != self.queue_vectors.len() {
            return Err(RestoreError::Length {
                component: COMPONENT,
                field: "queue vectors",
                saved: queue_vectors.len(),
                expected: self.queue_vectors.len(),
            });
        }
        let check = |field: String, vector: u16| {
            if vector == NO_VECTOR || vector == self.valid_vector(vector) {
                Ok(())
            } else {
                Err(RestoreError::value(COMPONENT, field, vector, "is past the MSI-X table"))
            }
        };
        check("configuration vector".into(), config_vector)?;
        for (queue, &vector) in queue_vectors.iter().enumerate() {
            check(format!("queue {queue} vector"), vector)?;
        }
        if isr & !(ISR_QUEUE | ISR_CONFIG) != 0 {
            return Err(RestoreError::value(
                COMPONENT,
                "ISR",
                isr,
                "has bits other than queue and configuration",
            ));
        }
        self.set_config_vector(config_vector);
        for (queue, &vector) in queue_vectors.iter().enumerate() {
            self.set_queue_vector(queue, vector);
        }
        self.isr.store(isr, Ordering::SeqCst);
        Ok(())
    }

    /// The device was reset: no vectors chosen, nothing to report.
    pub(crate) fn reset(&self) {
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for vector in &self.queue_vectors {
            vector.store(NO_VECTOR, Ordering::SeqCst);
        }
        self.isr.store(0, Ordering::SeqCst);
    }
}

impl Interrupt for PciInterrupt {
    fn trigger(&self, cause: InterruptCause) -> io::Result<()> {
        let (vector, isr_bit) = match cause {
            InterruptCause::Queue(queue) => (self.queue_vector(usize::from(queue)), ISR_QUEUE),
            InterruptCause::Config => (self.config_vector(), ISR_CONFIG),
        };
        let mut msix = self.msix();
        // With MSI-X on, only configuration changes are reported in the ISR (virtio 1.2, 4.1.4.5.1).
        if cause == InterruptCause::Config || !msix.enabled() {
            self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        }
        if vector == NO_VECTOR {
            // No vector, and Kestrel has no INTx line: the driver polls or does not care.
            return Ok(());
        }
        msix.trigger(vector)
    }
}
