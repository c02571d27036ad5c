#!/usr/bin/env bash
# Install the Debian packages a make target needs, only those missing.
# Usage: scripts/system-deps.sh tts|browser ...
# Prints what it installs; fails with a clear message when it cannot.
set -euo pipefail

declare -A CHECK=(
  [espeak-ng]="command -v espeak-ng"
  [flite]="command -v flite"
  [festival]="command -v text2wave"
  [festvox-us-slt-hts]="test -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts"
  [festvox-kallpc16k]="test -d /usr/share/festival/voices/english/kal_diphone"
  [festvox-kdlpc16k]="test -d /usr/share/festival/voices/english/ked_diphone"
  [chromium]="command -v chromium"
)
declare -A GROUP=(
  [tts]="espeak-ng flite festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k"
  [browser]="chromium"
)

missing=()
for group in "$@"; do
  [[ -n "${GROUP[$group]:-}" ]] || { echo "system-deps: unknown group '$group' (known: ${!GROUP[*]})" >&2; exit 2; }
  for pkg in ${GROUP[$group]}; do
    eval "${CHECK[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
  done
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "system-deps: installing Debian packages: ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "system-deps: need root (or password-less sudo) to install: ${missing[*]}" >&2
    echo "system-deps: install them yourself: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "system-deps: apt-get not found; install these packages with your system's package manager: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || { echo "system-deps: apt-get update failed (no network to the Debian mirror?)" >&2; exit 1; }
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || { echo "system-deps: apt-get install failed for: ${missing[*]}" >&2; exit 1; }
echo "system-deps: installed ${missing[*]}"
