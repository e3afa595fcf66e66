"""hysn-firecracker-python (PyPI), unchanged, driving Kestrel as `firecracker`.

Run by crates/kestrel/tests/compat_python_sdk.rs inside a private mount namespace (a tmpfs on
/var/lib/firecracker, the SDK's fixed state directory, and one on /usr/local/bin holding only the
SDK's fixed binary path /usr/local/bin/firecracker, a symlink to Kestrel) and a network namespace
whose default route leaves through `eth0` (the SDK names the guest's card after the host's uplink
and makes its own tap). Every step goes through the SDK's own classes (MicroVM, VMMManager): create
(boot), list (the SDK finds its VMs by the process name `firecracker`), pause, resume, snapshot,
delete, then a new MicroVM restored from the snapshot (the SDK always sends `network_overrides`
and `resume_vm`), and delete again. Prints one line per step; exits 1 at the first failure.

Usage: python hysn_firecracker_python.py KERNEL ROOTFS OVERLAY WORKDIR
"""

import os
import re
import sys

import docker

# MicroVM() calls docker.from_env(), which asks a Docker daemon for its API version; the SDK uses
# Docker only to build root filesystems from container images, which this script does not ask for.
docker.from_env = lambda *args, **kwargs: None

from firecracker import MicroVM  # noqa: E402 (after the Docker stand-in)
from firecracker.vmm import VMMManager  # noqa: E402


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def machine(kernel, rootfs, overlay, name):
    # The test guest reads `exit=hang` from its command line (it then spins until stopped); the
    # SDK puts `init=<init_file>` there when the root is an overlay, so that is where it goes.
    return MicroVM(
        name=name,
        kernel_file=kernel,
        base_rootfs=rootfs,
        overlayfs=True,
        overlayfs_file=overlay,
        init_file="/sbin/init exit=hang",
        vcpu=1,
        memory=128,
        ip_addr="172.16.0.2",
    )


def main():
    kernel, rootfs, overlay, workdir = sys.argv[1:5]
    memory, snapshot = os.path.join(workdir, "vm.mem"), os.path.join(workdir, "vm.snap")
    manager = VMMManager()

    vm = machine(kernel, rootfs, overlay, "compat")
    created = vm.create()
    match = re.fullmatch(r"VMM (\w{8}) created", created)
    check(match, f"create: {created}")
    vm_id = match.group(1)
    check([v["id"] for v in manager.list_vmm()] == [vm_id], "list_vmm finds the process named firecracker")
    check(manager.get_vmm_state(vm_id) == "Running", "the instance is Running")

    check(vm.pause() == f"VMM {vm_id} paused successfully", "pause")
    check(manager.get_vmm_state(vm_id) == "Paused", "the instance is Paused")
    check(vm.resume() == f"VMM {vm_id} resumed successfully", "resume")
    check(manager.get_vmm_state(vm_id) == "Running", "the instance is Running again")

    vm.snapshot(action="create", memory_path=memory, snapshot_path=snapshot)
    check(os.path.getsize(memory) >= 128 << 20 and os.path.getsize(snapshot) > 100, "snapshot files written")
    check(manager.get_vmm_state(vm_id) == "Running", "running after the snapshot")
    check(vm.delete() == f"VMM {vm_id} is deleted", "delete")
    check(manager.list_vmm() == [], "no VM is left")

    restored = machine(kernel, rootfs, overlay, "restored")
    created = restored.create(snapshot=True, memory_path=memory, snapshot_path=snapshot)
    match = re.fullmatch(r"VMM (\w{8}) created", created)
    check(match, f"create from the snapshot: {created}")
    restored_id = match.group(1)
    check(manager.get_vmm_state(restored_id) == "Running", "the restored instance is Running")
    check(restored.pause() == f"VMM {restored_id} paused successfully", "pause the restored VM")
    check(restored.resume() == f"VMM {restored_id} resumed successfully", "resume the restored VM")
    check(restored.delete() == f"VMM {restored_id} is deleted", "delete the restored VM")
    print("hysn-firecracker-python: all steps passed", flush=True)


if __name__ == "__main__":
    main()
