#!/bin/sh
# Kestrel guest kit: /init of the initramfs (busybox-static).
#
# Command to run, in order of precedence:
#   kestrel.run=<cmd>    on the kernel command line; <cmd> is percent-encoded
#                        (%20 = space, %3B = ';', %25 = '%', %22 = '"', ...),
#                        decoded and run with `sh -c`.  The kernel ignores
#                        parameters with a dot, so it never reaches init's argv.
#   -- words ...         everything after ` -- ` on the kernel command line (read
#                        from /proc/cmdline, run with `sh -c`).  init's own argv is
#                        not used: Linux also puts unknown options there (6.1 reports
#                        "noxsave" as unknown although arch code consumes it).
#   (neither)            an interactive shell on the console; `exit` or `poweroff`
#                        in it powers off, `reboot` reboots.
# After a command, prints "kestrel-kit: command exited <status>" and powers off.
#
# The ACPI power button (Kestrel's SendPowerButton action): the kernel reports it
# as a KEY_POWER input event; /init then prints "kestrel-kit: power button
# pressed", hangs up the command (or the shell) and powers off as after a
# command.
#
# Power-off: /init writes SLP_TYP=5|SLP_EN (0x34) to Kestrel's power-management
# port 0x600 through /dev/port (Kestrel exits with status 0), and falls back to
# `poweroff -f`, which with ACPI does the same through the FADT's sleep control
# register (without ACPI, acpi=off, it would only halt the CPU forever).  The
# port write works either way.  kestrel.exit=reboot uses `reboot -f` instead
# (with reboot=k this resets through the i8042, which Kestrel reports as exit
# status 3).

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root TERM=linux

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

run=
exit_mode=poweroff
set -f		# no globbing of kernel command-line words
for word in $(cat /proc/cmdline); do
	case "$word" in
	kestrel.run=*) run="${word#kestrel.run=}" ;;
	kestrel.exit=*) exit_mode="${word#kestrel.exit=}" ;;
	esac
done

if [ -n "$run" ]; then
	cmd=$(printf '%s' "$run" | sed 's/%\([0-9A-Fa-f][0-9A-Fa-f]\)/\\x\1/g')
	cmd=$(printf '%b' "$cmd")
elif case " $(cat /proc/cmdline) " in *" -- "*) true ;; *) false ;; esac; then
	cmdline=" $(cat /proc/cmdline) "
	cmd=${cmdline#* -- }
else
	cmd=
fi

# Reads the power button's input events on fd 3; on a press, asks for a power-off
# and hangs up every process but init, whose wait for the command then returns.
watch_power_button() {
	# struct input_event on x86_64: 16 bytes of time, then type and code (u16) and
	# value (s32): words 9, 10 and 11 of od's unsigned 16-bit dump.
	while event=$(dd bs=24 count=1 2>/dev/null <&3 | od -An -tu2 | tr -s ' \n' '  '); do
		set -- $event
		[ $# -ge 11 ] || return		# the device went away
		# EV_KEY (1), KEY_POWER (116), pressed (1)
		if [ "$9" = 1 ] && [ "${10}" = 116 ] && [ "${11}" = 1 ]; then
			echo "kestrel-kit: power button pressed" >/dev/console
			echo poweroff > /run/kestrel-exit
			kill -HUP -1
			return
		fi
	done
}

# The button's event device is opened here, before "init started": a press after
# that line is queued even if the watcher has not run yet.
set +f
for dev in /sys/class/input/event*; do
	[ "$(cat "$dev/device/name" 2>/dev/null)" = "Power Button" ] || continue
	node=/dev/input/${dev##*/}
	# A failed redirection of exec would end this (non-interactive) shell: check first.
	if [ -c "$node" ] && [ -r "$node" ]; then
		exec 3<"$node"
		watch_power_button &
	fi
	break
done

echo "kestrel-kit: init started"

if [ -z "$cmd" ]; then
	# busybox `poweroff`/`reboot` (without -f) only signal PID 1, which this script
	# ignores; in the shell they are functions instead that leave it, and init then
	# powers off (or reboots) as after a command.
	cat > /etc/kit-shrc <<-'RC'
	poweroff() { exit 0; }
	reboot() { echo reboot > /run/kestrel-exit; exit 0; }
	RC
	echo "kestrel-kit: no command (kestrel.run= or -- ...), starting a shell; exit or poweroff powers off"
	ENV=/etc/kit-shrc setsid cttyhack sh 3<&-
	status=$?
else
	sh -c "$cmd" </dev/console >/dev/console 2>&1 3<&-
	status=$?
fi
# The shell's reboot, or the power button, asks for its way out here.
if [ -s /run/kestrel-exit ]; then exit_mode=$(cat /run/kestrel-exit); fi

echo "kestrel-kit: command exited $status"
sync

case "$exit_mode" in
reboot)
	reboot -f ;;
halt)
	poweroff -f ;;
*)
	# Kestrel's power-off port (0x600 = 1536): writing 0x34 ends the VM.
	printf '\064' | dd of=/dev/port bs=1 seek=1536 count=1 2>/dev/null
	poweroff -f ;;
esac
# Not reached unless all of the above failed.
while :; do sleep 3600; done
