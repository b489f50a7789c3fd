# shellcheck shell=bash disable=SC2034  # RXE_VM_INSTALL_ERROR is read by the sourcing scripts
# Shared helpers for scripts/rxe-vm/*.sh (sourced, not executed).

rxe_vm_log() { printf 'rxe-vm: %s\n' "$*" >&2; }

# rxe_vm_skip MESSAGE: the environment cannot run the VM; exit 77 (the automake/ctest "skip" code).
rxe_vm_skip() {
  printf 'rxe-vm: SKIP: %s\n' "$*" >&2
  exit 77
}

# rxe_vm_as_root: prints the command prefix that runs a command as root ("" when already root,
# "sudo -n" when password-less sudo works); returns 1 when neither is possible.
rxe_vm_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    echo ""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    echo "sudo -n"
  else
    return 1
  fi
}

# rxe_vm_install PACKAGE...: tries to apt-get install the packages (no recommends). Returns 1 and
# sets RXE_VM_INSTALL_ERROR when it cannot (not root, KVC_RXE_VM_NO_INSTALL=1, apt failure).
RXE_VM_INSTALL_ERROR=""
rxe_vm_install() {
  local prefix out
  if [ "${KVC_RXE_VM_NO_INSTALL:-0}" = 1 ]; then
    RXE_VM_INSTALL_ERROR="KVC_RXE_VM_NO_INSTALL=1 forbids installing"
    return 1
  fi
  if ! prefix=$(rxe_vm_as_root); then
    RXE_VM_INSTALL_ERROR="not root and no password-less sudo; run: apt-get install $*"
    return 1
  fi
  rxe_vm_log "installing missing Debian packages: $*"
  # shellcheck disable=SC2086  # $prefix is empty or "sudo -n"
  if out=$(DEBIAN_FRONTEND=noninteractive $prefix apt-get install -y -qq --no-install-recommends "$@" 2>&1); then
    return 0
  fi
  # The package lists may be stale or absent: refresh once and retry.
  # shellcheck disable=SC2086
  if out=$($prefix apt-get update -qq 2>&1) &&
    out=$(DEBIAN_FRONTEND=noninteractive $prefix apt-get install -y -qq --no-install-recommends "$@" 2>&1); then
    return 0
  fi
  RXE_VM_INSTALL_ERROR="apt-get install $* failed: $(printf '%s' "$out" | tail -n 1)"
  return 1
}
