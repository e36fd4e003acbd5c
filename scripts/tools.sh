#!/usr/bin/env bash
# Install the Debian packages the tests run as tools, where they are missing:
#   docker-compose  validates docker/compose.yaml (`docker-compose config`; no Docker engine needed)
#   prometheus      promtool checks docker/prometheus/, and a real Prometheus scrapes a worker
#   chromium        the browser tests (Playwright drives Debian's chromium)
# Each is looked up with `command -v` first, so a machine that has them installs nothing and needs
# no root. Installing needs root (apt-get), as on the CI machine; a failed install fails loudly.
set -euo pipefail

declare -A package_of=([docker-compose]=docker-compose [promtool]=prometheus [chromium]=chromium)

missing=()
for tool in docker-compose promtool chromium; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "tools: installing ${missing[*]} (apt-get)"
if [ "$(id -u)" -ne 0 ]; then
  echo "tools: ${missing[*]} missing and not root: run 'sudo apt-get install ${missing[*]}'" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$log" 2>&1; then
  cat "$log" >&2
  echo "tools: apt-get install ${missing[*]} failed (log above)" >&2
  exit 1
fi
for tool in docker-compose promtool chromium; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "tools: $tool still missing after installing ${missing[*]}" >&2
    exit 1
  fi
done
echo "tools: installed ${missing[*]}"
