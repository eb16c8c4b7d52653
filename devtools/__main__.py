"""`python -m devtools golden|test|prebuild|fetch|defaults|tarballs OUT|testimage|spec-reference|packer`: the
developer tools' commands."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devtools import debian_artifacts, defaults, golden, packer, prebuild, spec_reference, testimage, testrun
from imagebuild import cli
from imagebuild.errors import ImagebuildError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools",
                                     description="imagebuild's developer tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("golden", help="`make golden`: base image, bake with containerd/runc served from a local "
                       "mirror, verify")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="spec file (default: the built-in default spec)")
    p.add_argument("--work", type=Path, default=Path("build/golden"), help="work directory (default: build/golden)")
    p = sub.add_parser("test", help="`make test`: the fast tests and the boots as two pytest processes side by "
                       "side, the prebuild beside them")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="PYTEST_ARG",
                   help="passed to both pytest processes (test paths, options)")
    p = sub.add_parser("prebuild", help="build and fetch into the cache what make test needs (make test starts "
                       "both lanes in the background)")
    p.add_argument("--lane", choices=prebuild.LANES, help="only the Go builds or only the images (default: both)")
    p = sub.add_parser("fetch", help="download and unpack Debian's containerd families (default: all)")
    p.add_argument("families", nargs="*", metavar="FAMILY")
    sub.add_parser("defaults", help="rewrite imagebuild/defaults/ from `config default`")
    p = sub.add_parser("tarballs", help="release-shaped containerd and runc into OUT/<family>/")
    p.add_argument("out", type=Path)
    p.add_argument("--family", action="append", choices=list(debian_artifacts.FAMILIES))
    p = sub.add_parser("testimage", help="re-assemble imagebuild/verify/testimage/<arch>.bin from its source")
    p.add_argument("--arch", action="append", choices=sorted(testimage.TOOLS),
                   help="this architecture's program (repeatable; default: every one)")
    p = sub.add_parser("spec-reference", help="rewrite docs/spec.md, the spec reference, from the model")
    p.add_argument("--output", type=Path, default=spec_reference.SPEC_MD, help="default: docs/spec.md")
    sub.add_parser("packer", help="build the Packer release and plugins the template's required_plugins names "
                   "(once; cached); print the binary and the directory for PACKER_PLUGIN_PATH")
    args = parser.parse_args(argv)
    try:
        if args.command == "golden":  # the product's signal policy and error lines, as `imagebuild` has them
            return cli.guarded(lambda: golden.run(args.work, args.spec))
        if args.command == "test":
            return cli.guarded(lambda: testrun.run(args.pytest_args))
        if args.command == "prebuild":
            return cli.guarded(lambda: prebuild.run(args.lane))
        if args.command == "fetch":
            for family in args.families or debian_artifacts.FAMILIES:
                print(f"{family}\t{debian_artifacts.fetch(family)}\t{debian_artifacts.version(family)}")
        elif args.command == "defaults":
            for path in defaults.regenerate_defaults():
                print(path)
        elif args.command == "tarballs":
            result = {f: debian_artifacts.release_tarballs(f, args.out / f)
                      for f in args.family or debian_artifacts.FAMILIES}
            print(json.dumps(result, indent=2))
        elif args.command == "testimage":
            for arch in args.arch or sorted(testimage.TOOLS):
                path, sha256 = testimage.regenerate(arch)
                print(f"{path}\t{sha256}")
        elif args.command == "spec-reference":
            print(spec_reference.write(args.output))
        elif args.command == "packer":
            binary, plugins = packer.tools()
            print(f"{binary}\nPACKER_PLUGIN_PATH={plugins}")
    except ImagebuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
