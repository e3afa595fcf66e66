//! The memory a disk request moves data to or from.

use std::marker::PhantomData;

/// A piece of memory a disk request reads into or writes from: usually guest memory, handed to
/// the host's I/O (`preadv`, io_uring) without a copy through a bounce buffer.
///
/// It is a raw pointer and a length because guest memory is not Rust memory: the guest may change
/// it while the host reads or writes it (the result is then the guest's problem, as on real
/// hardware), and an asynchronous request holds it past any borrow. Whoever makes one promises,
/// through [`IoBuf::new`], that the memory stays mapped while the request uses it.
#[derive(Clone, Copy, Debug)]
pub struct IoBuf {
    ptr: *mut u8,
    len: usize,
    _not_send_by_accident: PhantomData<*mut u8>,
}

// SAFETY: an IoBuf is an address and a length; the memory it names is guest memory (or a
// caller's buffer) whose validity across threads its maker promised in `IoBuf::new`. Nothing in
// it is tied to the thread that made it.
unsafe impl Send for IoBuf {}
// SAFETY: as for Send: sharing the address between threads shares no thread-local state.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// A buffer of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped, readable and (for a read request) writable for as long
    /// as any request using this buffer runs. Its contents may change concurrently (guest memory
    /// does); the backends only ever copy in or out of it.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> IoBuf {
        IoBuf { ptr, len, _not_send_by_accident: PhantomData }
    }

    /// A buffer over a mutable slice that outlives the (synchronous) request it is used for.
    pub fn from_mut_slice(slice: &mut [u8]) -> IoBuf {
        // SAFETY: the slice is mapped and writable, and a synchronous call with this buffer ends
        // before the caller's borrow of the slice does.
        unsafe { IoBuf::new(slice.as_mut_ptr(), slice.len()) }
    }

    /// A buffer over a slice that is only read (a write request's data).
    ///
    /// Using it as the destination of a read is a bug in the caller: backends write only into
    /// the buffers of read requests.
    pub fn from_slice(slice: &[u8]) -> IoBuf {
        // SAFETY: the slice is mapped and readable for the synchronous call; write requests only
        // read their buffers, so the shared borrow is respected.
        unsafe { IoBuf::new(slice.as_ptr().cast_mut(), slice.len()) }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as a `libc::iovec`, for `preadv`/`pwritev` and io_uring.
    pub fn iovec(&self) -> libc::iovec {
        libc::iovec { iov_base: self.ptr.cast(), iov_len: self.len }
    }

    /// The buffer's bytes, for backends that must copy (a qcow2 cluster, a compressed read).
    ///
    /// # Safety
    /// No one may write the memory while the slice lives, by the contract of [`IoBuf::new`]
    /// apart from the guest, whose concurrent writes only make the copied bytes meaningless.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        // SAFETY: mapped and readable for the request's duration, by `IoBuf::new`'s contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The buffer's bytes, writable, for backends that fill it.
    ///
    /// # Safety
    /// As [`IoBuf::as_slice`], and the buffer must be a read request's destination.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice<'a>(&self) -> &'a mut [u8] {
        // SAFETY: mapped and writable for the request's duration, by `IoBuf::new`'s contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// The total length of `buffers`.
pub fn total_len(buffers: &[IoBuf]) -> usize {
    buffers.iter().map(IoBuf::len).sum()
}
