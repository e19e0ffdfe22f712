#!/usr/bin/env bash
# Run the kernel_matrix tests inside ../shared/tools/vm-run: Debian's Linux 6.1, pure
# cgroup v2 (memory, pids, cpu, io enabled at the root), landlock ABI 2.
#
#   tests/kernel_matrix/run-in-vm.sh [TEST_FILTER...]
#
# Builds `dsbox`, `dsbox-probe` and the test executable on the host (debug profile, the
# same artifacts `cargo test --workspace` builds), boots the VM with the checkout shared
# read-write, runs the tests there with DSBOX_KERNEL_MATRIX=require (a host that cannot
# run them fails instead of skipping), and FAILS unless every listed test ran and passed.
#
# Environment: DSBOX_VM_RUN (vm-run's path; default ../shared/tools/vm-run),
# DSBOX_MATRIX_LANDLOCK_ABI (the ABI the VM's kernel must report; default 2),
# DSBOX_MATRIX_THREADS (test threads in the VM; default 2), DSBOX_MATRIX_MEM (VM memory;
# default 4G), VM_RUN_TIMEOUT (seconds before the VM is killed; default here 1800).
# The two parts that run inside the VM are POSIX sh; the host part is bash.
set -eu

# ---------------------------------------------------------------- inside the VM, stage 2
# After leaving vm-run's chroot: mount cgroup2, then run the tests.
if [ "${1:-}" = --stage2 ]; then
  shift
  work=$1 exe=$2; shift 2
  cd "$work"
  # vm-run mounted cgroup2 under a sysfs that its 9p root shows at /proc as well (both
  # directories are one inode over 9p), now hidden by procfs: mount it where it is seen.
  mkdir -p /run/cgroup2
  mount -t cgroup2 cgroup2 /run/cgroup2
  echo "kernel_matrix: VM kernel $(uname -r); cgroup2 at /run/cgroup2 with" \
    "$(cat /run/cgroup2/cgroup.controllers) (enabled: $(cat /run/cgroup2/cgroup.subtree_control))"
  exec "$exe" --test-threads="$DSBOX_MATRIX_THREADS" "$@"
fi

# ---------------------------------------------------------------- inside the VM, stage 1
# vm-run chroots into the host's / (9p) without making it the mount namespace's root.
# The kernel refuses user namespaces to chrooted processes, so first leave the chroot
# and move the 9p root onto / (what switch_root does), then continue in stage 2.
if [ "${1:-}" = --inside ]; then
  shift
  # vm-run's 9p root shows /proc and /sys as one directory, holding sysfs: mount procfs.
  mount -t proc proc /proc
  exec /usr/bin/python3 - "$0" "$(pwd)" "$@" <<'PY'
import os, sys
script, work, args = sys.argv[1], sys.argv[2], sys.argv[3:]
# Escape the chroot: chroot into a subdirectory while the cwd stays outside it, then
# walk up to the real root (root may do this; it is how a chroot is left).
os.makedirs("/run/kernel-matrix-escape", exist_ok=True)
os.chdir("/")
os.chroot("/run/kernel-matrix-escape")
for _ in range(64):
    os.chdir("..")
os.chroot(".")
newroot = "/newroot"  # where vm-run's init mounted the 9p root
if not os.path.exists(newroot + script):
    sys.exit(f"run-in-vm.sh: cannot find vm-run's root at {newroot} after leaving the chroot; has vm-run's init changed?")
os.chdir(newroot)
os.execv("/bin/busybox", ["busybox", "sh", "-c",
         'mount --move . / && exec chroot . /bin/sh "$@"', "sh",
         script, "--stage2", work, *args])
PY
fi

# ---------------------------------------------------------------- on the host
set -o pipefail
cd "$(dirname "$0")/../.."
vm_run=${DSBOX_VM_RUN:-$(pwd)/../shared/tools/vm-run}
if [ ! -x "$vm_run" ]; then
  echo "run-in-vm.sh: vm-run not found at $vm_run: set DSBOX_VM_RUN to its path (it lives in ../shared/tools/)" >&2
  exit 2
fi
echo "==> building dsbox, dsbox-probe and the kernel_matrix tests" >&2
cargo build -q -p dsbox-cli -p dsbox-tests --bins
exe=$(cargo test -q --no-run -p dsbox-tests --test kernel_matrix --message-format=json |
  grep '"name":"kernel_matrix"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
  echo "run-in-vm.sh: cannot find the kernel_matrix test executable in cargo's output" >&2
  exit 1
fi
# The zygote tests need a rootfs; the VM has no network and sees the host read-only, so
# build `minimal` (Python only, seconds) into a store beside the test executable here.
store=$(dirname "$(dirname "$(dirname "$exe")")")/dsbox-kernel-matrix/store
if [ ! -e "$store/names/minimal" ]; then
  echo "==> building the minimal rootfs into $store" >&2
  "$(dirname "$(dirname "$exe")")/dsbox" rootfs build --profile minimal --store "$store" >&2
fi
listed=$("$exe" --list --format terse "$@" 2>/dev/null | grep -c ': test$' || true)
if [ "$listed" -eq 0 ]; then
  echo "run-in-vm.sh: no kernel_matrix test matches ${*:-(no filter)}" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "==> running $listed kernel_matrix tests in $vm_run (emulated; boot ~10 s)" >&2
start=$(date +%s)
set +e
VM_RUN_TIMEOUT=${VM_RUN_TIMEOUT:-1800} "$vm_run" --mem "${DSBOX_MATRIX_MEM:-4G}" --cpus 2 -- \
  env DSBOX_KERNEL_MATRIX=require \
  DSBOX_MATRIX_LANDLOCK_ABI="${DSBOX_MATRIX_LANDLOCK_ABI:-2}" \
  DSBOX_MATRIX_THREADS="${DSBOX_MATRIX_THREADS:-2}" DSBOX_MATRIX_STORE="$store" RUST_BACKTRACE=1 \
  sh "$(pwd)/tests/kernel_matrix/run-in-vm.sh" --inside "$exe" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))

result=$(grep '^test result: ' "$log" | tail -1 || true)
passed=$(printf '%s\n' "$result" | sed -n 's/.* \([0-9][0-9]*\) passed;.*/\1/p')
failed=$(printf '%s\n' "$result" | sed -n 's/.* \([0-9][0-9]*\) failed;.*/\1/p')
kernel=$(sed -n 's/^kernel_matrix: VM kernel \([^;]*\);.*/\1/p' "$log" | head -1)
echo
echo "kernel_matrix in vm-run (Linux ${kernel:-?}): ${passed:-0} of $listed tests ran and passed, ${failed:-?} failed; VM step ${elapsed}s wall"
if [ "$rc" -ne 0 ] || [ -z "$passed" ] || [ "$passed" -ne "$listed" ] || [ "${failed:-1}" -ne 0 ]; then
  echo "kernel_matrix: FAILED (exit $rc; expected all $listed tests to run and pass inside the VM)" >&2
  exit 1
fi
