"""The command line: every subcommand, its arguments and its help. `imagebuild completion` generates the
shell completion scripts from this parser, so a new option completes as soon as it is declared here."""
from __future__ import annotations

import argparse

from imagebuild import __version__
from imagebuild.cli import commands as c

SPEC_HELP = "spec file (YAML); omitted: the built-in default, containerd's seed setup"
#: The stages `imagebuild doctor` knows (imagebuild.cli.doctor.STAGES; kept here so --help loads no more).
DOCTOR_STAGES = ("render", "bake", "verify", "publish")


def _checksums_at_install(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checksums-at-install", action="store_true",
                   help="do not read the artifacts' checksum_url now and pin the sha256 it names; install.sh "
                        "reads it at install time instead (a first boot then trusts the checksum file served "
                        "that day). IMAGEBUILD_CHECKSUMS_AT_INSTALL=1 does the same")


def _accept_secret(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--accept-secret-in-metadata", action="store_true",
                   help=f"{what} the spec holds a literal secret (a mirror endpoint's headers): it then goes "
                        "into instance metadata, which anything on the instance that reaches the metadata "
                        "service can read (refused without this flag)")


def _loudness(p: argparse.ArgumentParser, default) -> None:
    """-q/--quiet and -v/--verbose, before the subcommand (default False) or after it (SUPPRESS: given
    there, it sets the value; not given, it leaves what the top level set)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="log only warnings and errors on stderr")
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log more: every command imagebuild runs, with its arguments")


def _variant(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", metavar="NAME", help="the spec's variant NAME (its `variants`) instead of the spec "
                   "itself")


def _output(p: argparse.ArgumentParser, *, is_file: bool, help_text: str, **kwargs) -> None:
    """-o/--output; its parent directory must exist (checked before anything runs: imagebuild.cli.main)."""
    p.add_argument("-o", "--output", metavar="FILE" if is_file else "DIR", help=help_text, **kwargs)
    p.set_defaults(output_is_file=is_file)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="imagebuild", description="One spec -> containerd config.toml, "
                                  "hosts.toml, systemd unit, install script, cloud-init user-data and a Packer "
                                  "template; baked images are booted in QEMU and checked before anyone trusts them.")
    top.add_argument("--version", action="version", version=f"imagebuild {__version__}")
    _loudness(top, default=False)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help_text: str, spec: str | None = "arg",
                variant: bool = True) -> argparse.ArgumentParser:
        """A subcommand; its spec is the positional SPEC, a --spec option, or none."""
        p = sub.add_parser(name, help=help_text, description=help_text)
        _loudness(p, default=argparse.SUPPRESS)
        if spec == "arg":
            p.add_argument("spec", nargs="?", metavar="SPEC", help=SPEC_HELP)
        elif spec == "opt":
            p.add_argument("--spec", dest="spec", help=SPEC_HELP)
        if spec is not None and variant:
            _variant(p)
        p.set_defaults(func=func)
        return p

    p = command("validate", c.cmd_validate, "check a spec and write nothing: exit 0 (one OK line) or 2 (one line "
                "per problem)", spec=None)
    p.add_argument("spec", metavar="SPEC", help="spec file (YAML)")
    _variant(p)
    p = command("render", c.cmd_render, "write every output of a spec into a directory, atomically")
    _output(p, is_file=False, required=True, help_text="directory (new, empty, or an earlier render); "
            "its parent must exist")
    _checksums_at_install(p)
    _accept_secret(p, "write user-data even when")
    p = command("user-data", c.cmd_user_data, "print cloud-init user-data that installs the tuned containerd")
    p.add_argument("--format", choices=["cloud-config", "mime"], default="cloud-config",
                   help="mime: a multipart message to merge with your own parts")
    p.add_argument("--raw", action="store_true", help="never gzip (the default gzips past EC2's 16 KB, and then "
                   "refuses to write to a terminal)")
    _output(p, is_file=True, help_text="write to this file instead of stdout")
    _checksums_at_install(p)
    _accept_secret(p, "write the user-data even when")
    p = command("packer", c.cmd_packer, "write a ready-to-run Packer directory (template, payload, build seed)")
    _output(p, is_file=False, required=True, help_text="directory (new, empty, or an earlier render); "
            "its parent must exist")
    _checksums_at_install(p)
    command("schema", c.cmd_schema, "print the JSON Schema of the spec", spec=None)
    p = command("init", c.cmd_init, "write the default spec, commented, as a starting point", spec=None)
    _output(p, is_file=True, default="-", help_text="file to write (default: stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p = command("base-image", c.cmd_base_image, "build (or reuse) a Debian cloud-style base qcow2", spec=None)
    p.add_argument("--os", choices=["debian-12", "debian-13"], default="debian-12",
                   help="Debian release, as the spec's image.os (default: debian-12)")
    p.add_argument("--architecture", choices=["amd64", "arm64"], default="amd64",
                   help="as the spec's image.architecture (default: amd64)")
    p = command("bake", c.cmd_bake, "render, run packer build (qemu), and write the image with manifest.json")
    _output(p, is_file=False, default="output", help_text="output directory for the image (default: output); "
            "its parent must exist")
    p.add_argument("--base", help="base qcow2 overriding the spec's image.base (default: `imagebuild base-image`)")
    p.add_argument("--firmware", choices=["bios", "uefi"],
                   help="the build VM's firmware; default: the image's (a hybrid image builds under SeaBIOS and "
                        "is verified under UEFI)")
    p = command("verify", c.cmd_verify, "boot an image (or the user-data on a base image) in QEMU and check it",
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
    p = command("publish", c.cmd_publish, "upload a verified image as an AMI, copy, share, record in SSM",
                spec="opt")
    p.add_argument("image_dir", metavar="IMAGE_DIR", help="bake output directory (image, manifest.json, verify.json)")
    p = command("diff", c.cmd_diff, "what changed between two baked images (their records: packages, binaries, "
                "containerd config dump, units and drop-ins, images, kernel, verify timings). Exit 0 no difference, "
                "1 different (verify timings never count), 2 trouble, as diff(1)", spec=None)
    p.add_argument("old", metavar="OLD", help="the older image: a bake's output directory, or the image in it")
    p.add_argument("new", metavar="NEW", help="the newer image, the same way")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p = command("prune", c.cmd_prune, "retire old AMIs of the spec's family (dry run unless --apply)")
    p.add_argument("--apply", action="store_true", help="deregister and delete; without it only print the plan")
    p = command("pipeline", c.cmd_pipeline, "nightly: decide, render, bake, verify, publish, prune; skipped when "
                "the newest AMI already has these inputs. Every step's status and duration go to "
                "WORK/run-<time>.json and WORK/last-run.json. Exit 0 published, 3 unchanged (skipped), 1 failed")
    p.add_argument("--work", default="pipeline", help="work directory (default: pipeline)")
    p.add_argument("--force", action="store_true", help="build even when the inputs are unchanged")
    p.add_argument("--no-publish", action="store_true", help="stop after verify (no AWS)")
    p.add_argument("--base", help="base qcow2 overriding the spec's image.base")
    p = command("matrix", c.cmd_matrix, "list the spec's variants (name, os, architecture, containerd); write "
                "each as a spec file, or a CI workflow running one pipeline job per variant and a last job that "
                "prunes and summarises", variant=False)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--write", metavar="DIR", help="write each variant's expanded, validated spec to DIR/NAME.yaml")
    what.add_argument("--format", choices=["github-actions", "gitlab-ci"], help="print the workflow (YAML)")
    what.add_argument("--summary", metavar="WORK", help="summarise each variant's WORK/NAME/last-run.json; exit 1 "
                      "when a variant failed or left no record")
    _output(p, is_file=True, help_text="with --format: write the workflow to this file instead of stdout")
    p = command("doctor", c.cmd_doctor, "what this machine lacks for each stage, and the command that installs "
                "it: exit 0 when nothing is missing, 1 otherwise", spec=None)
    p.add_argument("--stage", action="append", choices=DOCTOR_STAGES,
                   help="only this stage (repeatable; default: all of them)")
    p.add_argument("--architecture", choices=["amd64", "arm64"],
                   help="the images' image.architecture (default: this machine's, else amd64)")
    p = command("completion", c.cmd_completion, "print the shell completion script (bash: source it, or put it "
                "in /etc/bash_completion.d/imagebuild; zsh: save it as _imagebuild in your $fpath)", spec=None)
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    p.set_defaults(parser=top)
    return top
