# Where the checks' tools that are not crates live (Python venvs, the unpacked nginx), beside the
# build in the target directory, so that a second run reuses them and `cargo clean` removes them.
# Sourced, not run, from the repository's root.
#   TOOLS_DIR                  the directory
#   install_tools NAME...      scripts/install-tools.sh NAME...: installs those still missing
TOOLS_DIR="$(realpath -m "${CARGO_TARGET_DIR:-target}/tools")"

install_tools() {
  "$(dirname "${BASH_SOURCE[0]}")/../install-tools.sh" "$@"
}
