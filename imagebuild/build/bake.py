"""Bake: render the spec, run `packer build` (qemu source), and leave a checked qcow2 with
manifest.json in the output directory, or nothing at all.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import yaml

from imagebuild import __version__, render
from imagebuild.build import inventory, lab_ledger, oci_archive, provenance, records
from imagebuild.build.base_source import boot_mode, resolve_base
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import heartbeat, step, warning
from imagebuild.render import downloads, secret_refs
from imagebuild.render.templating import shipped_dir
from imagebuild.run import PIPE, STDOUT, run, spawned
from imagebuild.spec import Spec
from imagebuild.spec.fields import normalized
from imagebuild.spec.secrets import literal_secrets
from imagebuild.vm import firmware as fw
from imagebuild.vm.accel import accelerator as resolve_accelerator
from imagebuild.vm.disks import image_info

PACKER = shutil.which("packer") or "/usr/bin/packer"


def build_seed(seed_dir: Path) -> None:
    """NoCloud seed for the build VM: a build user with a fresh SSH key, made for this build only."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    seed_dir.chmod(0o700)  # the build user's private key
    key = seed_dir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", render.BUILD_USER, "-f", str(key)],
        what="ssh-keygen")
    doc = yaml.safe_load((shipped_dir("cloud-init") / "build-user.yaml").read_text())
    doc["users"][0]["name"] = render.BUILD_USER
    doc["users"][0]["ssh_authorized_keys"] = [(seed_dir / "id_ed25519.pub").read_text().strip()]
    (seed_dir / "user-data").write_text("#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False))
    (seed_dir / "meta-data").write_text(f"instance-id: imagebuild-build-{uuid.uuid4().hex[:12]}\n"
                                        f"local-hostname: {render.BUILD_USER}\n")


def packer_directory(spec: Spec, output: str | Path) -> Path:
    """A ready-to-run render directory: every output plus packer/seed/ with a per-build SSH key."""
    out = render.write_tree(render.render_all(spec, with_user_data=False), output)
    build_seed(out / "packer" / "seed")
    return out


def inputs_hash(spec: Spec, base_checksum: str, artifacts: list[tuple[str, str]] | None = None) -> str:
    """Everything that decides the image's content: equal hashes mean a rebuild would change nothing.

    An artifact given by `checksum_url` counts by the sha256 that file names for it today (read
    the way the install script reads it), not by the URL: a new release behind the same URL
    changes the hash."""
    artifacts = resolved_artifacts(spec) if artifacts is None else artifacts
    blob = json.dumps({"spec": spec.spec_hash, "artifacts": artifacts, "base": base_checksum,
                       "imagebuild": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def resolved_artifacts(spec: Spec) -> list[tuple[str, str]]:
    """(URL, sha256) of every download the install makes (none for a package install): a sha256 given by
    `checksum_url` is the one that file names today, read once (render.downloads.pin: what install.sh pins)."""
    return [(art.resolved_url, art.pinned_sha256) for _, art in downloads.artifacts(downloads.pin(spec))]


def lab_artifacts(artifacts: list[tuple[str, str]]) -> list[str]:
    """What of the image is lab content (imagebuild.build.lab_ledger): downloads the developer tools made up."""
    found = [(url, lab_ledger.lookup(sha)) for url, sha in artifacts]
    return [f"{url}: {what}" for url, what in found if what]


#: What the bake does about the sandbox image, by image.sandbox.source (the progress line says it).
SANDBOX_SAYS = {"registry": "pulled through CRI from its registry, through config.registry's mirrors",
                "archive": "imported from image.sandbox.archive and pinned",
                "none": "not baked (image.sandbox.source: none): kubelet pulls it for the first pod"}


def sandbox_source(spec: Spec, packer_dir: Path) -> dict:
    """Where the sandbox image of the image comes from, as the manifest records it. An archive is fetched
    into *packer_dir* (Packer uploads it) once its sha256 matches and it holds config.sandbox_image."""
    name, source = normalized(spec.config.sandbox_image), spec.image.sandbox.source
    archive = spec.image.sandbox.archive
    if source == "archive" and archive is not None:
        return {"source": source, "url": archive.url} | oci_archive.sandbox_archive(
            archive.url, archive.sha256, spec.config.sandbox_image, packer_dir / render.SANDBOX_ARCHIVE)
    return {"source": source, "name": name, "digest": None}


# Packer UI messages that open each phase of a qemu build, for the duration breakdown, and the
# phase that must have opened first. The inventory (inventory.py, for the SBOM) runs after hygiene; the
# check, the last provisioner, starts as soon as its output is downloaded.
PHASES = [
    ("boot", re.compile(r"Starting VM|Starting HTTP server|Creating required virtual machine disks"
                        r"|Copying hard drive"), None),
    ("provision", re.compile(r"Connected to SSH!"), None),
    ("hygiene", re.compile(r"Provisioning with shell script: .*hygiene\.sh"), None),
    ("inventory", re.compile(r"Uploading \S*/inventory\.py "), None),
    ("check", re.compile(r"Downloading \S*imagebuild-inventory\.json "), "inventory"),
    ("shutdown", re.compile(r"Gracefully halting virtual machine"), None),
    ("convert", re.compile(r"Converting hard drive"), None),
    ("post-process", re.compile(r"Running post-processor"), None),
]


class PackerRun:
    """Runs `packer build -machine-readable` in its own process group, logging each UI line with
    the elapsed time as it comes and writing the readable log to *log_path*.

    packer-py is not used: it keeps its process handle to itself (no process group to stop on
    an interrupt, no environment), so Packer is run directly and its machine-readable lines
    (`timestamp,target,type,data...`) are parsed here.
    """

    def __init__(self, log_path: Path, tmpdir: Path):
        self.log_path = log_path
        self.tmpdir = tmpdir
        self.phase_starts: dict[str, float] = {}
        self.errors: list[str] = []
        self.artifacts: list[str] = []
        self.started = time.monotonic()

    def line(self, raw: str, log: IO[str]) -> None:
        """One machine-readable line: UI text to the log (say/message/error also to the
        progress log), artifacts and errors remembered, phase starts timed."""
        fields = raw.rstrip("\n").split(",", 4)
        if len(fields) < 4:
            log.write(raw)
            return
        kind, data = fields[2], [f.replace("%!(PACKER_COMMA)", ",") for f in fields[3:]]
        text = data[-1].replace("\\n", "\n").replace("\\r", "") if data else ""
        if kind == "ui":
            log.write(text + "\n")
            log.flush()
            elapsed = time.monotonic() - self.started
            for name, pattern, after in PHASES:
                ready = after is None or after in self.phase_starts
                if name not in self.phase_starts and ready and pattern.search(text):
                    self.phase_starts[name] = elapsed
            if data[0] == "error":
                self.errors.append(text)
            if data[0] in ("say", "message", "error"):
                step(f"packer {elapsed:6.1f}s {text.strip()}")
        elif kind == "artifact":
            self.artifacts.append(",".join(data))

    def run(self, template: Path, variables: dict[str, str], only: str) -> int:
        """`packer build` of *template*; returns Packer's exit status. Interrupted (Ctrl-C,
        SIGTERM through the CLI, any exception), Packer gets SIGINT as from a terminal's Ctrl-C
        (it stops its VM and cleans up), then its whole group SIGKILL after a minute."""
        # Packer's environment: its cache (port reservations, downloads) out of the working
        # directory, never phoning home, and a TMPDIR of this build's own, removed with it:
        # Packer 1.6.6 leaves the staging directory of cd_files (`packer_to_cdrom*`, the build
        # seed) in TMPDIR.
        env = {"PACKER_CACHE_DIR": str(cache_dir("packer")), "CHECKPOINT_DISABLE": "1",
               **os.environ, "TMPDIR": str(self.tmpdir)}
        cmd = [PACKER, "build", "-machine-readable", "-color=false", f"-only={only}"]
        for name, value in variables.items():
            cmd.append(f"-var={name}={value}")
        cmd.append(str(template))
        self.tmpdir.mkdir(exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as log, heartbeat("packer build"), \
                spawned(cmd, stdout=PIPE, stderr=STDOUT, env=env, stop_signal=signal.SIGINT, grace=60) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                self.line(raw.decode("utf-8", "replace"), log)
            return proc.wait()

    def durations(self, total: float) -> dict[str, float]:
        marks = sorted(self.phase_starts.items(), key=lambda item: item[1])
        out = {}
        for index, (name, start) in enumerate(marks):
            end = marks[index + 1][1] if index + 1 < len(marks) else total
            out[name] = round(end - start, 1)
        out["total"] = round(total, 1)
        return out


def _keep_failed_log(log_path: Path, output: Path, name: str) -> str:
    """Save a failed build's log in the output directory (no image goes there); say where."""
    target = output / f"{name}.packer-failed.log"
    try:
        output.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log_path, target)
    except OSError as exc:
        target.unlink(missing_ok=True)
        return f"its log could not be saved ({exc.strerror}); the tail follows"
    return f"full log: {target}"


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def bake(spec: Spec, output: Path, *, base: str | None = None, packer_vars: dict[str, str] | None = None,
         firmware: str | None = None) -> Path:
    """Build the golden qcow2 into *output*; returns the image path. Nothing half-made stays behind.

    *packer_vars* override template variables (the benchmark compares disk_discard=ignore). *firmware*
    (bios, uefi) is the build VM's; default: the image's (a hybrid image builds under SeaBIOS, see
    imagebuild.vm.firmware.BAKE_FIRMWARE).
    """
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    base_source, base_checksum = resolve_base(spec, base)
    # Before the build, not after it: a checksum_url this host cannot read fails in seconds. Read once:
    # the inputs hash and install.sh's pinned sha256 are the same. Header values given by the build host are
    # read now too; they reach the image only through the Packer directory's payload (0600, in a 0700 tree).
    spec = secret_refs.stage(downloads.pin(spec), image=True)
    artifacts = resolved_artifacts(spec)
    inputs = inputs_hash(spec, base_checksum, artifacts)
    accelerator = resolve_accelerator(spec.image.accelerator, spec.image.architecture)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}-bake-", dir=output.parent))
    packer_tmp: Path | None = None
    log_path = work / f"{spec.name}.packer.log"
    started = time.monotonic()
    try:
        # Packer's TMPDIR: in the system's temporary directory, not in *work*, whose path can be
        # long: Packer's plugins listen on unix sockets there, and a socket path over 107 bytes
        # crashes Packer ("bind: invalid argument").
        packer_tmp = Path(tempfile.mkdtemp(prefix="imagebuild-packer-"))
        step(f"bake {spec.name}: containerd {spec.containerd.version} ({spec.containerd.install.method}), "
             f"base {base_source}, accelerator {accelerator}")
        render_dir = packer_directory(spec, work / "render")
        packer_out = work / "image"
        run = PackerRun(log_path, tmpdir=packer_tmp)
        mode = boot_mode(spec, base_source)
        build_firmware = firmware or fw.for_bake(mode)
        variables = {"base_image": base_source, "base_checksum": base_checksum,
                     "output_directory": str(packer_out), "accelerator": accelerator,
                     "ssh_private_key_file": str(render_dir / "packer" / "seed" / "id_ed25519"),
                     "inventory_file": str(work / "inventory.json"),
                     **fw.packer_variables(spec.image.architecture, build_firmware, work),
                     **(packer_vars or {})}
        step(f"bake {spec.name}: {spec.image.os} {spec.image.architecture} image ({mode}), built under "
             f"{build_firmware}")
        sandbox = sandbox_source(spec, render_dir / "packer")
        step(f"bake {spec.name}: sandbox image {sandbox['name']}: {SANDBOX_SAYS[sandbox['source']]}")
        lab_content = lab_artifacts(artifacts)
        for what in lab_content:
            step(f"bake {spec.name}: lab content, so publish will refuse this image: {what}")
        held = literal_secrets(spec)
        for secret in held:
            kind = "a literal secret" if secret.recorded else "a secret read on this host"
            warning(f"bake {spec.name}: {secret.key} is {kind}; the image holds it in {secret.path} "
                 "(0600), the image file is 0600, and every AMI published from it carries it to the accounts it "
                 "is shared with (the Packer directory that held it is removed after the build)")
        code = run.run(render_dir / "packer" / "imagebuild.pkr.hcl", variables, only=f"{spec.name}.qemu.golden")
        image = packer_out / f"{spec.name}.qcow2"
        if code != 0 or not image.is_file():
            kept = _keep_failed_log(log_path, output, spec.name)
            raise ImagebuildError(f"packer build failed (exit {code}); {kept}\n" + "\n".join(run.errors[-5:])
                                  + "\n--- log tail ---\n" + _log_tail(log_path))
        total = time.monotonic() - started
        step("packer build done; writing manifest")
        if sandbox["source"] == "registry":   # what its registry served the build, as containerd holds it
            sandbox = sandbox | {"digest": inventory.image_digest(inventory.load(work / "inventory.json"),
                                                                  sandbox["name"])}
        manifest = _manifest(spec, image, work / "image-packer-manifest.json", base_source, base_checksum,
                             inputs, run.durations(total), accelerator) | {
            "build_firmware": build_firmware, "sandbox_image": sandbox, "lab_content": lab_content,
            "artifacts": [{"url": url, "sha256": sha} for url, sha in artifacts]}
        # Beside the image: its inventory (Packer downloaded it from the build VM), SBOM and provenance.
        manifest["records"] = records.write(packer_out, manifest, spec.document, work / "inventory.json",
                                            provenance.builder(spec.image.architecture, build_firmware, PACKER,
                                                               accelerator))
        (packer_out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if held:
            image.chmod(0o600)  # it holds the literal secret in its hosts.toml
        shutil.copyfile(log_path, packer_out / f"{spec.name}.packer.log")
        _publish_dir(packer_out, output)
        step(f"image: {output / image.name} ({manifest['disk_size'] / 2**20:.0f} MiB on disk, "
             f"{total:.0f}s)")
        return output / image.name
    except OSError as exc:
        raise ImagebuildError(f"bake of {spec.name} failed: {exc}; {output} holds no new image") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if packer_tmp is not None:
            shutil.rmtree(packer_tmp, ignore_errors=True)


def _manifest(spec: Spec, image: Path, packer_manifest: Path, base_source: str, base_checksum: str,
              inputs: str, durations: dict, accelerator: str) -> dict:
    info = image_info(image)
    entry: dict = {}
    if packer_manifest.exists():
        data = json.loads(packer_manifest.read_text())
        last = data.get("last_run_uuid")
        entry = next((b for b in data.get("builds", []) if b.get("packer_run_uuid") == last), {})
    install = spec.containerd.install
    return {
        "image": image.name,
        "sha256": sha256_file(image),
        "virtual_size": info["virtual-size"],
        "disk_size": image.stat().st_size,
        "family": spec.name,
        "spec_hash": spec.spec_hash,
        "inputs_hash": inputs,
        "containerd_version": spec.containerd.version,
        "install_method": install.method,
        "runc_version": install.runc.version if install.method == "tarball" else "distro package",
        "base_image": {"source": base_source, "checksum": base_checksum},
        "build_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "boot_mode": boot_mode(spec, base_source),
        "architecture": spec.image.ec2_architecture,
        "accelerator": accelerator,
        "imagebuild_version": __version__,
        "durations_s": durations,
        "packer": entry,
    }


def _publish_dir(source: Path, output: Path) -> None:
    """Move the finished files into *output* by rename (same filesystem), manifest.json last:
    a manifest in the output directory always describes a complete image beside it."""
    output.mkdir(parents=True, exist_ok=True)
    for stale in ("verify.json", "publish.json"):
        (output / stale).unlink(missing_ok=True)
    files = sorted(source.iterdir(), key=lambda p: p.name == "manifest.json")
    for path in files:
        os.replace(path, output / path.name)
