"""What each subcommand does. Each imports what it needs when it runs, so `--help`, `validate` and `render`
stay fast (boto3, packer and QEMU code load only for the commands that use them)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

#: The first two bytes of every gzip stream (RFC 1952): how user-data says it was compressed.
GZIP_MAGIC = b"\x1f\x8b"


def _spec(path: str | None, variant: str | None = None):
    from imagebuild.spec import Problem, SpecError, load

    spec = load(path)
    if variant is not None:
        try:
            spec = spec.variant(variant)
        except KeyError as exc:
            raise SpecError([Problem("--variant", exc.args[0])], path or "default spec") from None
    for notice in spec.notices:
        print(f"imagebuild: note: {notice}", file=sys.stderr)
    for warning in spec.warnings:
        print(f"imagebuild: warning: {warning}", file=sys.stderr)
    return spec


def cmd_validate(args) -> int:
    spec = _spec(args.spec, args.variant)
    image = spec.image
    print(f"{args.spec}: OK: {spec.name}, containerd {spec.containerd.version} ({spec.containerd.install.method}), "
          f"{image.os}/{image.architecture}")
    return 0


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

    spec = _pinned(_spec(args.spec, args.variant), args)
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

    spec = _pinned(_spec(args.spec, args.variant), args)
    held = secrets.refused_in_metadata(spec)
    if held and not args.accept_secret_in_metadata:
        raise SpecError([Problem(key, "a literal secret: user-data would carry it into instance metadata, which "
                                 "anything on the instance that reaches the metadata service can read; bake it "
                                 "into an image (imagebuild bake), or pass "
                                 f"{secrets.ACCEPT_FLAG} to write it anyway") for key in held], args.spec or "spec")
    data = render.user_data(spec, args.format, compress=not args.raw)
    where = f"{args.output} (0600)" if args.output else "the user-data on standard output"
    _warn([f"{key} is a literal secret; it is in {where}, in the instance metadata of every machine given this "
           f"user-data, and goes to {path} (0600) on every node"
           for key, path in ((s.key, s.path) for s in secrets.literal_secrets(spec))])
    if args.output:
        path = Path(args.output)
        render.write_file_atomic(path, data, secrets.PRIVATE if held else 0o644)
        if held and secrets.open_to_others(path.resolve().parent):
            _warn([f"{path.resolve().parent} can be entered by other users: keep {path} in a 0700 directory"])
        return 0
    if data.startswith(GZIP_MAGIC) and sys.stdout.isatty():
        print("imagebuild: error: this user-data is gzipped (it is over EC2's 16 KB as text) and stdout is a "
              "terminal; redirect it (> user-data), write it with -o FILE, or give --raw for the uncompressed "
              "text", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(data)
    return 0


def cmd_packer(args) -> int:
    from imagebuild.build.bake import packer_directory
    from imagebuild.render import secrets

    spec = _pinned(_spec(args.spec, args.variant), args)
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
    from imagebuild.spec.load import INIT_HEADER, init_document
    from imagebuild.spec.model import Spec
    from imagebuild.spec.problems import commented_default

    # the model's own values (a profile's sysctls are merged in when the file is read, not written out)
    text = commented_default(Spec.model_validate(init_document()), INIT_HEADER)
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

    result = bake(_spec(args.spec, args.variant), Path(args.output), base=args.base, firmware=args.firmware)
    print(result)
    return 0


def cmd_verify(args) -> int:
    from imagebuild.verify.boot import print_report, verify_image, verify_user_data

    spec = _spec(args.spec, args.variant)
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

    record = publish(Path(args.image_dir), target_of(_spec(args.spec, args.variant)))
    print(json.dumps(record, indent=2))
    return 0


def cmd_diff(args) -> int:
    import json

    from imagebuild.build import image_diff
    from imagebuild.errors import ImagebuildError

    try:
        result = image_diff.compare(image_diff.load(Path(args.old)), image_diff.load(Path(args.new)))
    except ImagebuildError as exc:   # diff(1)'s convention: 2 is trouble, 1 a difference
        print(f"imagebuild: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else image_diff.text(result))
    return 1 if result["changed"] else 0


def cmd_prune(args) -> int:
    from imagebuild.aws.prune import format_table, prune
    from imagebuild.aws.target import target_of

    decisions = prune(target_of(_spec(args.spec, args.variant)), apply=args.apply)
    print(format_table(decisions))
    if not args.apply:
        print("dry run: nothing was changed; pass --apply to deregister and delete")
    return 0


def cmd_pipeline(args) -> int:
    from imagebuild.pipeline import run_pipeline

    return run_pipeline(_spec(args.spec, args.variant), work=Path(args.work), force=args.force,
                        publish=not args.no_publish, base=args.base)


def cmd_doctor(args) -> int:
    from imagebuild.cli import doctor

    return doctor.examine(args.stage or list(doctor.STAGES), args.architecture)


def cmd_completion(args) -> int:
    from imagebuild.cli import completion

    sys.stdout.write(completion.SCRIPTS[args.shell](args.parser))
    return 0


def cmd_matrix(args) -> int:
    from imagebuild.render import workflow, write_file_atomic
    from imagebuild.spec import Problem, SpecError

    spec = _spec(args.spec)
    source = args.spec or "the default spec"
    if not spec.expanded:
        raise SpecError([Problem("variants", "the spec has no variants, expected at least one for "
                                 "`imagebuild matrix` (docs/pipelines.md: the variant matrix)")], source)
    if args.summary:
        text, ok = workflow.summary(spec, Path(args.summary))
        print(text)
        return 0 if ok else 1
    if args.write:
        problem = missing_parent(args.write, is_file=False)
        if problem:
            print(f"imagebuild: error: {problem.replace('-o ', '--write ', 1)}", file=sys.stderr)
            return 2
        out = Path(args.write)
        for name in spec.expanded:
            write_file_atomic(out / f"{name}.yaml", workflow.variant_spec_yaml(spec, name, source).encode())
            print(out / f"{name}.yaml")
    elif args.format:
        text = workflow.workflow(spec, args.spec or "", args.format)
        if args.output and args.output != "-":
            write_file_atomic(Path(args.output), text.encode())
        else:
            sys.stdout.write(text)
    else:
        print(workflow.table(workflow.rows(spec)))
    return 0


def missing_parent(output: str | None, *, is_file: bool) -> str | None:
    """The message for an -o whose parent directory does not exist (None: it exists, or there is no -o).

    The output itself may be new (a render into a new directory under an existing one is the normal
    case); a missing directory above it is a typo more often than a wish, so it is not created."""
    if output in (None, "-"):
        return None
    parent = Path(os.path.abspath(output)).parent
    if parent.exists():
        return None
    what = "writes the file" if is_file else "creates the output directory"
    return (f"-o {output}: the directory {parent} does not exist (imagebuild {what}, not the directories "
            f"above it); create it first (mkdir -p {parent}) or choose another -o")
