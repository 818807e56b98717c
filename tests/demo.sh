#!/usr/bin/env bash
# make demo: for each profile (group 14, then P-256) alice gets a credential,
# is registered, exchanges keys, calls
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

# One walk per profile: the seed's group 14 (the default), then P-256.
for profile in modp2048 p256; do
  key=$demo/alice-$profile.key
  custos() { bin/custos --key "$key" --state "$demo/state" "$@"; }

  step "[$profile] custos keygen --profile $profile: alice's credential (private part in $key, mode 0600)"
  bin/custos keygen --profile "$profile" --out "$key" | tee "$demo/alice-$profile.pub"

  step "[$profile] custosd account add alice@example.com: the operator registers it"
  bin/custosd account add alice@example.com --credential "$demo/alice-$profile.pub"

  step "[$profile] custos exchange $url"
  custos exchange "$url"

  step "[$profile] custos get $url/v1/whoami"
  custos get "$url/v1/whoami"

  step "[$profile] custos post $url/v1/echo --encrypt (body and response travel as JWE)"
  custos post "$url/v1/echo" --data "hello from alice" --encrypt

  step "[$profile] custos rekey $url"
  custos rekey "$url"

  step "[$profile] custos get $url/v1/whoami (the new ticket: generation 1)"
  custos get "$url/v1/whoami"
done

step "done"
