#!/usr/bin/env bash
# Builds the Debian package target/debian/imageapi_<version>_<arch>.deb: the three binaries (release
# profile), the systemd unit, /etc/default/imageapi, man pages and shell completions (generated
# here by the freshly built `imageapi`). Installs cargo-deb into target/tools when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=${CARGO_TARGET_DIR:-target}
cargo_deb=(cargo deb)
if ! cargo deb --version >/dev/null 2>&1; then
  if [ ! -x target/tools/bin/cargo-deb ]; then
    echo "installing cargo-deb into target/tools"
    cargo install --quiet --locked cargo-deb --version 3.8.0 --root target/tools
  fi
  cargo_deb=(target/tools/bin/cargo-deb)
fi

cargo build --release --bin imageapi-server --bin imageapi --bin imageapi-init
# Generated assets go under ./target whatever CARGO_TARGET_DIR says: cargo-deb reads them by
# the paths in Cargo.toml.
assets=target/package
rm -rf "$assets"
mkdir -p "$assets/completions"
"$target/release/imageapi" man "$assets/man"
"$target/release/imageapi" completions bash > "$assets/completions/imageapi"
"$target/release/imageapi" completions zsh > "$assets/completions/_imageapi"
"$target/release/imageapi" completions fish > "$assets/completions/imageapi.fish"
"${cargo_deb[@]}" --no-build --package imageapi "$@"
