//! `preadv`/`pwritev` to completion: the kernel may move fewer bytes than asked (a signal, a large
//! request split by the filesystem), so the rest is asked for again from where it stopped.

use std::io;
use std::os::fd::RawFd;

use crate::IoBuf;

/// The most iovecs one `preadv` takes (`IOV_MAX` on Linux); longer lists are done in parts.
const IOV_MAX: usize = 1024;

/// Reads exactly the buffers' length from `offset`; end of file first is an error (the image
/// shrank under us).
pub fn read_all(fd: RawFd, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
    transfer(fd, buffers, offset, Direction::Read)
}

/// Writes all of the buffers at `offset`.
pub fn write_all(fd: RawFd, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
    transfer(fd, buffers, offset, Direction::Write)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

fn transfer(fd: RawFd, buffers: &[IoBuf], mut offset: u64, direction: Direction) -> io::Result<()> {
    let mut iovecs: Vec<libc::iovec> = buffers.iter().filter(|b| !b.is_empty()).map(IoBuf::iovec).collect();
    let mut done = 0;
    while done < iovecs.len() {
        let batch = &iovecs[done..iovecs.len().min(done + IOV_MAX)];
        let position = libc::off_t::try_from(offset).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset beyond the largest file offset")
        })?;
        // SAFETY: every iovec names memory its IoBuf's maker promised stays mapped (and, for a
        // read, writable) for this call; the count is the slice's length, at most IOV_MAX.
        let moved = unsafe {
            match direction {
                Direction::Read => libc::preadv(fd, batch.as_ptr(), batch.len() as libc::c_int, position),
                Direction::Write => libc::pwritev(fd, batch.as_ptr(), batch.len() as libc::c_int, position),
            }
        };
        if moved < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if moved == 0 {
            return Err(match direction {
                Direction::Read => {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the image")
                }
                Direction::Write => io::Error::new(io::ErrorKind::WriteZero, "the image took no more bytes"),
            });
        }
        offset += moved as u64;
        let mut moved = moved as usize;
        // Skip the iovecs done, and shorten the one the transfer stopped in.
        while moved > 0 {
            let current = &mut iovecs[done];
            if moved >= current.iov_len {
                moved -= current.iov_len;
                done += 1;
            } else {
                // SAFETY: `moved` is less than the iovec's length, so the pointer stays inside it.
                current.iov_base = unsafe { current.iov_base.cast::<u8>().add(moved) }.cast();
                current.iov_len -= moved;
                moved = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn scattered_buffers_round_trip_and_reading_past_the_end_fails() {
        let file = tempfile::tempfile().unwrap();
        let (mut a, mut b, mut c) = (vec![1u8; 3], vec![2u8; 0], vec![3u8; 5000]);
        write_all(
            file.as_raw_fd(),
            &[IoBuf::from_slice(&a), IoBuf::from_slice(&b), IoBuf::from_slice(&c)],
            10,
        )
        .unwrap();
        a.fill(0);
        c.fill(0);
        let buffers =
            [IoBuf::from_mut_slice(&mut a), IoBuf::from_mut_slice(&mut b), IoBuf::from_mut_slice(&mut c)];
        read_all(file.as_raw_fd(), &buffers, 10).unwrap();
        assert_eq!((a, c), (vec![1u8; 3], vec![3u8; 5000]));
        let mut past = [0u8; 2];
        let error = read_all(file.as_raw_fd(), &[IoBuf::from_mut_slice(&mut past)], 5012).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn more_buffers_than_iov_max_are_done_in_parts() {
        let file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let buffers: Vec<IoBuf> = data.chunks(1).map(IoBuf::from_slice).collect();
        write_all(file.as_raw_fd(), &buffers, 0).unwrap();
        let mut back = vec![0u8; 3000];
        read_all(file.as_raw_fd(), &[IoBuf::from_mut_slice(&mut back)], 0).unwrap();
        assert_eq!(back, data);
    }
}
