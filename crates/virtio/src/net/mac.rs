//! The device's Ethernet address: the configuration's type (`model::config::MacAddress`, parsed and
//! checked there), and a random one for a card configured without.

use std::io;

pub use model::config::MacAddress;

/// Bit 0 of the first byte: a group (multicast) address, which no interface may own.
const GROUP_BIT: u8 = 0x01;
/// Bit 1 of the first byte: a locally administered address, which no vendor hands out, so a
/// random one cannot collide with a real card's.
const LOCAL_BIT: u8 = 0x02;

/// A random locally administered unicast address, from the host's getrandom.
pub fn random_local_mac() -> io::Result<MacAddress> {
    let mut bytes = [0u8; 6];
    // SAFETY: the kernel writes at most `bytes.len()` bytes into `bytes`, which we own.
    let count = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if count < 0 {
        return Err(io::Error::last_os_error());
    }
    // Requests of up to 256 bytes are never cut short (getrandom(2)).
    bytes[0] = (bytes[0] & !GROUP_BIT) | LOCAL_BIT;
    Ok(MacAddress(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_addresses_are_local_unicast_and_differ() {
        let a = random_local_mac().unwrap();
        let b = random_local_mac().unwrap();
        assert_ne!(a, b);
        for mac in [a, b] {
            assert_eq!(mac.0[0] & (GROUP_BIT | LOCAL_BIT), LOCAL_BIT, "{mac}");
        }
    }
}
