//! What a user asks for: the description of one VM, independent of how it was given (flags, API,
//! file). It lives in the KVM-free `model` crate, so clients can speak it without the engine.

pub use model::config::*;

#[cfg(test)]
mod tests {
    use super::*;

    /// The model crate restates the device models' limits without depending on them; they must
    /// agree.
    #[test]
    fn the_models_limits_are_the_devices_limits() {
        assert_eq!(VSOCK_MIN_CID, virtio::vsock::MIN_GUEST_CID);
        assert_eq!(VSOCK_MAX_CID, virtio::vsock::MAX_GUEST_CID);
        assert_eq!(TAP_NAME_MAX_BYTES, virtio::net::TAP_NAME_MAX_BYTES);
        assert_eq!(DISK_ID_MAX_BYTES, virtio::block::ID_BYTES);
        assert_eq!(MAX_VCPUS, arch::layout::MAX_VCPUS);
        assert_eq!(MIN_MEMORY_BYTES, arch::layout::MIN_MEMORY);
        assert_eq!(MAX_CMDLINE_BYTES, arch::layout::CMDLINE_MAX_SIZE - 1);
    }
}
