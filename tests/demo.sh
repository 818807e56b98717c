#!/usr/bin/env bash
# make demo: alice gets a credential, is registered, exchanges keys, calls
# whoami, posts an encrypted echo, rekeys, and calls whoami again — against
# the service `make run` serves, or one this script starts for the occasion.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(softhsm/dev-env.sh var)"
listen=${CUSTOS_LISTEN:-127.0.0.1:8443}
url=http://$listen
demo=var/demo

up() { timeout 1 bash -c "</dev/tcp/${listen%:*}/${listen##*:}" 2>/dev/null; }
step() { printf '\n== %s\n' "$*"; }

if ! up; then
  step "no service on $url: starting custosd (stopped when the demo ends)"
  bin/custosd init >/dev/null
  bin/custosd serve 2>var/demo-custosd.log &
  pid=$!
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
  for _ in $(seq 50); do up && break; sleep 0.1; done
  up || { cat var/demo-custosd.log; exit 1; }
fi

rm -rf "$demo" && mkdir -p "$demo"
custos() { bin/custos --key "$demo/alice.key" --state "$demo/state" "$@"; }

step "custos keygen: alice's credential (private part in $demo/alice.key, mode 0600)"
bin/custos keygen --out "$demo/alice.key" | tee "$demo/alice.pub"

step "custosd account add alice@example.com: the operator registers it"
bin/custosd account add alice@example.com --credential "$demo/alice.pub"

step "custos exchange $url"
custos exchange "$url"

step "custos get $url/v1/whoami"
custos get "$url/v1/whoami"

step "custos post $url/v1/echo --encrypt (body and response travel as JWE)"
custos post "$url/v1/echo" --data "hello from alice" --encrypt

step "custos rekey $url"
custos rekey "$url"

step "custos get $url/v1/whoami (the new ticket: generation 1)"
custos get "$url/v1/whoami"

step "done"
