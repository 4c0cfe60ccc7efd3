"""Fail when the wheel lacks a module or data file of the source tree (CI runs this on dist/*.whl)."""

from __future__ import annotations

import pathlib
import sys
import zipfile


def main(wheel: str) -> int:
    root = pathlib.Path(__file__).resolve().parents[1]
    wanted = {p.relative_to(root).as_posix() for p in (root / "ndtracker").rglob("*")
              if p.is_file() and p.suffix in (".py", ".typed") and "__pycache__" not in p.parts}
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(wanted - shipped)
    packages = sorted({name.rsplit("/", 1)[0] for name in shipped if name.endswith("/__init__.py")})
    print(f"{pathlib.Path(wheel).name}: {len(wanted & shipped)} files; packages: {', '.join(packages)}")
    if missing:
        print(f"missing from the wheel: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
