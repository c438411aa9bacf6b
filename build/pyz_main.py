"""The zipapp's ``__main__.py``: build/shiv.sh writes it in place of shiv's own.

shiv's bootstrap imports compileall, subprocess, hashlib, zipfile and more on every run: about
100 ms of a warm ``reproq --help``, against ~25 ms for the interpreter itself. Once the build
is unpacked, all it does is put the unpacked site-packages on sys.path and call the entry
point; this does that much itself. The first run (which unpacks), a SHIV_* variable other than
SHIV_ROOT (SHIV_INTERPRETER, SHIV_FORCE_EXTRACT, ...) and a ``$NAME`` root still go to shiv's
bootstrap, unchanged.
"""

import os
import site
import sys

# Filled in by build/shiv.sh from the zipapp's environment.json.
BUILD_ID = "@BUILD_ID@"
ENTRY_MODULE = "@ENTRY_MODULE@"
ENTRY_NAME = "@ENTRY_NAME@"


def unpacked() -> str | None:
    """Where shiv unpacked this build's site-packages, when its bootstrap has nothing else
    to do (shiv's cache_path: the root, then the archive's resolved name and the build id)."""
    if any(name.startswith("SHIV_") and name != "SHIV_ROOT" for name in os.environ):
        return None
    root = os.environ.get("SHIV_ROOT") or "~/.shiv"
    if root.startswith("$"):
        return None
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    site_packages = os.path.join(os.path.expanduser(root), f"{name}_{BUILD_ID}", "site-packages")
    return site_packages if os.path.exists(site_packages) else None


def run(site_packages: str) -> None:
    # The same sys.path as shiv's bootstrap makes: this site-packages (and what its .pth files
    # add) ahead of the interpreter's first site-packages.
    length = len(sys.path)
    index = length
    for i, part in enumerate(sys.path):
        if os.path.splitext(os.path.basename(part))[0] in ("site-packages", "dist-packages"):
            index = i or length
            break
    site.addsitedir(site_packages)
    sys.path = sys.path[:index] + sys.path[length:] + sys.path[index:length]
    module = __import__(ENTRY_MODULE, fromlist=[ENTRY_NAME])
    sys.exit(getattr(module, ENTRY_NAME)())


if __name__ == "__main__":
    found = unpacked()
    if found is None:
        import _bootstrap

        _bootstrap.bootstrap()
    else:
        run(found)
