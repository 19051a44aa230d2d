# Shared by the coordinator scripts: the settings (FAME_FED_*; see coordinator.env), read
# from $FAME_FED_ENV when set, checked once. Sourced, never run.
if [ -n "${FAME_FED_ENV:-}" ]; then
    if [ ! -r "$FAME_FED_ENV" ]; then
        echo "$0: FAME_FED_ENV=$FAME_FED_ENV cannot be read; point it at a coordinator.env" >&2
        exit 2
    fi
    set -a
    # shellcheck disable=SC1090
    . "$FAME_FED_ENV"
    set +a
fi
: "${FAME_FED_HOST:=127.0.0.1}"
: "${FAME_FED_PORT:=9092}"
: "${FAME_FED_CONNECTION:=coordinator}"
: "${FAME_FED_BIN:=$(cd "$(dirname "$0")/../../.venv/bin" 2>/dev/null && pwd)}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
# flower-superlink starts flower-superexec (and it the ServerApp) from PATH.
export PATH="$FAME_FED_BIN:$PATH"

need() {  # need NAME: the variable NAME must be set and name an existing path
    eval "value=\${$1:-}"
    if [ -z "$value" ]; then
        echo "$0: $1 is not set; set it in coordinator.env (FAME_FED_ENV) or the environment" >&2
        exit 2
    fi
    if [ ! -e "$value" ]; then
        echo "$0: $1=$value does not exist; $2" >&2
        exit 2
    fi
}
