//! Whatever chains a guest makes up, in either mode: every one is completed (or the queue moves
//! past it), nothing panics, the used length never exceeds what the chain lets the device write,
//! and the disk does not grow.

use proptest::prelude::*;

use super::*;

/// One made-up request: its header's type and sector, its data buffers (length, device-writable)
/// and whether it ends in a writable status byte.
#[derive(Clone, Debug)]
struct MadeUp {
    request_type: u32,
    sector: u64,
    data: Vec<(u32, bool)>,
    status: bool,
    header_writable: bool,
}

fn made_up() -> impl Strategy<Value = MadeUp> {
    let request_type = prop_oneof![
        Just(VIRTIO_BLK_T_IN),
        Just(VIRTIO_BLK_T_OUT),
        Just(VIRTIO_BLK_T_FLUSH),
        Just(VIRTIO_BLK_T_GET_ID),
        Just(VIRTIO_BLK_T_DISCARD),
        Just(VIRTIO_BLK_T_WRITE_ZEROES),
        any::<u32>(),
    ];
    let sector = prop_oneof![0..SECTORS + 4, Just(u64::MAX), any::<u64>()];
    let data = prop::collection::vec((prop_oneof![0u32..1100, Just(512u32)], any::<bool>()), 0..4);
    (request_type, sector, data, any::<bool>(), prop::bool::weighted(0.1)).prop_map(
        |(request_type, sector, data, status, header_writable)| MadeUp {
            request_type,
            sector,
            data,
            status,
            header_writable,
        },
    )
}

/// The chain of request `index` of a batch, its buffers in their own slice of guest memory.
fn chain_of(memory: &GuestRam, index: u64, request: &MadeUp) -> Vec<Buffer> {
    let header_at = HEADER + 0x100 * index;
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&request.request_type.to_le_bytes());
    header[8..].copy_from_slice(&request.sector.to_le_bytes());
    memory.write_slice(&header, GuestAddress(header_at)).unwrap();
    let mut chain = vec![Buffer(header_at, 16, request.header_writable)];
    let mut at = DATA + 0x2000 * index;
    for &(len, writable) in &request.data {
        chain.push(Buffer(at, len, writable));
        at += 0x600;
    }
    if request.status {
        chain.push(Buffer(STATUS + 0x100 * index, 1, true));
    }
    chain
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn made_up_requests_are_answered_within_their_buffers(
        requests in prop::collection::vec(made_up(), 1..6),
        deferred in any::<bool>(),
    ) {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let chains: Vec<Vec<Buffer>> =
            requests.iter().enumerate().map(|(i, r)| chain_of(&memory, i as u64, r)).collect();
        let mode = if deferred { DEFERRED } else { ON_THE_SPOT };
        let (used, _) = serve_in(mode, &memory, raw_disk(&path, false), &chains, Arc::default());
        for (chain, used) in chains.iter().zip(used) {
            let writable: u32 = chain.iter().filter(|b| b.2).map(|b| b.1).sum();
            prop_assert!(used <= writable, "used {used} of {writable} writable bytes");
        }
        prop_assert_eq!(std::fs::metadata(&path).unwrap().len(), SECTORS * 512);
    }
}
