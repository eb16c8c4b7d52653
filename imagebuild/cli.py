"""The `imagebuild` command. Each subcommand imports what it needs when it runs, so `--help` and
`render` stay fast (boto3, packer and QEMU code load only for the commands that use them).

Exit codes: 0 success, 1 a failure explained on stderr, 2 a bad spec or bad arguments,
130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM. Pipeline-specific codes are listed in
`imagebuild pipeline --help`.

The signal policy lives here and only here: :func:`guarded` (under :func:`main`) turns the first SIGINT or SIGTERM into
:class:`~imagebuild.errors.Interrupted` (a KeyboardInterrupt), which unwinds every `finally` and context manager on
its way out, so each child process group is stopped (:mod:`imagebuild.run`) and each scratch
directory removed; later signals are ignored while that cleanup runs (SIGKILL still ends it).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from imagebuild import __version__
from imagebuild.errors import ImagebuildError, Interrupted, interrupted_exit_code

SPEC_HELP = "spec file (YAML); omitted: the built-in default, containerd's seed setup"


def _spec(path: str | None):
    from imagebuild.spec import load

    spec = load(path)
    for notice in spec.notices:
        print(f"imagebuild: note: {notice}", file=sys.stderr)
    for warning in spec.warnings:
        print(f"imagebuild: warning: {warning}", file=sys.stderr)
    return spec


def _pinned(spec, args):
    """*spec* with its checksum_urls read now and the sha256 pinned, or (--checksums-at-install) left to the
    install."""
    from imagebuild.render import downloads

    return downloads.for_render(spec, at_install=args.checksums_at_install)


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"imagebuild: warning: {line}", file=sys.stderr)


def cmd_render(args) -> int:
    from imagebuild import render
    from imagebuild.render import secrets

    spec = _pinned(_spec(args.spec), args)
    held = secrets.refused_in_metadata(spec)
    with_user_data = not held or args.accept_secret_in_metadata
    files = render.render_all(spec, with_user_data=with_user_data)
    out = render.write_tree(files, args.output)
    _warn(secrets.where_they_went(spec, files, out))
    if not with_user_data:
        _warn([f"user-data not written: it would carry {', '.join(held)} into instance metadata, which anything "
               f"on the instance that reaches the metadata service can read; pass {secrets.ACCEPT_FLAG} to "
               "write it anyway"])
    print(out)
    return 0


def cmd_user_data(args) -> int:
    from imagebuild import render
    from imagebuild.render import secrets
    from imagebuild.spec import Problem, SpecError

    spec = _pinned(_spec(args.spec), args)
    held = secrets.refused_in_metadata(spec)
    if held and not args.accept_secret_in_metadata:
        raise SpecError([Problem(key, "a literal secret: user-data would carry it into instance metadata, which "
                                 "anything on the instance that reaches the metadata service can read; bake it "
                                 "into an image (imagebuild bake), or pass "
                                 f"{secrets.ACCEPT_FLAG} to write it anyway") for key in held], args.spec or "spec")
    data = render.user_data(spec, args.format)
    where = f"{args.output} (0600)" if args.output else "the user-data on standard output"
    _warn([f"{key} is a literal secret; it is in {where}, in the instance metadata of every machine given this "
           f"user-data, and goes to {path} (0600) on every node"
           for key, path in ((s.key, s.path) for s in secrets.literal_secrets(spec))])
    if args.output:
        path = Path(args.output)
        render.write_file_atomic(path, data, secrets.PRIVATE if held else 0o644)
        if held and secrets.open_to_others(path.resolve().parent):
            _warn([f"{path.resolve().parent} can be entered by other users: keep {path} in a 0700 directory"])
    else:
        sys.stdout.buffer.write(data)
    return 0


def cmd_packer(args) -> int:
    from imagebuild.build.bake import packer_directory
    from imagebuild.render import secrets

    spec = _pinned(_spec(args.spec), args)
    out = packer_directory(spec, args.output)
    _warn(secrets.where_they_went(spec, [rel for rel in secrets.outputs(spec) if rel != "user-data"], out))
    print(out)
    return 0


def cmd_schema(args) -> int:
    import json

    from imagebuild.spec.problems import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_init(args) -> int:
    from imagebuild.render import write_file_atomic
    from imagebuild.spec.problems import commented_default

    text = commented_default()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if path.exists() and not args.force:
        print(f"imagebuild: error: {path} exists; pass --force to overwrite", file=sys.stderr)
        return 1
    write_file_atomic(path, text.encode())
    print(path)
    return 0


def cmd_base_image(args) -> int:
    from imagebuild.build.baseimage import Flavor, build

    print(build(flavor=Flavor.of(args.os, args.architecture)))
    return 0


def cmd_bake(args) -> int:
    from imagebuild.build.bake import bake

    result = bake(_spec(args.spec), Path(args.output), base=args.base, firmware=args.firmware)
    print(result)
    return 0


def cmd_verify(args) -> int:
    from imagebuild.verify.boot import print_report, verify_image, verify_user_data

    spec = _spec(args.spec)
    if args.user_data:
        report = verify_user_data(spec, base=args.base, log_dir=args.log_dir, platform=args.platform,
                                  firmware=args.firmware)
    else:
        if not args.image:
            print("imagebuild: error: verify needs IMAGE, or --user-data", file=sys.stderr)
            return 2
        report = verify_image(Path(args.image), spec, log_dir=args.log_dir, platform=args.platform,
                              firmware=args.firmware)
    print_report(report, as_json=args.json)
    return 0 if report["passed"] else 1


def cmd_publish(args) -> int:
    import json

    from imagebuild.aws.publish import publish
    from imagebuild.aws.target import target_of

    record = publish(Path(args.image_dir), target_of(_spec(args.spec)))
    print(json.dumps(record, indent=2))
    return 0


def cmd_prune(args) -> int:
    from imagebuild.aws.prune import format_table, prune
    from imagebuild.aws.target import target_of

    decisions = prune(target_of(_spec(args.spec)), apply=args.apply)
    print(format_table(decisions))
    if not args.apply:
        print("dry run: nothing was changed; pass --apply to deregister and delete")
    return 0


def cmd_pipeline(args) -> int:
    from imagebuild.pipeline import run_pipeline

    return run_pipeline(_spec(args.spec), work=Path(args.work), force=args.force,
                        publish=not args.no_publish, base=args.base)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="imagebuild", description="One spec -> containerd config.toml, "
                                  "hosts.toml, systemd unit, install script, cloud-init user-data and a Packer "
                                  "template; baked images are booted in QEMU and checked before anyone trusts them.")
    top.add_argument("--version", action="version", version=f"imagebuild {__version__}")
    loudness = top.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors on stderr")
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="log more: every command imagebuild runs, with its arguments")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help_text: str, spec: str | None = "arg") -> argparse.ArgumentParser:
        """A subcommand; its spec is the positional SPEC, a --spec option, or none."""
        p = sub.add_parser(name, help=help_text, description=help_text)
        if spec == "arg":
            p.add_argument("spec", nargs="?", metavar="SPEC", help=SPEC_HELP)
        elif spec == "opt":
            p.add_argument("--spec", dest="spec", help=SPEC_HELP)
        p.set_defaults(func=func)
        return p

    def checksums_at_install(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checksums-at-install", action="store_true",
                       help="do not read the artifacts' checksum_url now and pin the sha256 it names; install.sh "
                            "reads it at install time instead (a first boot then trusts the checksum file served "
                            "that day). IMAGEBUILD_CHECKSUMS_AT_INSTALL=1 does the same")

    def accept_secret(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--accept-secret-in-metadata", action="store_true",
                       help=f"{what} the spec holds a literal secret (a mirror endpoint's headers): it then goes "
                            "into instance metadata, which anything on the instance that reaches the metadata "
                            "service can read (refused without this flag)")

    p = command("render", cmd_render, "write every output of a spec into a directory, atomically")
    p.add_argument("-o", "--output", required=True, help="directory (new, empty, or an earlier render)")
    checksums_at_install(p)
    accept_secret(p, "write user-data even when")
    p = command("user-data", cmd_user_data, "print cloud-init user-data that installs the tuned containerd")
    p.add_argument("--format", choices=["cloud-config", "mime"], default="cloud-config",
                   help="mime: a multipart message to merge with your own parts")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    checksums_at_install(p)
    accept_secret(p, "write the user-data even when")
    p = command("packer", cmd_packer, "write a ready-to-run Packer directory (template, payload, build seed)")
    p.add_argument("-o", "--output", required=True, help="directory (new, empty, or an earlier render)")
    checksums_at_install(p)
    command("schema", cmd_schema, "print the JSON Schema of the spec", spec=None)
    p = command("init", cmd_init, "write the default spec, commented, as a starting point", spec=None)
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p = command("base-image", cmd_base_image, "build (or reuse) a Debian cloud-style base qcow2", spec=None)
    p.add_argument("--os", choices=["debian-12", "debian-13"], default="debian-12",
                   help="Debian release, as the spec's image.os (default: debian-12)")
    p.add_argument("--architecture", choices=["amd64", "arm64"], default="amd64",
                   help="as the spec's image.architecture (default: amd64)")
    p = command("bake", cmd_bake, "render, run packer build (qemu), and write the image with manifest.json")
    p.add_argument("-o", "--output", default="output", help="output directory for the image (default: output)")
    p.add_argument("--base", help="base qcow2 overriding the spec's image.base (default: `imagebuild base-image`)")
    p.add_argument("--firmware", choices=["bios", "uefi"],
                   help="the build VM's firmware; default: the image's (a hybrid image builds under SeaBIOS and "
                        "is verified under UEFI)")
    p = command("verify", cmd_verify, "boot an image (or the user-data on a base image) in QEMU and check it",
                spec="opt")
    p.add_argument("image", nargs="?", metavar="IMAGE", help="qcow2 to verify (never modified)")
    p.add_argument("--user-data", action="store_true", help="verify the user-data path on a plain base image")
    p.add_argument("--base", help="base image for --user-data (default: `imagebuild base-image`)")
    p.add_argument("--platform", choices=["nocloud", "ec2"], default="nocloud",
                   help="boot as a NoCloud VM (default) or as EC2 presents an instance (SMBIOS identity, "
                        "IMDSv2, new NIC, larger disk); writes verify.json or verify-ec2.json")
    p.add_argument("--firmware", choices=["bios", "uefi"],
                   help="boot under SeaBIOS or UEFI (OVMF/AAVMF); default: what the image boots under (manifest.json's "
                        "boot_mode: a hybrid uefi-preferred image boots under UEFI)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--log-dir", help="where the serial log and report go (default: beside IMAGE, or a temp dir)")
    p = command("publish", cmd_publish, "upload a verified image as an AMI, copy, share, record in SSM",
                spec="opt")
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="bake output directory (image, manifest.json, verify.json)")
    p = command("prune", cmd_prune, "retire old AMIs of the spec's family (dry run unless --apply)")
    p.add_argument("--apply", action="store_true", help="deregister and delete; without it only print the plan")
    p = command("pipeline", cmd_pipeline, "nightly: decide, render, bake, verify, publish, prune; skipped when "
                "the newest AMI already has these inputs. Every step's status and duration go to "
                "WORK/run-<time>.json and WORK/last-run.json. Exit 0 published, 3 unchanged (skipped), 1 failed")
    p.add_argument("--work", default="pipeline", help="work directory (default: pipeline)")
    p.add_argument("--force", action="store_true", help="build even when the inputs are unchanged")
    p.add_argument("--no-publish", action="store_true", help="stop after verify (no AWS)")
    p.add_argument("--base", help="base qcow2 overriding the spec's image.base")
    return top


SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt_on_signals():
    """Route SIGINT (Ctrl-C) and SIGTERM (`kill`, systemd stop, a cancelled CI job) into
    :class:`~imagebuild.errors.Interrupted`; returns a function that puts the previous handlers back. Only in the main
    thread (signals go there).

    The first signal raises; later ones are dropped while the cleanup runs (it stops its own
    children and removes its scratch; SIGKILL still ends everything). Dropped by a Python handler,
    not SIG_IGN, which processes started during the cleanup would inherit.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    interrupted = False

    def handler(signum, frame) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}

    def restore() -> None:
        for sig, before in previous.items():
            signal.signal(sig, signal.SIG_DFL if before is None else before)

    return restore


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)  # usage errors exit 2 here, --help and --version 0
    return guarded(lambda: args.func(args), quiet=args.quiet, verbose=args.verbose)


def guarded(command: Callable[[], int], *, quiet: bool = False, verbose: bool = False) -> int:
    """Run *command* under imagebuild's signal policy and progress level; its exit code, or one line
    and 2 (spec error), 1 (any other error) or 128+N (signal N)."""
    from imagebuild import progress
    from imagebuild.spec import SpecError

    restore = _interrupt_on_signals()
    level = None
    try:
        level = progress.configure(quiet=quiet, verbose=verbose)
        return command()
    except SpecError as exc:
        print(f"imagebuild: {exc.report()}", file=sys.stderr)
        return 2
    except ImagebuildError as exc:
        print(f"imagebuild: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        code = interrupted_exit_code(exc)
        print(f"imagebuild: interrupted ({signal.Signals(code - 128).name})", file=sys.stderr)
        return code
    except OSError as exc:
        # The machine said no (disk full, permission denied, ...): one line naming the file, not a
        # traceback. Writers clean up their own temporary files before the error gets here.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"imagebuild: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    finally:
        if level is not None:
            progress.restore(level)
        restore()


if __name__ == "__main__":
    sys.exit(main())
