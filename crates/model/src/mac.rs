//! A network card's Ethernet address, as a configuration names it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet (MAC) address. Encoded as its six bytes (the same shape as the device model's own
/// type, so a saved configuration reads the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacAddress(pub [u8; 6]);

/// Bit 0 of the first byte: a group (multicast) address, which no interface may own.
const GROUP_BIT: u8 = 0x01;

/// Why a text is not a usable MAC address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("'{0}' is not a MAC address of the form 52:54:00:12:34:56")]
    Malformed(String),
    #[error("{0} is a multicast address; a device needs a unicast one")]
    Multicast(String),
}

impl FromStr for MacAddress {
    type Err = MacError;

    /// Six two-digit hex bytes separated by colons, e.g. `52:54:00:12:34:56`; the address must
    /// be unicast.
    fn from_str(text: &str) -> Result<MacAddress, MacError> {
        let malformed = || MacError::Malformed(text.chars().take(64).collect());
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
            return Err(MacError::Multicast(text.to_owned()));
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
    fn addresses_parse_and_print_back() {
        let mac: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac, MacAddress([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]));
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:00", "52:54:00:ab:cd:+f", "zz:54:00:ab:cd:0f"] {
            assert!(matches!(bad.parse::<MacAddress>(), Err(MacError::Malformed(_))), "{bad}");
        }
        let multicast = "01:00:5e:00:00:01".parse::<MacAddress>().unwrap_err();
        assert!(multicast.to_string().contains("multicast"));
    }
}
