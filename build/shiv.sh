#!/usr/bin/env bash
# Build dist/reproq-<os>-<arch>-py<major><minor>.pyz (+ .sha256) from the working tree with shiv.
#
#   build/shiv.sh                 # uses python3 from PATH (must be >= 3.12, with shiv installed)
#   PYTHON=/path/to/python build/shiv.sh
#
# The zipapp is compressed and reproducible: file times come from SOURCE_DATE_EPOCH (default:
# the last commit's time), so the same tree and interpreter give the same bytes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

os=$(uname -s | tr '[:upper:]' '[:lower:]')
arch=$(uname -m)
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
name="reproq-${os}-${arch}-py${pyver}.pyz"
out="$root/dist/$name"

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
export SOURCE_DATE_EPOCH

mkdir -p "$root/dist"
"$python" -m shiv \
    --console-script reproq \
    --python "/usr/bin/env python${pyver:0:1}.${pyver:1}" \
    --compressed \
    --reproducible \
    --output-file "$out" \
    --quiet \
    "$root"

(cd "$root/dist" && sha256sum "$name" > "$name.sha256")
echo "$out"
