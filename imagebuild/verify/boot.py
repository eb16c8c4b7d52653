"""Verify: boot an image (or a base image plus the user-data) in QEMU and run the in-guest check.

The image itself is never written: the guest runs on a throwaway copy-on-write overlay. A fresh
NoCloud seed carries the check (imagebuild/guest/check.py), what it must find (expected.json,
rendered from the spec), and a registry-free test image; results come back over a dedicated
virtio-serial port, the serial console is saved for people.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from imagebuild import render, vm
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.progress import step
from imagebuild.render import userdata
from imagebuild.render.templating import PACKAGE_DIR, render_template
from imagebuild.run import run
from imagebuild.spec import Spec
from imagebuild.verify import cri_lab, imds, node_secrets
from imagebuild.verify.node_secrets import AwsStandIn
from imagebuild.verify.testimage import test_oci_image
from imagebuild.vm import firmware as fw
from imagebuild.vm.disks import OfflineImage

VERIFY_DIR = f"{render.GUEST_DIR}/verify"
SEED_MOUNT = "/run/imagebuild-seed"
TEST_IMAGE = "test-image.tar"


PLATFORMS = ("nocloud", "ec2")
NOCLOUD_HOSTNAME = "imagebuild-verify"
DATA_LABEL = "imagebuild"      # the EC2 boot's data disk (the test image): not a NoCloud seed
EC2_EXTRA_DISK = 2 * 2**30     # the EC2 boot's disk is this much larger than the image


def _boot_facts(platform: str, public_key: str, firmware: str = "bios") -> dict:
    """What this boot presents to the guest, which the in-guest check compares against."""
    if platform not in PLATFORMS:
        raise ImagebuildError(f"unknown platform {platform!r}: use {' or '.join(PLATFORMS)}")
    mac = vm.random_mac()
    if platform == "ec2":
        instance = imds.Instance(instance_id="i-" + uuid.uuid4().hex[:17], mac=mac,
                                 local_ipv4=vm.EC2_GUEST_IP, public_key=public_key)
        hostname = instance.local_hostname.split(".")[0]
        return {"platform": "ec2", "instance_id": instance.instance_id, "hostname": hostname, "mac": mac,
                "public_key": public_key, "firmware": firmware}
    return {"platform": "nocloud", "instance_id": f"imagebuild-verify-{uuid.uuid4().hex[:12]}",
            "hostname": NOCLOUD_HOSTNAME, "mac": mac, "firmware": firmware}


def _manifest_of(image: Path) -> dict:
    """The bake's manifest.json beside *image* when it describes *image*, else {}."""
    try:
        data = json.loads((image.parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("image") == image.name else {}


def image_firmware(image: Path, spec: Spec, firmware: str | None = None) -> str:
    """The firmware a verify boot of *image* uses: *firmware* when given, else what the image boots
    under: its bake's manifest.json (boot_mode: legacy-bios -> SeaBIOS; uefi and uefi-preferred, a hybrid
    image, -> UEFI), else the base image's (the built-in one of image.os/architecture, or image.base.boot_mode)."""
    if firmware:
        fw.check(spec.image.architecture, firmware)
        return firmware
    data = _manifest_of(image)
    if data.get("boot_mode"):
        return fw.for_boot_mode(data["boot_mode"])
    from imagebuild.build.base_source import boot_mode

    return fw.for_boot_mode(boot_mode(spec, str(image)))


def _seed_files(spec: Spec, *, install: bool, boot: dict, aws: AwsStandIn | None = None,
                files: dict[str, render.File] | None = None) -> bytes:
    """The user-data of a verify boot: this boot's facts and a script that copies the check and what it
    expects from the boot's disk (its NoCloud seed or EC2 data disk: _boot), runs it and reports over the
    results port, then power-off. *install* first installs the spec the way its own user-data does (the
    user-data path), so the spec's own user-data keeps nearly all of EC2's 16 KB. *aws*: the stand-in the
    image's boot-time resolver of registry headers is pointed at (imagebuild.verify.node_secrets), before it
    runs. *files*: render.guest_files(spec)."""
    files = render.guest_files(spec) if files is None else files
    staged = render.user_data_files(spec, files) if install else []
    staged.append((f"{VERIFY_DIR}/boot.json", (json.dumps(boot, indent=2) + "\n").encode(), 0o644))
    run_check = render_template("run-check.sh.j2", verify_dir=VERIFY_DIR, seed_mount=SEED_MOUNT,
                                results_port=vm.RESULTS_PORT, test_image=TEST_IMAGE,
                                instance_id=boot["instance_id"],
                                seed_label="cidata" if boot["platform"] == "nocloud" else DATA_LABEL)
    staged.append((f"{VERIFY_DIR}/run-check.sh", run_check.encode(), 0o755))
    commands = (render.user_data_commands(spec) if install else []) + [
        ["bash", f"{VERIFY_DIR}/run-check.sh"], ["systemctl", "poweroff"]]
    return userdata.cloud_config(staged, commands, node_secrets.bootcmd(aws) if aws else None).encode()


def _public_key(work: Path) -> str:
    key = work / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagebuild-verify", "-f", str(key)])
    return (work / "id_ed25519.pub").read_text().strip()


def _boot(disk: Path, spec: Spec, *, install: bool, test_image: Path, log_dir: Path, label: str,
          platform: str = "nocloud", firmware: str = "bios", build_firmware: str | None = None,
          sandbox: dict | None = None, egress: str = "open", aws: AwsStandIn | None = None) -> dict:
    """One verify boot. *build_firmware*: what the bake's manifest says its build VM booted under, which
    the guest compares with what hygiene.sh recorded there (boot.build_firmware). *sandbox*: the manifest's
    record of the image's sandbox image (default: what image.sandbox says the bake did). *egress*: the lab's
    network ("proxy": the lab's proxy is the guest's one way out; its log goes to <label>.proxy.log). *aws*:
    an AWS stand-in for the registry headers the node reads (EC2 only: its IMDS serves the role)."""
    if aws and platform != "ec2":
        raise ImagebuildError("an AWS stand-in for the registry headers the node reads needs the EC2 boot "
                              "(--platform ec2): the instance's role comes from its IMDS")
    work = Path(tempfile.mkdtemp(prefix="imagebuild-verify-"))
    try:
        boot = _boot_facts(platform, _public_key(work) if platform == "ec2" else "", firmware)
        if build_firmware:
            boot["build_firmware"] = build_firmware
        if egress == "proxy":
            boot["routed"] = False  # restrict=on: QEMU's DHCP offers no gateway (boot.network.dhcp)
        files = render.guest_files(spec)
        user_data = _seed_files(spec, install=install, boot=boot, aws=aws, files=files)
        serial_log = log_dir / f"{label}.serial.log"
        # The registry lab of this boot (imagebuild/verify/cri_lab.py). A baked image (not the user-data path)
        # must hold exactly what the bake put there and, when it baked its sandbox image, start a pod
        # before any registry is reachable.
        source = (sandbox or {}).get("source", spec.image.sandbox.source)
        with cri_lab.start(spec, work, platform, test_image, baked=not install,
                           sandbox_baked=not install and source != "none", sandbox=sandbox, egress=egress,
                           proxy_log=log_dir / f"{label}.proxy.log" if egress == "proxy" else None) as lab:
            # The check and what it expects, boot_checks.py and secret_checks.py ride on the seed disk like the
            # CRI checks: the user-data must fit EC2's 16 KB, the spec's own (the user-data path) with it.
            disk_files = {TEST_IMAGE: test_image.read_bytes(),
                          **{name: files[name].content for name in render.CHECK_FILES},
                          "boot_checks.py": (PACKAGE_DIR / "guest" / "boot_checks.py").read_bytes(),
                          "secret_checks.py": (PACKAGE_DIR / "guest" / "secret_checks.py").read_bytes(),
                          **lab.seed_files(PACKAGE_DIR / "guest")}
            step(f"verify {label}: booting {disk.name} as {platform} under {firmware} "
                 f"(timeout {spec.verify.timeout}s)")
            if platform == "nocloud":
                overlay = vm.overlay(disk, work)
                meta_data = f"instance-id: {boot['instance_id']}\nlocal-hostname: {boot['hostname']}\n"
                seed = vm.seed_iso(work / "seed.iso", user_data, meta_data.encode(), disk_files)
                result = vm.boot(overlay, seed, serial_log=serial_log, timeout=spec.verify.timeout,
                                   accel=spec.image.accelerator, done_marker=vm.DONE_PREFIX, mac=boot["mac"],
                                   netdev_options=lab.netdev_options(), arch=spec.image.architecture,
                                   firmware=firmware)
                report = _report(result, serial_log) | {"platform": platform}
            else:
                report = _boot_ec2(disk, spec, boot, user_data, disk_files, work, serial_log, lab.netdev_options(),
                                   aws)
            report["firmware"] = firmware
            report["egress"] = egress
            return _add_checks(report, lab.host_checks()) if report.get("summary") else report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_checks(report: dict, checks: list[dict]) -> dict:
    """*report* with host-side *checks* appended (a failed one fails the report)."""
    report["checks"] = report["checks"] + checks
    failed = [c["check"] for c in checks if not c["ok"]]
    report["failed"] = report["failed"] + failed
    report["passed"] = report["passed"] and not failed
    return report


def _boot_ec2(disk: Path, spec: Spec, boot: dict, user_data: bytes, disk_files: dict[str, bytes], work: Path,
              serial_log: Path, netdev_options: str, aws: AwsStandIn | None = None) -> dict:
    """The boot as EC2 presents it: SMBIOS identity, IMDSv2 (the user-data gzipped, as EC2 hands it
    over), a new NIC in another slot, a disk larger than the image; no NoCloud seed. With *aws*, the IMDS
    serves its role's credentials, in its region."""
    packed = gzip.compress(user_data, compresslevel=9, mtime=0)
    if len(packed) > userdata.EC2_LIMIT:
        raise ImagebuildError(f"the verify user-data is {len(packed)} bytes gzipped, over EC2's {userdata.EC2_LIMIT}")
    instance = imds.Instance(instance_id=boot["instance_id"], mac=boot["mac"], local_ipv4=vm.EC2_GUEST_IP,
                             public_key=boot["public_key"], user_data=packed,
                             architecture=spec.image.ec2_architecture,
                             instance_type=imds.INSTANCE_TYPES[spec.image.ec2_architecture])
    if aws:
        instance = dataclasses.replace(instance, role=aws.role, role_credentials=aws.credentials, region=aws.region,
                                       availability_zone=f"{aws.region}a")
    overlay = vm.overlay(disk, work, size=vm.virtual_size(disk) + EC2_EXTRA_DISK)
    data = vm.data_iso(work / "data.iso", disk_files, label=DATA_LABEL)
    with imds.ImdsServer(instance) as server:
        guest = vm.Guest(overlay, data, serial_log=serial_log, accel=spec.image.accelerator,
                           mac=boot["mac"], nic_slot=vm.EC2_NIC_SLOT,
                           netdev_options=vm.ec2_netdev(imds.relay_command(server.port)) + "," + netdev_options,
                           extra_args=vm.ec2_smbios(boot["instance_id"], instance.instance_type),
                           arch=spec.image.architecture,
                           firmware=boot["firmware"])
        with guest:
            guest.start()
            step(f"guest {guest.name}: booting as EC2 instance {boot['instance_id']} under {guest.accel} "
                 f"(serial log {guest.serial_log})")
            done = _wait_ec2(guest, spec.verify.timeout, server)
            guest.stop()
            result = guest.result(done)
        log = list(server.log)
    _write_imds_log(serial_log.with_name(serial_log.name.replace(".serial.log", ".imds.log")), log)
    if done is None:
        reason = ("cloud-init did not run: the boot reached its login prompt with no cloud-init stage and "
                  f"{'no request to' if not log else f'{len(log)} requests to'} the IMDS; ds-identify found no "
                  "datasource for this EC2 machine: does the image's cloud-init datasource_list include Ec2?")
        check = {"check": "ec2.cloud_init_ran", "ok": False,
                 "expected": "cloud-init runs with the Ec2 datasource", "actual": reason}
        return {"passed": False, "failed": [check["check"]], "checks": [check], "summary": None,
                "timings": {"kernel_s": result.kernel_s, "containerd_active_s": None,
                            "check_done_s": result.markers.get("login prompt")},
                "serial_log": str(serial_log), "platform": "ec2", "reason": reason}
    report = _report(result, serial_log)
    problems = imds.token_violations(log)
    puts = sum(1 for r in log if r.method == "PUT" and r.status == 200)
    gets = sum(1 for r in log if r.method == "GET" and r.token == "valid")
    refused = sum(1 for r in log if r.status == 401)
    check = {"check": "ec2.imds_v2_only", "ok": not problems,
             "expected": "token PUT first, then token-bearing GETs; no tokenless request answered 200",
             "actual": "; ".join(problems) if problems else
             f"PUT first ({puts} token PUTs), {gets} GETs with a token, {refused} refused with 401"}
    report["checks"].append(check)
    if problems:
        report["failed"].append(check["check"])
        report["passed"] = False
    return report | {"platform": "ec2", "imds_requests": len(log)}


def _wait_ec2(guest, timeout: float, server) -> vm.Line | None:
    """Wait for the check's DONE line; None as soon as the boot shows cloud-init stayed off (a login
    prompt with no cloud-init stage before it), rather than waiting out the timeout."""
    deadline = time.monotonic() + timeout
    done_or_login = re.compile(re.escape(vm.DONE_PREFIX) + r"|" + vm.DEFAULT_MARKERS["login prompt"])
    stage = re.compile(vm.DEFAULT_MARKERS["cloud-init local"] + r"|Cloud-init v\. \S+ running")
    while True:
        line = guest.wait_for(done_or_login, max(1.0, deadline - time.monotonic()))
        if vm.DONE_PREFIX in line.text:
            return line
        if not any(stage.search(seen.text) for seen in guest.lines) and not server.log:
            return None
        done_or_login = re.compile(re.escape(vm.DONE_PREFIX))


def _write_imds_log(path: Path, log: list) -> None:
    text = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in log)
    render.write_file_atomic(path, text.encode())


def _report(result, serial_log: Path) -> dict:
    records = []
    for line in result.results:
        try:
            record = json.loads(line)
        except ValueError:   # a console copy broken by a kernel message; DONE's counts still hold
            continue
        if isinstance(record, dict):
            records.append(record)
    checks = [r for r in records if "check" in r]
    done = next((r for r in records if "passed" in r and "failed" in r), None)
    if done is None:
        raise ImagebuildError(f"the guest never reported its check summary; serial log: {serial_log}\n"
                              + vm.tail(serial_log))
    kernel_at = result.kernel_at
    active = done.get("containerd_active_at_s") or None
    cri_ready = done.get("cri_ready_at_s")
    timings = {
        "kernel_s": round(kernel_at, 1) if kernel_at is not None else None,
        "containerd_active_s": round(kernel_at + active, 1) if kernel_at is not None and active else None,
        "check_done_s": round(result.done_at, 1),
        "cri_ready_s": round(kernel_at + cri_ready, 1) if kernel_at is not None and cri_ready else None,
    }
    failed = [c["check"] for c in checks if not c["ok"]]
    return {"passed": not failed and done["failed"] == 0 and bool(checks), "failed": failed,
            "checks": checks, "summary": done, "timings": timings, "serial_log": str(serial_log)}


def _test_image(arch: str) -> Path:
    """The test image of *arch*, written afresh (a few KB from the package's bytes: never a stale cached one)."""
    from imagebuild.paths import cache_dir

    path = cache_dir("test-image", arch) / TEST_IMAGE
    test_oci_image(path, arch=arch)
    return path


def report_name(platform: str, *, user_data: bool = False) -> str:
    """verify.json (NoCloud) or verify-ec2.json (EC2); verify-user-data[-ec2].json for the user-data path."""
    stem = "verify-user-data" if user_data else "verify"
    return f"{stem}.json" if platform == "nocloud" else f"{stem}-{platform}.json"


def verify_image(image: Path, spec: Spec, *, log_dir: str | None = None, platform: str = "nocloud",
                 firmware: str | None = None, aws: AwsStandIn | None = None) -> dict:
    """Boot *image* on an overlay with the check of *spec*, as *platform* presents it, under *firmware*
    (default: what the image boots under, see image_firmware); writes verify.json (NoCloud) or
    verify-ec2.json (EC2) beside the image. *aws*: where the image's boot reads the registry headers given
    by reference (imagebuild.verify.node_secrets; EC2 only)."""
    image = image.resolve()
    if not image.is_file():
        raise ImagebuildError(f"image {image} does not exist")
    firmware = image_firmware(image, spec, firmware)
    out_dir = Path(log_dir).resolve() if log_dir else image.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    image_sha = sha256_file(image)
    label = image.stem + (".verify" if platform == "nocloud" else f".verify-{platform}")
    manifest = _manifest_of(image)
    # hygiene.sh records the build VM's firmware; an image baked without hygiene has no record.
    build_firmware = manifest.get("build_firmware") if spec.image.hygiene else None
    stored = content_store_check(image, spec, manifest.get("sandbox_image"))
    report = _boot(image, spec, install=False, test_image=_test_image(spec.image.architecture), log_dir=out_dir,
                   label=label, platform=platform, firmware=firmware, build_firmware=build_firmware,
                   sandbox=manifest.get("sandbox_image"), aws=aws)
    if report.get("summary") and stored:
        report = _add_checks(report, [stored])
    if sha256_file(image) != image_sha:
        raise ImagebuildError(f"{image} changed during verify; it must never be written")
    return write_image_report(out_dir, report, image, image_sha, spec.spec_hash, platform)


def content_store_check(image: Path, spec: Spec, sandbox: dict | None) -> dict | None:
    """Read without booting: every blob in the image's containerd content store is one the bake's declared
    source of its sandbox image gave (image.sandbox: none gives none, an archive its own blobs), so nothing
    else (a test program under any name) was baked in. None for a registry source (its blobs are not known
    ahead) or an image without the bake's record."""
    if not sandbox or sandbox.get("source") == "registry":
        return None
    allowed = set(sandbox.get("blobs") or [])
    path = f"{spec.config.root}/io.containerd.content.v1.content/blobs/sha256"
    work = Path(tempfile.mkdtemp(prefix="imagebuild-offline-"))
    try:
        with OfflineImage(image, work) as disk:
            held = {f"sha256:{name}" for name in disk.listdir(path) or []}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    foreign = sorted(held - allowed)
    return {"check": "image.content_store", "ok": not foreign,
            "expected": f"only blobs of the sandbox image's {sandbox['source']} source ({len(allowed)} known)",
            "actual": f"{len(held)} blobs" + (f"; not from that source: {', '.join(foreign)}" if foreign else ""),
            "note": f"{path}, read without booting the image"}


def write_image_report(out_dir: Path, report: dict, image: Path, image_sha: str, spec_hash: str,
                       platform: str = "nocloud") -> dict:
    """Complete a boot's report (`_report`) for *image* and write it as out_dir/verify.json
    (verify-ec2.json for the EC2 boot)."""
    report = report | {"image": str(image), "image_sha256": image_sha, "spec_hash": spec_hash, "mode": "image"}
    render.write_file_atomic(out_dir / report_name(platform), (json.dumps(report, indent=2) + "\n").encode())
    return report


def verify_user_data(spec: Spec, *, base: str | None = None, log_dir: str | None = None,
                     platform: str = "nocloud", firmware: str | None = None, egress: str = "open") -> dict:
    """Boot the plain base image with the spec's user-data (on EC2: through the IMDS, gzipped), then
    run the same check. *egress* "proxy": the guest's one way out is the lab's proxy, which the spec's proxy
    must name (imagebuild.verify.egress); its log is <label>.proxy.log in *log_dir*."""
    from imagebuild.build.base_source import resolve_base

    source, _ = resolve_base(spec, base)
    spec = render.downloads.for_render(spec)  # the user-data as `imagebuild user-data` writes it
    out_dir = Path(log_dir or tempfile.mkdtemp(prefix="imagebuild-verify-ud-")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    label = "user-data.verify" if platform == "nocloud" else f"user-data.verify-{platform}"
    report = _boot(Path(source), spec, install=True, test_image=_test_image(spec.image.architecture),
                   log_dir=out_dir, label=label, platform=platform,
                   firmware=image_firmware(Path(source), spec, firmware), egress=egress)
    report |= {"base_image": source, "spec_hash": spec.spec_hash, "mode": "user-data",
               "user_data_bytes": len(render.user_data(spec))}
    render.write_file_atomic(out_dir / report_name(platform, user_data=True),
                             (json.dumps(report, indent=2) + "\n").encode())
    return report


def print_report(report: dict, *, as_json: bool = False, stream=sys.stdout) -> None:
    if as_json:
        stream.write(json.dumps(report, indent=2) + "\n")
        return
    rows = [(c["check"], "ok" if c["ok"] else "FAIL", json.dumps(c["expected"]), json.dumps(c["actual"]))
            for c in report["checks"]]
    widths = [max(len(r[i]) for r in rows + [("check", "", "expected", "actual")]) for i in range(4)]
    widths = [min(w, 60) for w in widths]
    header = ("check", "", "expected", "actual")
    for row in [header] + rows:
        stream.write("  ".join(cell[:60].ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    t = report["timings"]
    verdict = "PASSED" if report["passed"] else f"FAILED: {', '.join(report['failed']) or 'no checks ran'}"
    if report.get("reason"):
        verdict += f" ({report['reason']})"
    stream.write(f"\n{verdict} ({len(rows)} checks). QEMU start -> kernel {t['kernel_s']}s, "
                 f"containerd active {t['containerd_active_s']}s, CRI ready {t.get('cri_ready_s')}s, "
                 f"check done {t['check_done_s']}s. "
                 f"Serial log: {report['serial_log']}\n")
