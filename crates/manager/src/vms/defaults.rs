//! What the daemon fills in that the user left out, kept stable across edits: each card's MAC
//! (52:54:00 and three bytes from the VM's UUID and the card's index) and each disk's ID.

use model::config::MacAddress;
use model::manager::vm::VmDefinition;

/// Fills in MACs and disk IDs. `previous` is the stored definition being edited: a card or disk
/// at the same index keeps what it was given before. The indexes of the cards whose MACs the
/// daemon chose (which it may choose again if another VM has them); the others were the user's.
pub fn fill_in(definition: &mut VmDefinition, uuid: &str, previous: Option<&VmDefinition>) -> Vec<usize> {
    let mut taken_macs: Vec<String> = definition.nics.iter().filter_map(|n| n.mac.clone()).collect();
    let mut chosen = Vec::new();
    for index in 0..definition.nics.len() {
        if definition.nics[index].mac.is_some() {
            continue;
        }
        let kept = previous.and_then(|p| p.nics.get(index)).and_then(|n| n.mac.clone());
        let mac = kept
            .filter(|m| !taken_macs.contains(m))
            .unwrap_or_else(|| mac_for(uuid, index, 0, |m| taken_macs.contains(m)));
        // Later cards must not get this one too.
        taken_macs.push(mac.clone());
        definition.nics[index].mac = Some(mac);
        chosen.push(index);
    }
    for index in 0..definition.disks.len() {
        if definition.disks[index].id.is_some() {
            continue;
        }
        let taken = |id: &str| definition.disks.iter().any(|d| d.id.as_deref() == Some(id));
        let kept =
            previous.and_then(|p| p.disks.get(index)).and_then(|d| d.id.clone()).filter(|id| !taken(id));
        let id = kept.unwrap_or_else(|| {
            (index..).map(|n| format!("disk{n}")).find(|id| !taken(id)).unwrap_or_default()
        });
        definition.disks[index].id = Some(id);
    }
    chosen
}

/// Another MAC for card `index` (the first was in use by another VM): the next one in the
/// UUID's sequence that `taken` does not refuse.
pub fn another_mac(uuid: &str, index: usize, taken: impl FnMut(&String) -> bool) -> String {
    mac_for(uuid, index, 1, taken)
}

/// A locally administered-looking QEMU-style MAC, 52:54:00:xx:xx:xx, from the UUID and index
/// (FNV-1a), skipping those `taken` says are in use.
fn mac_for(uuid: &str, index: usize, first_salt: u32, mut taken: impl FnMut(&String) -> bool) -> String {
    (first_salt..)
        .map(|salt| {
            let mut hash: u32 = 0x811c_9dc5;
            for byte in uuid.bytes().chain((index as u64).to_le_bytes()).chain(salt.to_le_bytes()) {
                hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
            }
            let [a, b, c, _] = hash.to_le_bytes();
            MacAddress([0x52, 0x54, 0x00, a, b, c]).to_string()
        })
        .find(|mac| !taken(mac))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::manager::vm::{DiskDefinition, NicDefinition};

    fn definition() -> VmDefinition {
        let mut definition: VmDefinition = serde_json::from_str(r#"{"name": "a", "kernel": "/k"}"#).unwrap();
        definition.nics = vec![
            NicDefinition { tap: Some("t0".into()), ..Default::default() },
            NicDefinition { tap: Some("t1".into()), ..Default::default() },
        ];
        definition.disks = vec![
            DiskDefinition { path: Some("/a".into()), ..Default::default() },
            DiskDefinition { path: Some("/b".into()), id: Some("disk0".into()), ..Default::default() },
        ];
        definition
    }

    #[test]
    fn filled_in_values_are_valid_distinct_and_stable() {
        let mut first = definition();
        fill_in(&mut first, "uuid-1", None);
        assert_eq!(first.validate(), Ok(()));
        let macs: Vec<_> = first.nics.iter().map(|n| n.mac.clone().unwrap()).collect();
        assert!(macs[0].starts_with("52:54:00:") && macs[0] != macs[1], "{macs:?}");
        assert_eq!(first.disks[0].id.as_deref(), Some("disk1"));

        let mut again = definition();
        fill_in(&mut again, "uuid-1", None);
        assert_eq!(again, first, "the same UUID gives the same values");

        let mut edited = definition();
        edited.nics.swap(0, 1);
        fill_in(&mut edited, "uuid-1", Some(&first));
        assert_eq!(edited.nics[0].mac, first.nics[0].mac, "an edit keeps the card's MAC by index");
    }

    #[test]
    fn generated_macs_never_repeat_within_a_definition() {
        let mut definition = definition();
        definition.nics = vec![NicDefinition { tap: Some("t".into()), ..Default::default() }; 64];
        let chosen = fill_in(&mut definition, "uuid-2", None);
        assert_eq!(chosen.len(), 64);
        let mut macs: Vec<_> = definition.nics.iter().map(|n| n.mac.clone().unwrap()).collect();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), 64);
        let other = another_mac("uuid-2", 0, |m| macs.contains(m));
        assert!(!macs.contains(&other));
    }
}
