//! `PUT /cpu-config`: Firecracker's custom CPU template for x86_64 — bit masks over the CPUID
//! leaves and MSRs KVM gives the guest, and KVM capabilities the host must have. Parsed strictly
//! (a client's body and a `--config` file reach it): numbers as `0x`/`0b`/decimal strings, bit
//! maps of `0`, `1`, `x` (keep) and `_` of at most the register's width, and bounded counts.
//! The engine applies it to every vCPU at boot; a snapshot carries the result (each vCPU's CPUID
//! and MSRs), not the template.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most modifiers of each kind a template may hold (Firecracker's own templates use a few
/// dozen): a body cannot make the VMM loop over millions.
pub const MAX_MODIFIERS: usize = 512;

/// A custom CPU template (x86_64). aarch64's `reg_modifiers` and `vcpu_features` are refused
/// as unknown fields, as Firecracker on x86_64 does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTemplate {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm_capabilities: Vec<KvmCapability>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msr_modifiers: Vec<MsrModifier>,
}

/// Why a template is refused beyond its syntax.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuTemplateError {
    #[error("The CPU template has {count} {what}; at most {MAX_MODIFIERS} are allowed")]
    TooMany { what: &'static str, count: usize },
}

impl CpuTemplate {
    /// The checks beyond the syntax.
    pub fn validate(&self) -> Result<(), CpuTemplateError> {
        for (what, count) in [
            ("KVM capabilities", self.kvm_capabilities.len()),
            ("CPUID leaf modifiers", self.cpuid_modifiers.len()),
            ("MSR modifiers", self.msr_modifiers.len()),
        ] {
            if count > MAX_MODIFIERS {
                return Err(CpuTemplateError::TooMany { what, count });
            }
        }
        Ok(())
    }
}

/// A KVM capability the host must have (`"121"`), or one not to require (`"!121"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmCapability {
    Add(u32),
    Remove(u32),
}

impl<'de> Deserialize<'de> for KvmCapability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (remove, number) = match text.strip_prefix('!') {
            Some(number) => (true, number),
            None => (false, text.as_str()),
        };
        // Decimal digits only (no sign), without leading zeros, at most 9 (KVM's numbers are small).
        let decimal = !number.is_empty()
            && number.len() <= 9
            && number.bytes().all(|b| b.is_ascii_digit())
            && (number == "0" || !number.starts_with('0'));
        let number: u32 = number.parse().ok().filter(|_| decimal).ok_or_else(|| {
            D::Error::custom(format!("invalid KVM capability {text:?}: a number, or ! and a number"))
        })?;
        Ok(if remove { KvmCapability::Remove(number) } else { KvmCapability::Add(number) })
    }
}

impl Serialize for KvmCapability {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            KvmCapability::Add(n) => serializer.serialize_str(&n.to_string()),
            KvmCapability::Remove(n) => serializer.serialize_str(&format!("!{n}")),
        }
    }
}

/// The CPUID leaf and subleaf to change, KVM's flags for the entry, and the registers' masks.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub leaf: u32,
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub subleaf: u32,
    pub flags: u32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    pub register: CpuidRegister,
    pub bitmap: BitMap<32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    #[serde(deserialize_with = "number_u32", serialize_with = "hex")]
    pub addr: u32,
    pub bitmap: BitMap<64>,
}

/// Which bits of a register of `BITS` bits to set (`value`) where `mask` has a 1; the others
/// keep what KVM gave. Written `"0b"` + one of `0`, `1`, `x` per bit, most significant first
/// (fewer digits leave the high bits alone), `_` between digits for readability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BitMap<const BITS: u32> {
    pub mask: u64,
    pub value: u64,
}

impl<const BITS: u32> BitMap<BITS> {
    /// `register` with the map's bits put in.
    pub fn apply(&self, register: u64) -> u64 {
        (register & !self.mask) | self.value
    }

    /// Parses a bit map; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0b").unwrap_or(text);
        let (mut mask, mut value, mut bit) = (0u64, 0u64, 0u32);
        for c in digits.bytes().rev() {
            if c == b'_' {
                continue;
            }
            if bit == BITS {
                return Err(format!("the bit map {text:?} has more than {BITS} bits"));
            }
            match c {
                b'x' => {}
                b'0' => mask |= 1 << bit,
                b'1' => {
                    mask |= 1 << bit;
                    value |= 1 << bit;
                }
                _ => return Err(format!("the bit map {text:?} has a character other than 0, 1, x and _")),
            }
            bit += 1;
        }
        Ok(BitMap { mask, value })
    }
}

impl<'de, const BITS: u32> Deserialize<'de> for BitMap<BITS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BitMap::parse(&String::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl<const BITS: u32> Serialize for BitMap<BITS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let digits: String = (0..BITS)
            .rev()
            .map(|bit| match (self.mask >> bit & 1, self.value >> bit & 1) {
                (0, _) => 'x',
                (_, 0) => '0',
                _ => '1',
            })
            .collect();
        serializer.serialize_str(&format!("0b{digits}"))
    }
}

/// A number written as a string: `0x` and 1 to 8 hex digits, `0b` and 1 to 32 binary digits, or
/// decimal without leading zeros (Firecracker's v1.16 spec; no sign, no spaces).
fn parse_number(text: &str) -> Result<u32, String> {
    let invalid = || {
        format!(
            "{text:?} is not a 32-bit number (0x and 1-8 hex digits, 0b and 1-32 binary digits, or decimal)"
        )
    };
    let (digits, radix, most) = if let Some(hex) = text.strip_prefix("0x") {
        (hex, 16, 8)
    } else if let Some(binary) = text.strip_prefix("0b") {
        (binary, 2, 32)
    } else if text.len() > 1 && text.starts_with('0') {
        return Err(invalid());
    } else {
        (text, 10, 10)
    };
    // from_str_radix would also take a sign.
    if digits.is_empty() || digits.len() > most || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(invalid());
    }
    u32::from_str_radix(digits, radix).map_err(|_| invalid())
}

fn number_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    parse_number(&String::deserialize(deserializer)?).map_err(D::Error::custom)
}

fn hex<S: Serializer>(number: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{number:#x}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn firecrackers_template_format_is_read() {
        let template: CpuTemplate = serde_json::from_str(
            r#"{
                "kvm_capabilities": ["171", "!172"],
                "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0", "flags": 0, "modifiers": [
                    {"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxx0xxxx1"},
                    {"register": "eax", "bitmap": "0b1_0"}
                ]}],
                "msr_modifiers": [{"addr": "0b100001010", "bitmap": "0b1x0"}]
            }"#,
        )
        .unwrap();
        assert_eq!(template.kvm_capabilities, [KvmCapability::Add(171), KvmCapability::Remove(172)]);
        let leaf = &template.cpuid_modifiers[0];
        assert_eq!((leaf.leaf, leaf.subleaf), (1, 0));
        assert_eq!(leaf.modifiers[0].bitmap, BitMap { mask: 0b10_0001, value: 1 });
        assert_eq!(leaf.modifiers[1].bitmap, BitMap { mask: 0b11, value: 0b10 });
        assert_eq!(template.msr_modifiers[0].addr, 0x10a);
        assert_eq!(template.msr_modifiers[0].bitmap.apply(0b111), 0b110);
        template.validate().unwrap();
        // It reads back as it was written (numbers in hex, bit maps in full).
        let again: CpuTemplate = serde_json::from_value(serde_json::to_value(&template).unwrap()).unwrap();
        assert_eq!(again, template);
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (body, reason) in [
            (r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b2"}]}"#, "character other than"),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0", "flags": 0,
                 "modifiers": [{"register": "eax", "bitmap": "0b1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}]}"#,
                "more than 32 bits",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0x1FFFFFFFF", "subleaf": "0", "flags": 0, "modifiers": []}]}"#,
                "not a 32-bit number",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0", "flags": 0,
                 "modifiers": [{"register": "rax", "bitmap": "0b1"}]}]}"#,
                "unknown variant",
            ),
            (r#"{"kvm_capabilities": ["!x"]}"#, "invalid KVM capability"),
            (r#"{"kvm_capabilities": ["+5"]}"#, "invalid KVM capability"),
            (r#"{"kvm_capabilities": ["05"]}"#, "invalid KVM capability"),
            (r#"{"vcpu_features": [{"index": 0, "bitmap": "0b1"}]}"#, "unknown field"),
        ] {
            let error = serde_json::from_str::<CpuTemplate>(body).unwrap_err().to_string();
            assert!(error.contains(reason), "{body}: {error}");
        }
        let many = CpuTemplate {
            kvm_capabilities: vec![KvmCapability::Add(1); MAX_MODIFIERS + 1],
            ..Default::default()
        };
        assert!(matches!(many.validate(), Err(CpuTemplateError::TooMany { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any bit map text is parsed or refused, never a panic; a parsed one never sets a bit
        /// outside its mask or beyond the register.
        #[test]
        fn bit_maps_never_panic(text in "(0b)?[01x_2 ]{0,80}") {
            if let Ok(map) = BitMap::<32>::parse(&text) {
                prop_assert_eq!(map.value & !map.mask, 0);
                prop_assert_eq!(map.mask >> 32, 0);
            }
            let _ = BitMap::<64>::parse(&text);
        }

        /// Any JSON body is read or refused, never a panic.
        #[test]
        fn template_bodies_never_panic(body in "\\{\"(cpuid_modifiers|msr_modifiers|kvm_capabilities)\": \\[.{0,120}\\]\\}") {
            if let Ok(template) = serde_json::from_str::<CpuTemplate>(&body) {
                let _ = template.validate();
            }
        }

        /// Numbers in every notation read back as the number; signs, leading zeros of a decimal
        /// and too many digits are refused.
        #[test]
        fn numbers_read_in_every_notation(n in any::<u32>()) {
            prop_assert_eq!(parse_number(&format!("{n:#x}")), Ok(n));
            prop_assert_eq!(parse_number(&format!("{n:#b}")), Ok(n));
            prop_assert_eq!(parse_number(&n.to_string()), Ok(n));
            for refused in [format!("+{n}"), format!("0x+{n:x}"), format!("0{n}"), format!("0x{n:09x}")] {
                prop_assert!(parse_number(&refused).is_err(), "{}", refused);
            }
        }

        /// Any text is a number or refused, never a panic.
        #[test]
        fn number_texts_never_panic(text in "(0x|0b)?[0-9a-fA-F+ -]{0,12}") {
            let _ = parse_number(&text);
        }
    }
}
