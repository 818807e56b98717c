#!/usr/bin/env bash
# Creates a SoftHSM2 token in a private directory and prints the environment
# that points Custos at it:
#
#   eval "$(softhsm/setup.sh DIR LABEL PIN)"
#
# Installs SoftHSM2 with apt-get when it is missing. Idempotent: a token with
# LABEL that already exists in DIR is kept. The SO PIN is random and thrown
# away: Custos never needs it.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 DIR LABEL PIN" >&2
  exit 2
fi
dir=$1 label=$2 pin=$3

if ! command -v softhsm2-util >/dev/null 2>&1; then
  echo "softhsm/setup.sh: installing softhsm2" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=; else sudo=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq softhsm2 >&2
fi

module=
for m in /usr/lib/softhsm/libsofthsm2.so \
         /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -f "$m" ]; then module=$m; break; fi
done
if [ -z "$module" ]; then
  echo "softhsm/setup.sh: libsofthsm2.so not found after installing softhsm2" >&2
  exit 1
fi

mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
dir=$(cd "$dir" && pwd)
conf="$dir/softhsm2.conf"
cat >"$conf" <<CONF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
export SOFTHSM2_CONF=$conf

labels() {
  softhsm2-util --show-slots 2>/dev/null |
    sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' | sed 's/[[:space:]]*$//'
}
if ! labels | grep -Fxq -- "$label"; then
  so_pin=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >&2
fi

printf 'export SOFTHSM2_CONF=%q\n' "$conf"
printf 'export CUSTOS_PKCS11_MODULE=%q\n' "$module"
