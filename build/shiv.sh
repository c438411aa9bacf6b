#!/usr/bin/env bash
# Build reproq-<os>-<arch>-py<major><minor>.pyz (+ .sha256) from the working tree with shiv.
#
#   build/shiv.sh                       # python3 from PATH; writes into dist/
#   PYTHON=/path/to/python build/shiv.sh --out-dir /some/dir
#
# The interpreter must be >= 3.12 with shiv installed (pip install 'reproq[build]'); the zipapp
# targets that interpreter's version, OS and machine (psycopg's binary wheel is per platform).
# The output path is printed on stdout; pip's messages go to stderr.
#
# Reproducible: the same tree, interpreter and dependency versions give the same bytes, from
# any checkout path. File times come from SOURCE_DATE_EPOCH (default: the last commit's time),
# file modes are normalised, and what pip writes that names this machine (the checkout URL in
# direct_url.json, console scripts with this interpreter's path) is dropped before zipping.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
out_dir="$root/dist"

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out-dir) out_dir=${2:?--out-dir needs a directory}; shift 2 ;;
        --out-dir=*) out_dir=${1#--out-dir=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument: $1" >&2; echo "hint: build/shiv.sh [--out-dir DIR]" >&2; exit 2 ;;
    esac
done

if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
    echo "error: $python is not Python >= 3.12" >&2
    echo "hint: PYTHON=/path/to/python3.12 build/shiv.sh" >&2
    exit 1
fi
if ! "$python" -m shiv --version >/dev/null 2>&1; then
    echo "error: shiv is not installed for $python" >&2
    echo "hint: $python -m pip install 'reproq[build]' (or: pip install shiv)" >&2
    exit 1
fi

# The same name manage.py reproq install asks for (reproq_django.installer.asset_name).
name=$("$python" -c 'import platform, sys
v = sys.version_info
print(f"reproq-{platform.system().lower()}-{platform.machine().lower()}-py{v[0]}{v[1]}.pyz")')
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
export SOURCE_DATE_EPOCH

work=$(mktemp -d "${TMPDIR:-/tmp}/reproq-shiv.XXXXXX")
partial=""
trap 'rm -rf "$work" ${partial:+"$partial"}' EXIT
mkdir -p "$work/src" "$work/site-packages"

# Build from a copy: setuptools writes build/ and *.egg-info into the source tree, and two
# builds (or a build and the wheel test) in one checkout would race on them.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (
        cd "$root"
        git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
            tar --null -T - -cf -
    ) | tar -C "$work/src" -xf -
else
    tar -C "$root" --exclude=./dist --exclude=./build/lib --exclude='./build/bdist*' -cf - . |
        tar -C "$work/src" -xf -
fi

"$python" -m pip install --quiet --disable-pip-version-check --no-compile \
    --target "$work/site-packages" "$work/src" >&2

"$python" - "$work/site-packages" <<'EOF'
"""Drop what names this machine: the checkout URL and interpreter-specific console scripts."""
import csv
import io
import shutil
import sys
from pathlib import Path

site = Path(sys.argv[1])
shutil.rmtree(site / "bin", ignore_errors=True)  # shiv runs the entry point, not these scripts
for record in site.glob("*.dist-info/RECORD"):
    (record.parent / "direct_url.json").unlink(missing_ok=True)
    rows = [
        row
        for row in csv.reader(io.StringIO(record.read_text()))
        if row and not row[0].startswith("../") and not row[0].endswith("/direct_url.json")
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    record.write_text(buffer.getvalue())
EOF
# shiv stores each file's mode, which would otherwise depend on the umask.
chmod -R u+rwX,go+rX,go-w "$work/site-packages"

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
out="$out_dir/$name"
partial="$out_dir/.$name.partial.$$"
# shiv builds the zipapp in place; build under another name so readers never see half a file.
"$python" -m shiv \
    --site-packages "$work/site-packages" \
    --console-script reproq \
    --python "/usr/bin/env python$pyver" \
    --compressed \
    --reproducible \
    --output-file "$partial" >&2
"$python" - "$partial" "$root/build/pyz_main.py" <<'EOF'
"""Put build/pyz_main.py in place of shiv's __main__.py (it skips shiv's bootstrap once the
build is unpacked), with this build's id and entry point; every other entry is kept as is."""
import json
import sys
import zipfile
from pathlib import Path

path, template = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
with zipfile.ZipFile(path) as archive:
    entries = [(info, archive.read(info)) for info in archive.infolist()]
    environment = json.loads(archive.read("environment.json"))
module, _, name = (environment["entry_point"] or "").partition(":")
if not (module and name.isidentifier()):
    sys.exit(f"error: shiv's entry point {environment['entry_point']!r} is not module:function")
# What pyz_main.py's short way does not do: a build that asks for one of these needs shiv's.
unsupported = ("root", "preamble", "no_modify", "extend_pythonpath", "prepend_pythonpath",
               "always_write_cache", "script")
asked = [option for option in unsupported if environment.get(option)]
if asked:
    sys.exit(f"error: build/pyz_main.py does not handle shiv's {', '.join(asked)}")
main = (
    template.replace("@BUILD_ID@", environment["build_id"])
    .replace("@ENTRY_MODULE@", module)
    .replace("@ENTRY_NAME@", name)
)
data = path.read_bytes()
prefix = data[: min(info.header_offset for info, _ in entries)]  # shiv's shebang line
with path.open("wb") as out:
    out.write(prefix)
    with zipfile.ZipFile(out, "w") as rewritten:
        for info, content in entries:
            rewritten.writestr(info, main.encode() if info.filename == "__main__.py" else content)
EOF
"$python" - "$partial" "$out" <<'EOF'
import hashlib
import os
import sys
from pathlib import Path

partial, out = Path(sys.argv[1]), Path(sys.argv[2])
digest = hashlib.sha256(partial.read_bytes()).hexdigest()
os.replace(partial, out)
checksum = out.with_name(out.name + ".sha256")
checksum.with_name(checksum.name + ".partial").write_text(f"{digest}  {out.name}\n")
os.replace(checksum.with_name(checksum.name + ".partial"), checksum)
EOF
echo "$out"
