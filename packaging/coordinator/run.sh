#!/bin/sh
# Start a federated run: this project's ServerApp (trainer/federated/app) on the
# SuperLink, the global models signed with FAME_FED_SIGNING_KEY and written to
# FAME_FED_OUT/<UTC time>/ (or FAME_FED_RUN_OUT), starting from the verified weights of FAME_FED_BUNDLE.
# Usage: run.sh [KEY=VALUE ...]   run config overrides, e.g. num-server-rounds=20
#        min-nodes=3 secagg=true strategy='"fedprox"' (keys: trainer/federated/settings.py;
#        strings in double quotes, TOML style). Streams the run's log until it ends.
set -eu
. "$(dirname "$0")/_common.sh"
need FAME_FED_BUNDLE "a bundle with torch weights (trainer.train writes them)"
need FAME_FED_SIGNING_KEY "make it with: fame-node models keygen PREFIX (keep PREFIX.key here)"
: "${FAME_FED_OUT:?set FAME_FED_OUT (where the signed global models go)}"
app="$(cd "$(dirname "$0")/../../trainer/federated/app" && pwd)"
out="${FAME_FED_RUN_OUT:-$FAME_FED_OUT/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
config="initial-bundle=\"$FAME_FED_BUNDLE\" signing-key=\"$FAME_FED_SIGNING_KEY\" out-dir=\"$out\""
for kv in "$@"; do
    config="$config $kv"
done
echo "run: global models into $out"
exec "$FAME_FED_BIN/flwr" run "$app" "$FAME_FED_CONNECTION" --stream --run-config "$config"
