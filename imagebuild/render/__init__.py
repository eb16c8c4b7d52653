"""Every output of a spec, as a pure function of it, and the atomic writer that puts them on disk.

    render/
      payload/<absolute path>   files the install script places: config.toml, certs.d/*/hosts.toml,
                                the unit or its drop-ins, modules-load.d, sysctl.d
      install.sh                installs containerd and the payload (Packer, user-data, verify)
      check.py, expected.json   the in-guest check and what it must find
      user-data                 #cloud-config (gzipped past 16 KB)
      packer/                   imagebuild.pkr.hcl, hygiene.sh and inventory.py
      spec.json                 the effective spec, defaults filled in
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from imagebuild.errors import ImagebuildError
from imagebuild.render import (
    config_toml,
    downloads,
    expected,
    hosts_toml,
    packer_plugins,
    proxy,
    secret_refs,
    secrets,
    toml_items,
    userdata,
)
from imagebuild.render.templating import PACKAGE_DIR, render_template, shipped_dir
from imagebuild.spec import platforms
from imagebuild.spec.fields import normalized
from imagebuild.spec.model import Spec

GUEST_DIR = "/var/lib/imagebuild"
BUILD_USER = "imagebuild-build"
MARKER = ".imagebuild-render"
DROPINS = ("10-exec", "20-lifecycle", "30-limits", "40-oom", "50-ordering")
SYSCTL_PATH = "/etc/sysctl.d/99-containerd.conf"
PROXY_DROPIN = "/etc/systemd/system/containerd.service.d/http-proxy.conf"
INSTALL_COMMAND = ["bash", f"{GUEST_DIR}/install.sh", f"{GUEST_DIR}/payload"]
#: After the install, its staging goes (the payload holds hosts.toml headers, credentials included).
CLEANUP_COMMAND = ["rm", "-rf", "--", f"{GUEST_DIR}/payload", f"{GUEST_DIR}/install.sh"]
#: The guest files only the Packer build's in-build check reads: production user-data carries them only when
#: the spec asks for the check on boot (verify.on_boot).
CHECK_FILES = ("check.py", "expected.json")
#: Where verify.on_boot's check writes its results on the machine (root only: its umask).
CHECK_LOG = "/var/log/imagebuild-check.log"
#: The sandbox image's archive in the Packer directory (image.sandbox.source archive: bake puts it there).
SANDBOX_ARCHIVE = "sandbox-image.tar"
#: install.sh's arguments after the payload in the Packer build, by image.sandbox.source.
SANDBOX_ARGS = {"registry": " --pull-sandbox /tmp/imagebuild-cri/cri.py",
                "archive": " --import-sandbox /tmp/imagebuild-sandbox.tar", "none": ""}


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def payload(spec: Spec) -> dict[str, File]:
    """The files the install script places, keyed by their absolute path on the machine."""
    files: dict[str, File] = {"/etc/containerd/config.toml": File(config_toml.render(spec).encode())}
    if spec.config.registry.mode == "hosts":
        node_refs = secret_refs.on_node(spec)  # their hosts.toml is written on the node (render.secret_refs)
        for mirror in spec.config.registry.mirrors:
            path = f"{spec.config.registry.config_path}/{mirror.host}/hosts.toml"
            if mirror.host in node_refs:
                files[secret_refs.refs_path(mirror.host)] = File(
                    secret_refs.refs_document(mirror, path, node_refs[mirror.host]), 0o600)
                continue
            secret = any(ep.headers for ep in mirror.endpoints)
            files[path] = File(hosts_toml.render(mirror).encode(), 0o600 if secret else 0o644)
        if node_refs:
            files[secret_refs.RESOLVER] = File((PACKAGE_DIR / "guest" / "resolve_secrets.py").read_bytes(), 0o755)
            files[secret_refs.UNIT_PATH] = File(secret_refs.unit(list(node_refs)).encode())
    context = {"unit": spec.unit, "system": spec.system}
    if spec.containerd.install.method == "tarball":
        files["/etc/systemd/system/containerd.service"] = File(
            render_template("containerd.service.j2", **context).encode())
    else:
        for name in DROPINS:
            files[f"/etc/systemd/system/containerd.service.d/{name}.conf"] = File(
                render_template(f"dropin-{name}.conf.j2", **context).encode())
    if spec.proxy.environment:  # a drop-in for the full unit (tarball) and the package's unit alike
        files[PROXY_DROPIN] = File(render_template("dropin-http-proxy.conf.j2", proxy=spec.proxy).encode())
    for rt in spec.config.runtimes.values():
        if rt.config is not None and rt.config_path:  # the shim's own config (runsc.toml), at the path it is told
            files[rt.config_path] = File(toml_items.dumps(toml_items.table(rt.config)).encode())
    files["/etc/modules-load.d/containerd.conf"] = File(render_template("modules-load.conf.j2", **context).encode())
    files[SYSCTL_PATH] = File(render_template("sysctl.conf.j2", **context).encode())
    return files


def install_script(spec: Spec, files: dict[str, File]) -> str:
    entries = [{"path": path, "mode": f"{f.mode:04o}", "sha256": f.sha256} for path, f in files.items()]
    resolved = [{"refs": secret_refs.refs_path(refs[0].host), "path": refs[0].path}
                for refs in secret_refs.on_node(spec).values()] if spec.config.registry.mode == "hosts" else []
    return render_template("install.sh.j2", spec=spec, files=entries, guest_dir=GUEST_DIR, sysctl_path=SYSCTL_PATH,
                           resolved=resolved, resolver=secret_refs.RESOLVER, secrets_unit=secret_refs.UNIT,
                           sandbox_pull=json.dumps({"image": {"image": spec.config.sandbox_image}}),
                           sandbox_name=normalized(spec.config.sandbox_image),
                           protocols={name: downloads.curl_protocols(art) for name, art in downloads.artifacts(spec)},
                           runtime_files=downloads.runtime_files(spec),
                           connect_timeout=downloads.CONNECT_TIMEOUT, retries=downloads.RETRIES,
                           stall_seconds=downloads.STALL_SECONDS,
                           proxy_env=proxy.install_environment(spec.proxy), apt_proxy=proxy.apt_options(spec.proxy))


def guest_files(spec: Spec) -> dict[str, File]:
    """What lands in GUEST_DIR on the machine: payload, install script, check and its expectations."""
    files = payload(spec)
    exp = expected.render(spec, [{"path": p, "sha256": f.sha256, "mode": f"{f.mode:04o}"} for p, f in files.items()],
                          BUILD_USER)
    out = {f"payload{path}": f for path, f in files.items()}
    out["install.sh"] = File(install_script(spec, files).encode(), 0o755)
    out["check.py"] = File((PACKAGE_DIR / "guest" / "check.py").read_bytes(), 0o755)
    # root-only when it carries the sha256 of literal secrets (a weak one could be guessed from it)
    out["expected.json"] = File((json.dumps(exp, indent=2, sort_keys=True) + "\n").encode(),
                                secrets.PRIVATE if exp["secrets"]["sha256"] else 0o644)
    return out


def user_data_files(spec: Spec, files: dict[str, File] | None = None) -> list[tuple[str, bytes, int]]:
    """(guest path, content, mode) of what production user-data writes: the payload and install.sh, and the
    in-guest check only when the spec asks for it on boot (the verify boots bring their own tooling)."""
    files = guest_files(spec) if files is None else files
    return [(f"{GUEST_DIR}/{rel}", f.content, f.mode) for rel, f in files.items()
            if rel not in CHECK_FILES or spec.verify.on_boot]


def user_data_commands(spec: Spec) -> list[list[str]]:
    """What user-data runs: the install, then its staging removed. With verify.on_boot the check runs between
    them (its results to CHECK_LOG, root only), the check's files go with the staging, and the command ends
    with the check's exit status, so cloud-init's final stage reports a failed check."""
    if not spec.verify.on_boot:
        return [INSTALL_COMMAND, CLEANUP_COMMAND]
    check = ["python3", f"{GUEST_DIR}/check.py", "--phase", "build", "--expected", f"{GUEST_DIR}/expected.json"]
    cleanup = CLEANUP_COMMAND + [f"{GUEST_DIR}/{name}" for name in CHECK_FILES]
    script = (f"umask 077; {shlex.join(check)} > {shlex.quote(CHECK_LOG)} 2>&1; status=$?; "
              f"{shlex.join(cleanup)}; exit $status")
    return [INSTALL_COMMAND, ["sh", "-c", script]]


def cloud_config(spec: Spec, files: dict[str, File] | None = None) -> str:
    """The #cloud-config document (never gzipped): the payload and install.sh via write_files, then the
    install, then the staging removed (user_data_commands)."""
    return userdata.cloud_config(user_data_files(spec, files), user_data_commands(spec))


def user_data(spec: Spec, fmt: str = "cloud-config", files: dict[str, File] | None = None, *,
              compress: bool = True) -> bytes:
    """User-data that installs and tunes containerd at first boot; gzipped past EC2's 16 KB (never, and
    never checked against that limit, without *compress*)."""
    text = cloud_config(spec, files)
    raw = userdata.mime(text) if fmt == "mime" else text.encode()
    return userdata.fit(raw) if compress else raw


def packer_template(spec: Spec) -> str:
    base = spec.image.base
    aws = spec.image.aws
    tags = {"Name": spec.name, "imagebuild:family": spec.name, "imagebuild:spec-hash": spec.spec_hash,
            "imagebuild:containerd-version": spec.containerd.version, **aws.tags}
    major, minor = (int(p) for p in spec.image.packer_version.split("."))
    arch = spec.image.architecture
    return render_template(
        "imagebuild.pkr.hcl.j2", spec=spec, aws=aws, tags=tags, guest_dir=GUEST_DIR, build_user=BUILD_USER,
        base_source=base.source if base else "", base_checksum=base.checksum if base else "none",
        accelerator="kvm" if spec.image.accelerator == "kvm" and arch == "amd64" else "tcg",
        qemu=packer_qemu(arch), packer_tested=packer_plugins.PACKER,
        required_plugins=packer_plugins.required_plugins() if (major, minor) >= (1, 7) else {},
        sandbox_archive=SANDBOX_ARCHIVE, sandbox_args=SANDBOX_ARGS[spec.image.sandbox.source],
        # a value the node reads is read at each boot of the image, never by the build (render.secret_refs)
        image_build=spec.config.registry.mode == "hosts" and bool(secret_refs.on_node(spec)))


def packer_qemu(arch: str) -> dict[str, str]:
    """The qemu source's machine for *arch* (imagebuild.spec.platforms): binary, machine type, CPU
    model, and the cdrom interface of the seed (virt has no IDE: virtio-scsi; pc: Packer's default)."""
    return {"binary": platforms.qemu_binary(arch), "machine": platforms.machine(arch), "cpu": platforms.tcg_cpu(arch),
            "cdrom_interface": "virtio-scsi" if platforms.machine(arch) == "virt" else ""}


def render_all(spec: Spec, *, with_user_data: bool = True) -> dict[str, File]:
    """Every output file, keyed by its path relative to the render directory.

    Packer never reads the user-data, so a bake renders without it: a spec whose user-data is
    over EC2's limit can still be baked into an image.
    """
    files = guest_files(spec)
    if with_user_data:
        files["user-data"] = File(user_data(spec, files=dict(files)))
    files["packer/imagebuild.pkr.hcl"] = File(packer_template(spec).encode())
    files["packer/hygiene.sh"] = File((shipped_dir("packer") / "hygiene.sh").read_bytes(), 0o755)
    # The build's inventory of the image (for its SBOM): Packer runs it before the check, which removes it.
    files["packer/inventory.py"] = File((PACKAGE_DIR / "guest" / "inventory.py").read_bytes(), 0o755)
    if spec.image.sandbox.source == "registry":  # the build's CRI client: install.sh --pull-sandbox uses it
        files["packer/cri.py"] = File((PACKAGE_DIR / "guest" / "cri.py").read_bytes(), 0o755)
        files["packer/cri_hpack.py"] = File((PACKAGE_DIR / "guest" / "cri_hpack.py").read_bytes(), 0o644)
    # Document order (the model's key order, mappings as written): sorted keys reordered sysctls, headers
    # and runtimes, so spec.json rendered different files than the spec it came from.
    files["spec.json"] = File((json.dumps(spec.document, indent=2) + "\n").encode())
    holding = secrets.outputs(spec)  # what holds a literal secret (headers) is root-only
    return {rel: replace(f, mode=secrets.PRIVATE) if rel in holding else f for rel, f in files.items()}


def write_tree(files: dict[str, File], out_dir: str | Path) -> Path:
    """Write *files* under *out_dir* all at once: on any failure *out_dir* is left as it was.

    The tree is written to a sibling temporary directory and swapped in by rename. An existing
    *out_dir* is replaced only if it is empty or an earlier render (it holds the marker file). A tree
    holding a root-only file (a literal secret: imagebuild.render.secrets) is 0700, every directory in it.
    """
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise ImagebuildError(f"{out} exists and is not an imagebuild render directory; "
                              "choose an empty or new directory")
    earlier = (out / MARKER).exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        if exc.filename and Path(exc.filename).parent == out.parent:
            exc.filename = str(out)  # mkdtemp's random name means nothing to the user: name the output
        raise _write_error(out, exc, None, earlier) from None
    try:
        for rel, f in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.write_bytes(f.content)
            except OSError as exc:
                exc.filename = exc.filename or str(path)  # ENOSPC from write() names no file
                raise
            path.chmod(f.mode)
        (tmp / MARKER).write_text("written by imagebuild render; replaced whole on the next render\n")
        tree_mode = 0o700 if any(secrets.private(f.mode) for f in files.values()) else 0o755
        for directory in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
            directory.chmod(tree_mode)
        if out.exists():
            old = out.parent / f"{tmp.name}.old"
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)  # put the earlier render back: out_dir is left as it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _write_error(out, exc, tmp, earlier) from None
        raise
    return out


def _write_error(out: Path, exc: OSError, tmp: Path | None, earlier: bool) -> ImagebuildError:
    """A failed write (disk full, read-only, permissions) as one clear message, not a traceback."""
    what = exc.strerror or str(exc)
    if exc.filename:
        name = Path(exc.filename)
        if tmp is not None and name.is_relative_to(tmp):
            name = out / name.relative_to(tmp)  # where the file was going, not its temporary name
        what += f" (writing {name})"
    kept = "the earlier render there is unchanged" if earlier else "nothing was written"
    return ImagebuildError(f"cannot write the render to {out}: {what}; {kept}")


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write one file via a temporary sibling and rename: readers never see half of it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ImagebuildError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            kept = "it is unchanged" if path.exists() else "nothing was written"
            raise ImagebuildError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None
        raise
