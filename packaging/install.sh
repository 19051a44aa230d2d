#!/usr/bin/env bash
# Install (or update) FAME Node as a systemd service on a Linux host. Run as root from a
# checkout of the repository:
#
#   sudo packaging/install.sh [options]
#
#   --prefix DIR         program files and the virtualenv       (default /opt/fame-node)
#   --config-dir DIR     config.toml, trusted-keys/, federation/ (default /etc/fame-node)
#   --data-dir DIR       store, results, logs, engine cache      (default /var/lib/fame-node)
#   --unit-dir DIR       systemd units                           (default /etc/systemd/system)
#   --logrotate-dir DIR  logrotate file                          (default /etc/logrotate.d)
#   --user NAME          service user and group, created when missing (default fame-node)
#   --python PATH        interpreter of the virtualenv, 3.11 or newer (default python3)
#   --gpu auto|yes|no    the gpu extra: auto = when nvidia-smi lists a GPU (default auto)
#   --extras LIST        more extras, comma-separated: gui, federation, jpeg-gpl, demo
#   --deps-from VENV     use the packages already installed in VENV (a .pth file) and
#                        install only the node itself, offline (tests, air-gapped updates)
#   --no-doctor          do not run `fame-node doctor` at the end
#   --print-plan         say what would be installed and why; change nothing
#
# Idempotent: run it again to update the node. An existing config.toml is never replaced;
# the program files, the units and the logrotate file are. Nothing is downloaded but what
# pip fetches from its configured index (pip.conf / PIP_INDEX_URL: point it at the
# hospital's mirror); nothing is sent anywhere. Exit code: doctor's (1 when something
# blocks the node), 2 for bad options, other non-zero when a step failed.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=/opt/fame-node
CONFIG_DIR=/etc/fame-node
DATA_DIR=/var/lib/fame-node
UNIT_DIR=/etc/systemd/system
LOGROTATE_DIR=/etc/logrotate.d
SERVICE_USER=fame-node
PYTHON=python3
GPU=auto
EXTRAS=""
DEPS_FROM=""
DOCTOR=1
PLAN_ONLY=0
TORCH_PIN="torch==2.13.0"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "install.sh: $*" >&2; exit 1; }
absolute() {
    case "$2" in
        /*) ;;
        *) echo "install.sh: $1 must be an absolute path, got '$2'" >&2; exit 2 ;;
    esac
    case "$2" in
        *[[:space:]\"\'\\#]*) echo "install.sh: $1 '$2' has spaces, quotes or #;" \
            "systemd units and the config need a plain path" >&2; exit 2 ;;
    esac
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2%/}; shift ;;
        --config-dir) CONFIG_DIR=${2%/}; shift ;;
        --data-dir) DATA_DIR=${2%/}; shift ;;
        --unit-dir) UNIT_DIR=${2%/}; shift ;;
        --logrotate-dir) LOGROTATE_DIR=${2%/}; shift ;;
        --user) SERVICE_USER=$2; shift ;;
        --python) PYTHON=$2; shift ;;
        --gpu) GPU=$2; shift ;;
        --extras) EXTRAS=$2; shift ;;
        --deps-from) DEPS_FROM=${2%/}; shift ;;
        --no-doctor) DOCTOR=0 ;;
        --print-plan) PLAN_ONLY=1 ;;
        -h|--help) usage ;;
        *) echo "install.sh: unknown option '$1'" >&2; usage ;;
    esac
    shift
done
for pair in "--prefix=$PREFIX" "--config-dir=$CONFIG_DIR" "--data-dir=$DATA_DIR" \
            "--unit-dir=$UNIT_DIR" "--logrotate-dir=$LOGROTATE_DIR"; do
    absolute "${pair%%=*}" "${pair#*=}"
done
case "$GPU" in auto|yes|no) ;; *) echo "install.sh: --gpu takes auto, yes or no, got '$GPU'" >&2; exit 2 ;; esac
case "$SERVICE_USER" in
    ""|*[!a-z0-9_-]*|-*) echo "install.sh: --user '$SERVICE_USER' is not a plain user name" \
        "(lower-case letters, digits, - and _)" >&2; exit 2 ;;
esac
GROUP=$SERVICE_USER

# --- what this machine needs -----------------------------------------------------------
# The gpu extra (onnxruntime-gpu, tensorrt) only where a working NVIDIA driver lists a GPU:
# on a CPU host it would install ~3 GB of CUDA libraries that can never run.
gpu_reason=""
if [ "$GPU" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi -L 2>/dev/null) \
        && [ -n "$gpus" ]; then
        GPU=yes; gpu_reason="nvidia-smi lists $(printf '%s\n' "$gpus" | wc -l) GPU(s): $(printf '%s' "$gpus" | head -n1 | cut -c1-80)"
    elif ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
        GPU=no; gpu_reason="/dev/nvidia0 exists but nvidia-smi does not list a GPU: fix the driver, then run again with --gpu yes"
    else
        GPU=no; gpu_reason="no NVIDIA GPU (no nvidia-smi, no /dev/nvidia0): CPU inference with onnxruntime"
    fi
else
    gpu_reason="--gpu $GPU given"
fi
extras=()
[ "$GPU" = yes ] && extras+=(gpu)
IFS=',' read -r -a more <<<"$EXTRAS"
for e in "${more[@]}"; do
    case "$e" in
        "") ;;
        gpu|gui|federation|jpeg-gpl|demo|train) [[ " ${extras[*]} " == *" $e "* ]] || extras+=("$e") ;;
        *) echo "install.sh: unknown extra '$e' (gpu, gui, federation, jpeg-gpl, demo, train)" >&2; exit 2 ;;
    esac
done
# torch comes only with an extra that needs it (federation: opacus; train), pinned.
needs_torch=0 torch_for=""
for e in "${extras[@]}"; do
    case "$e" in federation|train) needs_torch=1; torch_for="$torch_for $e" ;; esac
done
extras_csv=$(IFS=,; echo "${extras[*]}")

echo "FAME Node install from $SRC"
echo "  program: $PREFIX   config: $CONFIG_DIR   data: $DATA_DIR   user: $SERVICE_USER"
echo "  extras: ${extras_csv:-none} (gpu: $gpu_reason)"
[ "$needs_torch" = 1 ] && echo "  torch: $TORCH_PIN (needed by:$torch_for)"
[ -n "$DEPS_FROM" ] && echo "  packages: reused from $DEPS_FROM (--deps-from), only the node is installed"
[ "$PLAN_ONLY" = 1 ] && exit 0

[ "$(id -u)" = 0 ] || die "run as root (sudo $0 ...): it creates a user, folders and units"
command -v "$PYTHON" >/dev/null 2>&1 || die "no interpreter '$PYTHON'; install Python 3.11+ or give --python PATH"
PYTHON=$(command -v "$PYTHON")
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); the node needs 3.11 or newer (--python PATH)"

# --- the service user; group fame-node is also the GUI's ---------------------------------
# Clinicians' accounts join the group to read the store, results and logs
# (usermod -aG fame-node USER); nobody else can read them.
getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    useradd --system --gid "$GROUP" --home-dir "$DATA_DIR" --no-create-home \
        --shell /usr/sbin/nologin --comment "FAME Node service" "$SERVICE_USER"
fi
# The venv's interpreter must be runnable by the service user (a pyenv Python under
# /root is not): say so now rather than let the service fail at its first start.
runuser -u "$SERVICE_USER" -- "$PYTHON" -c '' 2>/dev/null \
    || die "$SERVICE_USER cannot run $PYTHON (is it under a private home such as /root?); give --python /usr/bin/python3.11 or another system-wide Python"

# --- program files: root's, read-only to the service -------------------------------------
install -d -m 0755 "$PREFIX" "$PREFIX/models"
rm -rf "$PREFIX/src.new" "$PREFIX/models/default.new"
mkdir "$PREFIX/src.new"
cp -r "$SRC/appliance" "$SRC/trainer" "$SRC/exporters" "$SRC/gui" "$SRC/pyproject.toml" \
      "$SRC/README.md" "$PREFIX/src.new/"
[ -f "$SRC/LICENSE" ] && cp "$SRC/LICENSE" "$PREFIX/src.new/"
find "$PREFIX/src.new" -name __pycache__ -prune -exec rm -rf {} +
cp -r "$SRC/models/default" "$PREFIX/models/default.new"
rm -rf "$PREFIX/src" "$PREFIX/models/default"
mv "$PREFIX/src.new" "$PREFIX/src"
mv "$PREFIX/models/default.new" "$PREFIX/models/default"
chown -R root:root "$PREFIX/src" "$PREFIX/models"
chmod -R u=rwX,go=rX "$PREFIX/src" "$PREFIX/models"

# --- the virtualenv ------------------------------------------------------------------------
VENV=$PREFIX/.venv
want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)" != "$want" ]; then
    echo "  the virtualenv is not Python $want: recreated"
    rm -rf "$VENV"
fi
if [ -n "$DEPS_FROM" ]; then
    site=$("$DEPS_FROM/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    [ "$("$DEPS_FROM/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$want" ] \
        || die "--deps-from $DEPS_FROM is not Python $want"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --without-pip "$VENV"
    vsite=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$site" >"$vsite/fame-node-deps.pth"
    "$VENV/bin/python" -m pip install --quiet --no-input --no-deps --no-build-isolation \
        --no-index --force-reinstall "$PREFIX/src"
    # The commands of the extras' packages (flower-supernode, ...) as pip would write them,
    # so the units find them in this venv as after a normal install.
    ORT_DISABLE_TELEMETRY=1 "$VENV/bin/python" - "$VENV/bin" "$extras_csv" <<'PY'
import sys
from importlib import metadata
from pathlib import Path
from packaging.requirements import Requirement
bin_dir, extras = Path(sys.argv[1]), [e for e in sys.argv[2].split(",") if e]
for spec in metadata.requires("fame-node") or []:
    req = Requirement(spec)
    if not req.marker or not any(req.marker.evaluate({"extra": e}) for e in extras):
        continue
    for ep in metadata.distribution(req.name).entry_points.select(group="console_scripts"):
        module, _, attr = ep.value.partition(":")
        script = bin_dir / ep.name
        script.write_text(
            f"#!{bin_dir / 'python'}\nimport sys\nfrom {module} import {attr.split('.')[0]}\n"
            f"sys.exit({attr}())\n"
        )
        script.chmod(0o755)
PY
else
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    rm -f "$VENV"/lib/python*/site-packages/fame-node-deps.pth
    spec="$PREFIX/src"
    [ -n "$extras_csv" ] && spec="$PREFIX/src[$extras_csv]"
    pins=()
    [ "$needs_torch" = 1 ] && pins+=("$TORCH_PIN")
    "$VENV/bin/pip" install --quiet --no-input "$spec" "${pins[@]}"
    if [ "$GPU" = yes ]; then
        # onnxruntime (a dependency) and onnxruntime-gpu install the same module files:
        # keep only the GPU build, reinstalled over whatever the other one left.
        ver=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("onnxruntime-gpu"))')
        "$VENV/bin/pip" uninstall --quiet -y onnxruntime
        "$VENV/bin/pip" install --quiet --no-input --no-deps --force-reinstall "onnxruntime-gpu==$ver"
    fi
fi
chown -R root:root "$VENV"
chmod -R go-w "$VENV"

# --- the config: written once, never replaced ----------------------------------------------
install -d -m 0750 -o root -g "$GROUP" "$CONFIG_DIR" "$CONFIG_DIR/trusted-keys" \
    "$CONFIG_DIR/federation"
CONFIG=$CONFIG_DIR/config.toml
if [ -f "$CONFIG" ]; then
    echo "  kept the existing $CONFIG (the shipped one: $SRC/packaging/config.toml)"
else
    # The node reads it, root changes it: 0640 root:GROUP.
    sed -e "s#/var/lib/fame-node#$DATA_DIR#g" -e "s#/opt/fame-node#$PREFIX#g" \
        -e "s#/etc/fame-node#$CONFIG_DIR#g" "$SRC/packaging/config.toml" >"$CONFIG.new"
    chown root:"$GROUP" "$CONFIG.new"
    chmod 0640 "$CONFIG.new"
    mv "$CONFIG.new" "$CONFIG"
    echo "  wrote $CONFIG"
fi

# --- data folders: 2750, engine cache 0700, nothing open to others ---------------------------
"$SRC/packaging/data-dirs.sh" "$DATA_DIR" "$SERVICE_USER" "$GROUP"
as_service() {  # as the unit runs it: the service user, UMask=0027, a clean environment
    (umask 0027; runuser -u "$SERVICE_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin \
        HOME="$DATA_DIR" LANG=C.UTF-8 FAME_NODE_CONFIG="$CONFIG" ORT_DISABLE_TELEMETRY=1 \
        FLWR_TELEMETRY_ENABLED=0 "$@")
}
as_service "$VENV/bin/fame-node" config check >/dev/null \
    || die "fame-node config check fails for $CONFIG (run it as $SERVICE_USER to see why)"

# --- systemd units and log rotation ----------------------------------------------------------
render() {  # the shipped file with this installation's paths and user
    sed -e "s#/var/lib/fame-node#$DATA_DIR#g" -e "s#/opt/fame-node#$PREFIX#g" \
        -e "s#/etc/fame-node#$CONFIG_DIR#g" -e "s#^User=fame-node\$#User=$SERVICE_USER#" \
        -e "s#^Group=fame-node\$#Group=$GROUP#" -e "s#^    su fame-node fame-node\$#    su $SERVICE_USER $GROUP#" "$1"
}
install -d -m 0755 "$UNIT_DIR" "$LOGROTATE_DIR"
render "$SRC/packaging/fame-node.service" >"$UNIT_DIR/fame-node.service"
chmod 0644 "$UNIT_DIR/fame-node.service"
SUPERNODE_UNIT=""
if [[ " ${extras[*]} " == *" federation "* ]]; then
    SUPERNODE_UNIT=$UNIT_DIR/fame-node-supernode.service
    render "$SRC/packaging/fame-node-supernode.service" >"$SUPERNODE_UNIT"
    chmod 0644 "$SUPERNODE_UNIT"
    [ -f "$CONFIG_DIR/supernode.env" ] || {
        render "$SRC/packaging/supernode.env" >"$CONFIG_DIR/supernode.env"
        chown root:"$GROUP" "$CONFIG_DIR/supernode.env"; chmod 0640 "$CONFIG_DIR/supernode.env"
    }
fi
render "$SRC/packaging/fame-node.logrotate" >"$LOGROTATE_DIR/fame-node"
chmod 0644 "$LOGROTATE_DIR/fame-node"

# What was installed, for `fame-node doctor` (found next to the venv) and for IT staff.
ORT_DISABLE_TELEMETRY=1 "$VENV/bin/python" - "$PREFIX/install.json" \
    installed_at "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" source "$SRC" prefix "$PREFIX" \
    config "$CONFIG" data_dir "$DATA_DIR" user "$SERVICE_USER" group "$GROUP" \
    python "$PYTHON" extras "$extras_csv" extras_reason "$gpu_reason" deps_from "$DEPS_FROM" \
    unit "$UNIT_DIR/fame-node.service" supernode_unit "$SUPERNODE_UNIT" \
    logrotate "$LOGROTATE_DIR/fame-node" <<'PY'
import json, sys
pairs = sys.argv[2:]
record = {k: (v or None) for k, v in zip(pairs[::2], pairs[1::2])}
record["extras"] = [e for e in (record["extras"] or "").split(",") if e]
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    json.dump(record, fh, indent=2)
    fh.write("\n")
PY
chmod 0644 "$PREFIX/install.json"

if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
    systemctl daemon-reload
fi

echo "installed."
echo "  start:   systemctl enable --now fame-node; follow: journalctl -u fame-node -f"
[ -n "$SUPERNODE_UNIT" ] && echo "  federation: set SUPERLINK in $CONFIG_DIR/supernode.env, put the CA and key in $CONFIG_DIR/federation/, then systemctl enable --now fame-node-supernode"
echo "  GUI users read the node's data as members of group $GROUP: usermod -aG $GROUP USER"

status=0
if [ "$DOCTOR" = 1 ]; then
    echo
    echo "fame-node doctor, as $SERVICE_USER:"
    as_service "$VENV/bin/fame-node" doctor || status=$?
fi
exit "$status"
