#!/bin/sh
# The flwr CLI's connection to this coordinator's SuperLink: writes the connection
# FAME_FED_CONNECTION into $FLWR_HOME/config.toml (TLS against FAME_FED_TLS_DIR/ca.crt).
# Usage: connect.sh [ADDRESS]   (default FAME_FED_HOST:FAME_FED_PORT)
set -eu
. "$(dirname "$0")/_common.sh"
need FLWR_HOME "create it (mkdir -p) or set FLWR_HOME in coordinator.env"
need FAME_FED_TLS_DIR "make it with make_certs.py"
address="${1:-$FAME_FED_HOST:$FAME_FED_PORT}"
cat > "$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "$FAME_FED_CONNECTION"

[superlink.$FAME_FED_CONNECTION]
address = "$address"
root-certificates = "$FAME_FED_TLS_DIR/ca.crt"
TOML
echo "flwr connection '$FAME_FED_CONNECTION' -> $address (TLS, CA $FAME_FED_TLS_DIR/ca.crt)"
