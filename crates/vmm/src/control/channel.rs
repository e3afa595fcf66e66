//! The path from the API's threads to the control thread: an mpsc channel for the requests and an
//! eventfd that wakes the VM's event loop (which cannot wait on a channel). Each request carries
//! the sender its answer goes back on. The controller's own worker threads (a snapshot) report on
//! a second channel, woken through the same eventfd, so that the request channel still tells when
//! the API is gone.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
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
    /// The thread of the long operation under way (a snapshot, a drive update) has finished.
    OperationDone(Result<(), EngineError>),
}

/// The sending side, for the API (and, on their own channel, the controller's worker threads).
#[derive(Clone)]
pub struct ControlSender {
    sender: Sender<ControlMessage>,
    wake: Arc<EventFd>,
}

/// The control thread's side.
pub struct ControlReceiver {
    requests: Receiver<ControlMessage>,
    reports: Receiver<ControlMessage>,
    /// Cloned for each worker thread.
    report_sender: ControlSender,
    wake: Arc<EventFd>,
}

/// What [`ControlReceiver::try_recv`] found.
pub enum Received {
    /// The next message.
    Message(ControlMessage),
    /// Nothing queued now.
    Empty,
    /// Nothing queued, and every request sender is gone: no request will come again.
    Closed,
}

/// A new control channel: the senders for the API, the receiver for the controller.
pub fn channel() -> std::io::Result<(ControlSender, ControlReceiver)> {
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let (sender, requests) = mpsc::channel();
    let (report_sender, reports) = mpsc::channel();
    let report_sender = ControlSender { sender: report_sender, wake: wake.clone() };
    let sender = ControlSender { sender, wake: wake.clone() };
    Ok((sender, ControlReceiver { requests, reports, report_sender, wake }))
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

impl Drop for ControlSender {
    /// Wakes the control thread, so that one waiting for requests sees when the last sender (the
    /// API) is gone.
    fn drop(&mut self) {
        let _ = self.wake.write(1);
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
    /// Clears the wake-up count; call it before draining with [`Self::try_recv`], so that a
    /// message sent after the drain wakes the loop again.
    pub fn clear_wake(&self) {
        // EAGAIN means nothing was pending: a spurious wake-up, harmless.
        let _ = self.wake.read();
    }

    /// The next queued message: workers' reports first, then requests.
    pub fn try_recv(&self) -> Received {
        if let Ok(report) = self.reports.try_recv() {
            return Received::Message(report);
        }
        match self.requests.try_recv() {
            Ok(message) => Received::Message(message),
            Err(TryRecvError::Empty) => Received::Empty,
            Err(TryRecvError::Disconnected) => Received::Closed,
        }
    }

    /// Waits until the wake-up fd is readable (something was sent, or a sender dropped).
    pub fn wait(&self) -> std::io::Result<()> {
        let mut poll = libc::pollfd { fd: self.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        loop {
            // SAFETY: one valid pollfd and its count; poll only writes `revents`.
            if unsafe { libc::poll(&mut poll, 1, -1) } >= 0 {
                return Ok(());
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// The fd the event loop watches.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// A sender for a worker thread's report.
    pub fn report_sender(&self) -> ControlSender {
        self.report_sender.clone()
    }
}
