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
# Power-off: this kernel has no ACPI, so `poweroff -f` alone would only halt the
# CPU forever (machine_power_off -> no pm_power_off -> machine_halt).  /init
# therefore first writes SLP_TYP=5|SLP_EN (0x34) to Kestrel's power-management
# port 0x600 through /dev/port (Kestrel exits with status 0), and falls back to
# `poweroff -f`.  kestrel.exit=reboot uses `reboot -f` instead (with reboot=k
# this resets through the i8042, which Kestrel reports as exit status 3).

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
	ENV=/etc/kit-shrc setsid cttyhack sh
	status=$?
	if [ -s /run/kestrel-exit ]; then exit_mode=$(cat /run/kestrel-exit); fi
else
	sh -c "$cmd" </dev/console >/dev/console 2>&1
	status=$?
fi

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
