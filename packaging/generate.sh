#!/usr/bin/env bash
# Regenerates the man pages and shell completions the Debian package ships, from the
# clap definitions (`dedisk manpages`, `dedisk completions`). Run it after changing a
# command or flag; the e2e test packaging::generated_files_are_current fails until then.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p dedisk
bin=target/debug/dedisk
rm -rf packaging/man packaging/completions
"$bin" manpages packaging/man
mkdir -p packaging/completions
"$bin" completions bash > packaging/completions/dedisk.bash
"$bin" completions zsh > packaging/completions/_dedisk
"$bin" completions fish > packaging/completions/dedisk.fish
