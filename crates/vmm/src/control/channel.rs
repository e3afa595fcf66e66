//! The path from the API's threads to the control thread: an mpsc channel for the requests and an
//! eventfd that wakes the VM's event loop (which cannot wait on a channel). Each request carries
//! the sender its answer goes back on.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use model::control::{ControlError, Dispatch, VmmRequest, VmmResponse};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::EngineError;

/// Where a request's answer goes.
pub type Reply = Sender<Result<VmmResponse, ControlError>>;

/// What arrives on the control channel.
pub enum ControlMessage {
    /// A client's request and where to answer it.
    Request(VmmRequest, Reply),
    /// The snapshot thread has finished.
    SnapshotDone(Result<(), EngineError>),
}

/// The sending side, for the API (and the controller's own worker threads).
#[derive(Clone)]
pub struct ControlSender {
    sender: Sender<ControlMessage>,
    wake: Arc<EventFd>,
}

/// The control thread's side.
pub struct ControlReceiver {
    receiver: Receiver<ControlMessage>,
    wake: Arc<EventFd>,
    /// For the controller's worker threads to report back.
    sender: ControlSender,
}

/// A new control channel.
pub fn channel() -> std::io::Result<(ControlSender, ControlReceiver)> {
    let (sender, receiver) = mpsc::channel();
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let sender = ControlSender { sender, wake: wake.clone() };
    Ok((sender.clone(), ControlReceiver { receiver, wake, sender }))
}

impl ControlSender {
    /// Queues `message` and wakes the event loop. Fails when the control thread is gone.
    pub fn send(&self, message: ControlMessage) -> Result<(), ControlError> {
        self.sender.send(message).map_err(|_| ControlError::VmmGone)?;
        // The message is queued before the wake-up, so a loop woken finds it; a failed write
        // (the counter cannot overflow in practice) leaves it for the next wake-up.
        let _ = self.wake.write(1);
        Ok(())
    }
}

impl Dispatch for ControlSender {
    fn dispatch(&self, request: VmmRequest) -> Result<VmmResponse, ControlError> {
        let (reply, answer) = mpsc::channel();
        self.send(ControlMessage::Request(request, reply))?;
        // The controller drops the reply sender unanswered only when it ends.
        answer.recv().map_err(|_| ControlError::VmmGone)?
    }
}

impl ControlReceiver {
    /// Waits for the next message (before the VM runs, when nothing else needs the thread).
    pub fn recv(&self) -> Option<ControlMessage> {
        self.receiver.recv().ok()
    }

    /// The next queued message, if any; the eventfd's count is cleared first, so a message sent
    /// after this call wakes the loop again.
    pub fn try_recv(&self) -> Option<ControlMessage> {
        self.receiver.try_recv().ok()
    }

    /// Clears the wake-up count (the event loop calls this, then drains with [`Self::try_recv`]).
    pub fn clear_wake(&self) {
        // EAGAIN means nothing was pending: a spurious wake-up, harmless.
        let _ = self.wake.read();
    }

    /// The fd the event loop watches.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// A sender for the controller's worker threads.
    pub fn sender(&self) -> ControlSender {
        self.sender.clone()
    }
}
