//! The device's Ethernet address.

use std::fmt;
use std::io;
use std::str::FromStr;

/// An Ethernet (MAC) address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MacAddress(pub [u8; 6]);

/// Bit 0 of the first byte: a group (multicast) address, which no interface may own.
const GROUP_BIT: u8 = 0x01;
/// Bit 1 of the first byte: a locally administered address, which no vendor hands out, so a
/// random one cannot collide with a real card's.
const LOCAL_BIT: u8 = 0x02;

impl MacAddress {
    /// A random locally administered unicast address, from the host's getrandom.
    pub fn random_local() -> io::Result<MacAddress> {
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
}

impl FromStr for MacAddress {
    type Err = String;

    /// Six two-digit hex bytes separated by colons, e.g. `52:54:00:12:34:56`; the address must
    /// be unicast.
    fn from_str(text: &str) -> Result<MacAddress, String> {
        let malformed = || format!("'{text}' is not a MAC address of the form 52:54:00:12:34:56");
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(malformed)?;
            // from_str_radix alone would take a sign ("+f").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| malformed())?;
        }
        if parts.next().is_some() {
            return Err(malformed());
        }
        if bytes[0] & GROUP_BIT != 0 {
            return Err(format!("{text} is a multicast address; a device needs a unicast one"));
        }
        Ok(MacAddress(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac, MacAddress([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52:54:00:ab:cd:f",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:zz",
            "+2:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddress>().unwrap_err().contains("not a MAC address"), "{bad}");
        }
        assert!("01:00:5e:00:00:01".parse::<MacAddress>().unwrap_err().contains("multicast"));
    }

    #[test]
    fn random_addresses_are_local_unicast_and_differ() {
        let a = MacAddress::random_local().unwrap();
        let b = MacAddress::random_local().unwrap();
        assert_ne!(a, b);
        for mac in [a, b] {
            assert_eq!(mac.0[0] & (GROUP_BIT | LOCAL_BIT), LOCAL_BIT, "{mac}");
        }
    }
}
