# Helpers shared by the launchers; sourced, not run.
# shellcheck shell=bash

# die MESSAGE: prints "<script>: MESSAGE" to stderr and exits 2 (a usage error).
die() {
  echo "${0##*/}: $*" >&2
  exit 2
}

# quote ARGS...: the arguments as one shell-safe line (for --dry-run output and remote commands).
quote() {
  local arg out=""
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%^-]+$ ]]; then
      out+=" $arg"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s' "${out# }"
}
