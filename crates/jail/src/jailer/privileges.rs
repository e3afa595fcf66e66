//! The drop to `--uid`/`--gid` with no capabilities left: the bounding and ambient sets emptied
//! (so not even a uid 0 VMM regains any on exec), no supplementary groups, then the ids, then
//! every capability set cleared and checked.

use super::JailerError;

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

pub(super) fn drop_all(uid: u32, gid: u32) -> Result<(), JailerError> {
    // Drop every capability from the bounding set, up to the first the kernel does not know.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(JailerError::sys("dropping the capability bounding set"));
        }
    }
    // SAFETY: prctl with integer arguments only. EINVAL means no ambient set (old kernels).
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    // SAFETY: a zero-length group list needs no pointer.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(JailerError::sys("setgroups"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(JailerError::sys("setresgid"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(JailerError::sys("setresuid"));
    }
    let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as version 3 of the interface takes, live across the
    // call; capset only reads them.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) } != 0 {
        return Err(JailerError::sys("capset"));
    }
    // SAFETY: as above; capget writes the two data structs.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, data.as_mut_ptr()) } != 0 {
        return Err(JailerError::sys("capget"));
    }
    let effective = u64::from(data[0].effective) | (u64::from(data[1].effective) << 32);
    let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
    if effective | permitted != 0 {
        return Err(JailerError::CapabilitiesLeft(effective | permitted));
    }
    // No exec from here on may gain privileges (a set-user-ID file linked into the jail, file
    // capabilities), whether or not the VMM then installs seccomp filters of its own.
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integer arguments and changes only this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailerError::sys("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    Ok(())
}
