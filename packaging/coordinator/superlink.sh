#!/bin/sh
# The federation's SuperLink (flwr 1.42): TLS with the certificate in FAME_FED_TLS_DIR,
# only registered SuperNodes admitted (--enable-supernode-auth), runs and nodes kept in
# FAME_FED_DATABASE across restarts, no run-time dependency installation, telemetry and
# update checks off. Settings: coordinator.env (FAME_FED_ENV=/path/coordinator.env).
set -eu
. "$(dirname "$0")/_common.sh"
need FAME_FED_TLS_DIR "make it with make_certs.py test-ca (tests) or csr (a real CA)"
for f in server.crt server.key ca.crt; do
    need_file="$FAME_FED_TLS_DIR/$f"
    if [ ! -r "$need_file" ]; then
        echo "$0: $need_file is missing; make_certs.py writes server.crt, server.key, ca.crt" >&2
        exit 2
    fi
done
if [ -z "${FAME_FED_DATABASE:-}" ]; then
    echo "$0: FAME_FED_DATABASE is not set: without it the SuperLink forgets its nodes" >&2
    exit 2
fi
if [ "$FAME_FED_DATABASE" != ":flwr-in-memory:" ]; then
    mkdir -p "$(dirname "$FAME_FED_DATABASE")"
fi
exec "$FAME_FED_BIN/flower-superlink" \
    --ssl-certfile "$FAME_FED_TLS_DIR/server.crt" \
    --ssl-keyfile "$FAME_FED_TLS_DIR/server.key" \
    --ssl-ca-certfile "$FAME_FED_TLS_DIR/ca.crt" \
    --enable-supernode-auth \
    --database "$FAME_FED_DATABASE" \
    --disable-runtime-dependency-installation \
    --host "$FAME_FED_HOST" \
    --port "$FAME_FED_PORT" \
    "$@"
