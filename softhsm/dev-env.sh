#!/usr/bin/env bash
# Prints the environment for a local custosd on the embedded defaults: a
# SoftHSM2 token labelled "custos" under VAR/softhsm (PIN kept in VAR/pin,
# mode 0600) and the SQLite registry VAR/custos.db.
#
#   eval "$(softhsm/dev-env.sh var)"
set -euo pipefail
var=${1:-var}
mkdir -p "$var"
chmod 700 "$var"
var=$(cd "$var" && pwd)
if [ ! -s "$var/pin" ]; then
  (umask 077; od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$var/pin")
fi
bash "$(dirname "$0")/setup.sh" "$var/softhsm" custos "$(cat "$var/pin")"
printf 'export CUSTOS_TOKEN_LABEL=custos\n'
printf 'export CUSTOS_PIN_FILE=%q\n' "$var/pin"
printf 'export CUSTOS_DB=%q\n' "$var/custos.db"
