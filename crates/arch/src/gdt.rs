//! Segment descriptors for the boot GDT, and the matching KVM segment register state.

use kvm_bindings::kvm_segment;

/// Packs a descriptor from its access/flags word (`0xF0FF` mask: flags nibble in bits
/// 12–15, access byte in 0–7), base and 20-bit limit.
pub(crate) const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xFF00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_F0FF) << 40)
        | ((limit & 0x000F_0000) << (48 - 16))
        | ((base & 0x00FF_FFFF) << 16)
        | (limit & 0x0000_FFFF)
}

/// The hidden segment-register state a CPU would load from `entry` at GDT slot `index`.
pub(crate) fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let bit = |shift: u32| ((entry >> shift) & 1) as u8;
    let present = bit(47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: index * 8,
        type_: ((entry >> 40) & 0xF) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

fn base(entry: u64) -> u64 {
    ((entry >> 32) & 0xFF00_0000) | ((entry >> 16) & 0x00FF_FFFF)
}

/// The limit in bytes, as KVM wants it: scaled by 4 KiB when the granularity bit is set.
fn limit(entry: u64) -> u32 {
    let raw = (((entry >> 32) & 0x000F_0000) | (entry & 0xFFFF)) as u32;
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xFFF
    } else {
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_64_bit_code_segment() {
        let entry = gdt_entry(0xA09B, 0, 0xF_FFFF);
        assert_eq!(entry, 0x00AF_9B00_0000_FFFF);
        let seg = segment_from_gdt(entry, 1);
        assert_eq!((seg.selector, seg.base, seg.limit), (0x8, 0, 0xFFFF_FFFF));
        assert_eq!((seg.type_, seg.s, seg.present, seg.dpl), (0xB, 1, 1, 0));
        assert_eq!((seg.l, seg.db, seg.g, seg.unusable), (1, 0, 1, 0));
    }

    #[test]
    fn base_and_byte_granular_limit_round_trip() {
        let seg = segment_from_gdt(gdt_entry(0x008B, 0x1234_5678, 0x67), 3);
        assert_eq!((seg.selector, seg.base, seg.limit, seg.g), (0x18, 0x1234_5678, 0x67, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
