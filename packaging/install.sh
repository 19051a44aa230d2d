#!/usr/bin/env bash
# Install FAME Node as a systemd service (run as root from a checkout of the repository).
#   sudo packaging/install.sh            installs to /opt/fame-node, config in /etc/fame-node
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/fame-node
# Group fame-node is the GUI's: clinicians' accounts are added to it to read the store,
# results and logs (usermod -aG fame-node USER); nobody else can read them.
getent group fame-node >/dev/null || groupadd --system fame-node
id fame-node >/dev/null 2>&1 || useradd --system --gid fame-node --home /var/lib/fame-node --shell /usr/sbin/nologin fame-node
mkdir -p "$PREFIX" /etc/fame-node/trusted-keys
cp -r "$SRC/appliance" "$SRC/trainer" "$SRC/exporters" "$SRC/models" \
      "$SRC/pyproject.toml" "$SRC/README.md" "$PREFIX/"
python3 -m venv "$PREFIX/.venv"
"$PREFIX/.venv/bin/pip" install --quiet --upgrade pip
"$PREFIX/.venv/bin/pip" install --quiet "$PREFIX"
[ -f /etc/fame-node/config.toml ] || cp "$SRC/packaging/config.toml" /etc/fame-node/config.toml
# Data folders 2750 fame-node:fame-node, and no "other" access to anything already there.
"$SRC/packaging/data-dirs.sh" /var/lib/fame-node fame-node fame-node
install -m 0644 "$SRC/packaging/fame-node.service" /etc/systemd/system/fame-node.service
FAME_NODE_CONFIG=/etc/fame-node/config.toml runuser -u fame-node -- "$PREFIX/.venv/bin/fame-node" config check
systemctl daemon-reload
echo "installed. Start with: systemctl enable --now fame-node; follow with: journalctl -u fame-node -f"
echo "GUI users read the node's data as members of group fame-node: usermod -aG fame-node USER"
