#!/bin/sh
# Admit a hospital's SuperNode: register the ECDSA P-384 public key (OpenSSH format, the
# .pub of `ssh-keygen -t ecdsa -b 384`) it sent. Prints the node id the SuperLink gives.
# Usage: register-node.sh PUBLIC_KEY NAME     (NAME: e.g. the hospital, for `list-nodes`)
set -eu
. "$(dirname "$0")/_common.sh"
if [ $# -ne 2 ]; then
    echo "usage: $0 PUBLIC_KEY NAME  (the hospital's .pub file and a name for it)" >&2
    exit 2
fi
key="$1"
need key "the hospital sends its .pub file (ssh-keygen -t ecdsa -b 384)"
exec "$FAME_FED_BIN/flwr" supernode register "$key" "$FAME_FED_CONNECTION" --name "$2" --format json
