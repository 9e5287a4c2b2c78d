"""Build the relay's single-file program from its package (``make relay``).

The package ``relay/sitelink_relay`` becomes one executable zipapp,
``roles/relay/files/sitelink-relay``, which the relay role installs on gateways.
The archive is byte-for-byte reproducible (sorted entries, fixed timestamps and
modes, sources only), so a unit test can rebuild it and compare: the shipped file
is always the current sources.

    tools/build_relay.py            write the program
    tools/build_relay.py --check    exit 1 if the shipped program is not current
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "relay" / "sitelink_relay"
TARGET = ROOT / "roles" / "relay" / "files" / "sitelink-relay"
SHEBANG = b"#!/usr/bin/python3\n"
# zip's earliest date: the archive must not depend on when the sources were checked out
EPOCH = (1980, 1, 1, 0, 0, 0)
MAIN = "import sys\n\nfrom sitelink_relay.cli import main\n\nsys.exit(main())\n"


def build(package: Path = PACKAGE) -> bytes:
    """The program's bytes: shebang line, then a zip of the package's sources."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        entries = [("__main__.py", MAIN.encode())]
        for path in sorted(package.glob("*.py")):
            entries.append((f"sitelink_relay/{path.name}", path.read_bytes()))
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=9)
    return SHEBANG + buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--check", action="store_true", help="only check the shipped program")
    parser.add_argument("--output", type=Path, default=TARGET, help=f"default {TARGET}")
    args = parser.parse_args(argv)
    data = build()
    if args.check:
        if not args.output.exists() or args.output.read_bytes() != data:
            print(f"{args.output} is not built from the current sources: run make relay")
            return 1
        print(f"{args.output} is current")
        return 0
    args.output.write_bytes(data)
    args.output.chmod(0o755)
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
