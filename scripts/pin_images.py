#!/usr/bin/env python3
"""Point the chart's default images at a release's, pinned by digest (the release workflow runs it
before `helm package`): in charts/kubetune/values.yaml, `image` and `export.image` get
`repository: <registry>/trainer` (`/export`), `tag: <version>` and `digest: sha256:...`.

Only those six lines change; comments and everything else stay as they are. Stdlib only.
Usage: `python scripts/pin_images.py VALUES --registry ghcr.io/OWNER --version X.Y.Z
--trainer-digest sha256:... --export-digest sha256:...`
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
VERSION = re.compile(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?")
REGISTRY = re.compile(r"[a-z0-9.-]+(?::\d+)?(?:/[a-z0-9._-]+)*")
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


def pin(text: str, settings: dict[tuple[str, ...], str]) -> str:
    """`text` (a values.yaml) with each `path: value` of `settings` set; every path must be there once."""
    out, stack, found = [], [], dict.fromkeys(settings, 0)
    for line in text.splitlines(keepends=True):
        m = KEY.match(line)
        if m:
            indent = len(m["indent"])
            stack = [(i, k) for i, k in stack if i < indent]
            stack.append((indent, m["key"]))
            path = tuple(k for _, k in stack)
            if path in settings:
                found[path] += 1
                end = "\n" if line.endswith("\n") else ""
                line = f"{m['indent']}{m['key']}: {json.dumps(settings[path])}{end}"
        out.append(line)
    wrong = {".".join(p): n for p, n in found.items() if n != 1}
    if wrong:
        raise ValueError(f"values: each key must be there once, found {wrong}")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("values", type=Path)
    parser.add_argument("--registry", required=True, help="e.g. ghcr.io/kubetune (lower case)")
    parser.add_argument("--version", required=True, help="the chart's version: the images' tag")
    parser.add_argument("--trainer-digest", required=True)
    parser.add_argument("--export-digest", required=True)
    args = parser.parse_args(argv)
    problems = []
    if not REGISTRY.fullmatch(args.registry):
        problems.append(f"--registry {args.registry!r}: a lower-case registry path, e.g. ghcr.io/kubetune")
    if not VERSION.fullmatch(args.version):
        problems.append(f"--version {args.version!r}: X.Y.Z")
    for name in ("trainer_digest", "export_digest"):
        if not DIGEST.fullmatch(getattr(args, name)):
            problems.append(f"--{name.replace('_', '-')} {getattr(args, name)!r}: sha256:<64 hex>")
    if problems:
        print("pin_images: " + "; ".join(problems), file=sys.stderr)
        return 2
    settings = {}
    for prefix, name, digest in ((("image",), "trainer", args.trainer_digest),
                                 (("export", "image"), "export", args.export_digest)):
        settings[(*prefix, "repository")] = f"{args.registry}/{name}"
        settings[(*prefix, "tag")] = args.version
        settings[(*prefix, "digest")] = digest
    try:
        text = pin(args.values.read_text(encoding="utf-8"), settings)
    except ValueError as e:
        print(f"pin_images: {args.values}: {e}", file=sys.stderr)
        return 1
    args.values.write_text(text, encoding="utf-8")
    for path, value in settings.items():
        print(f"{'.'.join(path)}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
