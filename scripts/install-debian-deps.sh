#!/usr/bin/env bash
# Installs the Debian packages the test suite drives as real components:
# exporters (softflowd, pmacct), the reference collector (nfdump), rsyslog, and chromium
# (the browser the web page tests drive through Playwright), PostgreSQL 15 (the state
# database's server for a cluster; the tests start their own with initdb and pg_ctl), and
# ClickHouse (the sessions of a cluster; the tests start two servers of their own), and
# nats-server (JetStream: the partial alert windows of several collectors; the tests start one),
# and util-linux-extra (fincore: what of a file is in the page cache).
# Idempotent: does nothing when everything is present.
set -euo pipefail
packages=(softflowd nfdump nfdump-sflow pmacct rsyslog openssl chromium postgresql-15 clickhouse-server clickhouse-client nats-server util-linux-extra)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Do not start the packaged daemons: the tests start their own instances.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}"
