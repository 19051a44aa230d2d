#!/usr/bin/env bash
# Create, or repair, the node's data folders so that patient data is not world-readable.
#   packaging/data-dirs.sh ROOT OWNER GROUP        (install.sh runs it as root)
# ROOT and its folders (work, work/logs, results, quarantine, outbox, models) become
# OWNER:GROUP, mode 2750: the node writes, GROUP (the GUI's users) reads, others nothing;
# setgid, so what is created below them belongs to GROUP whoever creates it. Anything an
# earlier install or a node started by hand left open to others (the database was 0644,
# the data folder 0755) loses its "other" bits. The inbox is the site's (the PACS or
# scanner writes into it with the permissions the site gave it): not touched.
set -euo pipefail
if [ $# -ne 3 ]; then
    echo "usage: $0 ROOT OWNER GROUP (e.g. $0 /var/lib/fame-node fame-node fame-node)" >&2
    exit 2
fi
ROOT=${1%/} OWNER=$2 GROUP=$3
install -d -m 2750 -o "$OWNER" -g "$GROUP" "$ROOT"
for d in work work/logs results quarantine outbox models; do
    install -d -m 2750 -o "$OWNER" -g "$GROUP" "$ROOT/$d"
done
# Symlinks are left alone: chown and chmod would change what they point at.
find "$ROOT" -mindepth 1 -path "$ROOT/inbox" -prune -o ! -type l \
    -exec chown "$OWNER:$GROUP" {} + -exec chmod o-rwx {} +
find "$ROOT" -path "$ROOT/inbox" -prune -o -type d -exec chmod g+s {} +
# The TensorRT engine cache (runtime.engine_cache_dir): engines are native code the node
# loads, so only the node's user may write there (its records/ folder is checked 0700).
install -d -m 0700 -o "$OWNER" -g "$GROUP" "$ROOT/engines"
chmod 0700 "$ROOT/engines"
