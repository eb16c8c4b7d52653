#!/usr/bin/env python3
"""The in-guest check: proves a machine matches its spec. Python 3.11 standard library only.

Runs as root inside the guest, as the Packer build's last provisioner (--phase build) and on every
verify boot (--phase boot), against expected.json rendered from the spec. Each check prints one line

    IMAGEBUILD-RESULT {"check": ..., "ok": ..., "expected": ..., "actual": ...}

to stdout (and to --results, e.g. a virtio-serial port), then one IMAGEBUILD-DONE line with the
totals. Exit status 0 only when every check passed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import TextIO

RESULT = "IMAGEBUILD-RESULT"
DONE = "IMAGEBUILD-DONE"
STATE_DIR = Path("/var/lib/imagebuild")
#: What the install was staged with under STATE_DIR: gone once it ran (user-data and the Packer build remove it).
STAGING = ("payload", "install.sh", "check.py", "expected.json")
CONTAINER_TIMEOUT = 180
VERIFY_NAMESPACE = "imagebuild-verify"  # containerd namespace of the verify boot's own test image


class Reporter:
    def __init__(self, results_path: str | None):
        # The port first: the host stops QEMU at the first DONE line it sees, and the console
        # (a slow emulated UART behind cloud-init's pipe) should not win that race.
        self.sinks: list[TextIO] = [open(results_path, "w", encoding="utf-8", buffering=1)] if results_path else []
        self.sinks.append(sys.stdout)
        self.passed = self.failed = 0

    def emit(self, prefix: str, record: dict) -> None:
        line = f"{prefix} {json.dumps(record, sort_keys=True)}\n"
        for sink in self.sinks:
            sink.write(line)
            sink.flush()

    def check(self, name: str, expected, actual, ok: bool | None = None, note: str = "") -> bool:
        ok = (expected == actual) if ok is None else ok
        self.passed += ok
        self.failed += not ok
        record = {"check": name, "ok": ok, "expected": expected, "actual": actual}
        if note:
            record["note"] = note
        self.emit(RESULT, record)
        return ok


def run(*cmd: str, timeout: float = 60, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, env=env)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{' '.join(cmd)}: timed out after {timeout}s")


def dig(tree: dict, path: list):
    """The value at *path* (keys, and indexes into lists of tables), or "<absent>"."""
    node = tree
    for key in path:
        if isinstance(key, int) and isinstance(node, list) and 0 <= key < len(node):
            node = node[key]
        elif isinstance(key, int) or not isinstance(node, dict) or key not in node:
            return "<absent>"
        else:
            node = node[key]
    return node


def version_matches(expected: str, reported: str, exact: bool = False) -> bool:
    """'1.6.20' matches 'v1.6.20', and unless *exact* (a release tarball: upstream's build prints its tag)
    a distribution's build of it, '1.6.20~ds1' or '1.6.20-1'; never '1.6.200'."""
    if exact:
        return re.fullmatch(rf"v?{re.escape(expected)}", reported) is not None
    return re.match(rf"v?{re.escape(expected)}(?![0-9.])", reported) is not None


def ctr_versions() -> dict[str, str]:
    out = run("ctr", "version").stdout
    found, section = {}, None
    for line in out.splitlines():
        if line.strip().rstrip(":") in ("Client", "Server"):
            section = line.strip().rstrip(":").lower()
        match = re.match(r"\s*Version:\s*(\S+)", line)
        if match and section:
            found[section] = match.group(1)
    return found


def service_checks(rep: Reporter, exp: dict) -> None:
    rep.check("service.active", "active", run("systemctl", "is-active", "containerd").stdout.strip())
    rep.check("service.enabled", "enabled", run("systemctl", "is-enabled", "containerd").stdout.strip())
    versions = ctr_versions()
    tarball = exp["package"] is None   # upstream's release: exactly its version, no distribution suffix
    for side in ("client", "server"):
        actual = versions.get(side, "<none>")
        rep.check(f"version.{side}", exp["containerd_version"], actual,
                  version_matches(exp["containerd_version"], actual, exact=tarball))
    if exp["runc_version"]:
        first = (run("runc", "--version").stdout.splitlines() or [""])[0]
        actual = first.split()[-1] if first else "<none>"
        rep.check("version.runc", exp["runc_version"], actual,
                  version_matches(exp["runc_version"], actual, exact=True))


def package_checks(rep: Reporter, exp: dict) -> None:
    """Package installs: the pinned version is the installed one, and held when the spec says so."""
    pkg = exp.get("package")
    if not pkg:
        return
    installed = run("dpkg-query", "-W", "-f=${Version}", pkg["name"])
    rep.check("package.version", pkg["version"],
              installed.stdout.strip() if installed.returncode == 0 else "<not installed>")
    held = pkg["name"] in run("apt-mark", "showhold").stdout.split()
    rep.check("package.hold", "held" if pkg["hold"] else "not held", "held" if held else "not held")


def tool_checks(rep: Reporter, exp: dict) -> None:
    """The system profile's packages (kubernetes-worker: conntrack, socat, ebtables): installed, and
    their tool runs."""
    for pkg in exp.get("packages", []):
        status = run("dpkg-query", "-W", "-f=${Status}", pkg["name"])
        rep.check(f"tool.{pkg['name']}.package", "install ok installed",
                  status.stdout.strip() if status.returncode == 0 else "<not installed>")
        probe = run(*pkg["probe"])
        actual = "runs" if probe.returncode == 0 else f"exit {probe.returncode}: {probe.stderr.strip()[-200:]}"
        rep.check(f"tool.{pkg['name']}.runs", "runs", actual)


def cni_checks(rep: Reporter, exp: dict) -> None:
    """Installs with CNI plugins: the plugins run here and answer the CNI VERSION call
    (`loopback` is in every release of the plugins)."""
    bin_dir = exp.get("cni_plugins_dir")
    if not bin_dir:
        return
    try:
        done = subprocess.run([f"{bin_dir}/loopback"], env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)
        answer = json.loads(done.stdout)["supportedVersions"] if done.returncode == 0 else \
            f"exit {done.returncode}: {done.stderr.strip()[-200:]}"
    except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, TypeError) as exc:
        answer = f"{type(exc).__name__}: {exc}"
    ok = isinstance(answer, list) and bool(answer)
    rep.check("cni.loopback", "answers CNI VERSION", f"supports {', '.join(answer)}" if ok else answer, ok)


#: Where containerd (run by systemd) finds a shim: beside its own binary, then systemd's default PATH.
SHIM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def runtime_checks(rep: Reporter, exp: dict, search: tuple[str, ...] = SHIM_PATH) -> None:
    """Every runtime the spec configures (nvidia, gVisor, kata...): its shim is where containerd finds one,
    and the binary the runtime names is there and executable; a pod asking for it would fail otherwise."""
    containerd = shutil.which("containerd", path=os.pathsep.join(search))
    dirs = ([os.path.dirname(containerd)] if containerd else []) + list(search)
    for runtime in exp.get("runtimes", []):
        shim = shutil.which(runtime["shim"], path=os.pathsep.join(dirs))
        rep.check(f"runtime.{runtime['name']}.shim", runtime["shim"], shim or f"not found in {':'.join(dirs)}",
                  shim is not None)
        if runtime["binary"]:
            ok = os.path.isfile(runtime["binary"]) and os.access(runtime["binary"], os.X_OK)
            rep.check(f"runtime.{runtime['name']}.binary", "an executable file", runtime["binary"] if ok else
                      f"{runtime['binary']}: missing or not executable", ok)


def config_checks(rep: Reporter, exp: dict) -> None:
    dump = run("containerd", "config", "dump")
    try:
        effective = tomllib.loads(dump.stdout) if dump.returncode == 0 else None
    except tomllib.TOMLDecodeError as exc:
        effective, dump.stderr = None, f"unparsable dump: {exc}"
    if effective is None:
        rep.check("config.dump", "exit 0", f"exit {dump.returncode}: {dump.stderr.strip()[-300:]}", False)
        return
    for item in exp["config"]:
        rep.check(item["name"], item["value"], dig(effective, item["path"]))
    if exp.get("cni_plugins_dir"):
        dirs = cni_dirs(effective)
        rep.check("cni.bin_dir", f"includes {exp['cni_plugins_dir']}", dirs, exp["cni_plugins_dir"] in dirs,
                  note="where CRI looks for CNI plugins (config dump), and where the install put them")


def cni_dirs(effective: dict) -> list[str]:
    """The directories containerd's CRI looks in for CNI plugins (bin_dir, and bin_dirs on 2.x), from a
    `containerd config dump`: 1.x's io.containerd.grpc.v1.cri, 2.x's io.containerd.cri.v1.runtime."""
    plugins = effective.get("plugins") or {}
    for name in ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"):
        cni = (plugins.get(name) or {}).get("cni")
        if isinstance(cni, dict):
            dirs = [cni["bin_dir"]] if cni.get("bin_dir") else []
            return dirs + [d for d in cni.get("bin_dirs") or [] if d not in dirs]
    return []


def file_checks(rep: Reporter, exp: dict) -> None:
    for item in exp["files"]:
        path = Path(item["path"])
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<missing>"
        rep.check(f"file.{item['path']}", item["sha256"], actual)


def unit_checks(rep: Reporter, exp: dict) -> int:
    props = ",".join(list(exp["unit"]) + ["MainPID", "ActiveEnterTimestampMonotonic"])
    shown = dict(line.split("=", 1) for line in run("systemctl", "show", "containerd", "-p", props).stdout.splitlines()
                 if "=" in line)
    for prop, value in exp["unit"].items():
        rep.check(f"unit.{prop}", value, shown.get(prop, "<absent>"))
    pid = int(shown.get("MainPID", "0") or 0)
    try:
        actual = int(Path(f"/proc/{pid}/oom_score_adj").read_text()) if pid else "<no main pid>"
    except OSError as exc:
        actual = f"<{exc}>"
    rep.check("process.oom_score_adj", exp["oom_score_adj"], actual)
    return int(shown.get("ActiveEnterTimestampMonotonic", "0") or 0)


def system_checks(rep: Reporter, exp: dict) -> None:
    for module in exp["modules"]:
        loaded = Path(f"/sys/module/{module}").exists()
        rep.check(f"module.{module}", "loaded", "loaded" if loaded else "not loaded")
    for key, value in exp["sysctls"].items():
        path = Path("/proc/sys") / key.replace(".", "/")
        actual = " ".join(path.read_text().split()) if path.exists() else "<absent>"
        rep.check(f"sysctl.{key}", " ".join(str(value).split()), actual)


def container_checks(rep: Reporter, image: str | None) -> None:
    """A container runs from a local image, and a running one survives `systemctl restart containerd`. The
    test image goes into a namespace of its own: CRI (what kubelet sees) never lists this boot's double."""
    if not image:
        rep.check("container.image", "a test image tarball (--test-image)", "none given", False)
        return
    ctr = ("ctr", "-n", VERIFY_NAMESPACE)
    imported = run(*ctr, "images", "import", "--all-platforms", image, timeout=CONTAINER_TIMEOUT)
    names = re.findall(r"(\S+:\S+)", imported.stdout) or [""]
    listing = run(*ctr, "images", "ls", "-q").stdout.split()
    ref = next((n for n in listing if "imagebuild" in n), names[0])
    if not rep.check("container.import", "exit 0", f"exit {imported.returncode}",
                     imported.returncode == 0 and bool(ref),
                     note=imported.stderr.strip()[-300:]):
        return
    once = run(*ctr, "run", "--rm", ref, "imagebuild-once", "/bin/echo", "imagebuild-ok", timeout=CONTAINER_TIMEOUT)
    rep.check("container.run", "imagebuild-ok", once.stdout.strip() or once.stderr.strip()[-300:])

    started = run(*ctr, "run", "-d", ref, "imagebuild-long", "/bin/sleep", "3600", timeout=CONTAINER_TIMEOUT)
    pid = _task_pid(ctr, "imagebuild-long")
    if not rep.check("container.start", "running",
                     "running" if pid else f"not running: {started.stderr.strip()[-300:]}"):
        return
    ctd_pid = run("systemctl", "show", "containerd", "-p", "MainPID", "--value").stdout.strip()
    ctd_cgroup = _cgroup(ctd_pid)
    task_cgroup = _cgroup(str(pid))
    rep.check("container.own_cgroup", f"not {ctd_cgroup}", task_cgroup,
              bool(task_cgroup) and task_cgroup != ctd_cgroup and "containerd.service" not in task_cgroup)
    restart = run("systemctl", "restart", "containerd", timeout=120)
    active = run("systemctl", "is-active", "containerd").stdout.strip()
    new_pid = run("systemctl", "show", "containerd", "-p", "MainPID", "--value").stdout.strip()
    rep.check("container.restart_containerd", "active with a new pid",
              f"{active}, pid {ctd_pid} -> {new_pid}",
              restart.returncode == 0 and active == "active" and new_pid != ctd_pid)
    alive = Path(f"/proc/{pid}").exists()
    after = _task_pid(ctr, "imagebuild-long")
    rep.check("container.survives_restart", f"pid {pid} still running", f"pid {after or 'gone'}"
              + ("" if alive else " (process gone)"), alive and after == pid)
    run(*ctr, "tasks", "kill", "-s", "SIGKILL", "imagebuild-long")
    for _ in range(20):
        if run(*ctr, "tasks", "delete", "imagebuild-long").returncode == 0:
            break
        time.sleep(0.5)
    run(*ctr, "containers", "delete", "imagebuild-long")


def _task_pid(ctr: tuple, name: str) -> int:
    for _ in range(30):
        for line in run(*ctr, "tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == name and fields[2] == "RUNNING":
                return int(fields[1])
        time.sleep(0.5)
    return 0


def _cgroup(pid: str) -> str:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return ""
    unified = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    return unified[0] if unified else lines[0].split(":", 2)[2] if lines else ""


def cri_checks(rep: Reporter, lab: dict | None) -> float | None:
    """What kubelet sees, asked through CRI: cri_checks.py (with cri.py, a stdlib CRI v1 client), which
    the verify boot stages beside this file from its seed disk (they are not installed on machines)."""
    try:
        from imagebuild.guest import cri_checks as more  # on the host (tests)
    except ImportError:
        try:
            import cri_checks as more  # type: ignore[no-redef]  # in the guest
        except ImportError as exc:
            rep.check("cri.checks", "cri_checks.py and cri.py beside check.py", f"<{exc}>", False)
            return None
    return more.run_all(rep, lab)


def build_facts() -> dict:
    facts_path = STATE_DIR / "build-facts.json"
    return json.loads(facts_path.read_text()) if facts_path.exists() else {}


def hygiene_checks(rep: Reporter, exp: dict, instance_id: str | None) -> None:
    """The image was cleaned before capture, so this boot made itself fresh identities."""
    facts = build_facts()
    if instance_id:
        current = Path("/var/lib/cloud/data/instance-id")
        rep.check("hygiene.cloud_init_fresh", instance_id,
                  current.read_text().strip() if current.exists() else "<none>")
    machine_id = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() else ""
    built = facts.get("machine_id")
    rep.check("hygiene.machine_id", f"32 hex digits, not the build's {built or '(none recorded)'}", machine_id,
              re.fullmatch(r"[0-9a-f]{32}", machine_id) is not None and machine_id != built)
    keys = sorted(p.name for p in Path("/etc/ssh").glob("ssh_host_*_key.pub"))
    fingerprints = {p: hashlib.sha256(Path("/etc/ssh", p).read_bytes()).hexdigest() for p in keys}
    reused = [k for k, v in fingerprints.items() if facts.get("ssh_host_keys", {}).get(k) == v]
    user = exp.get("build_user")
    if user:
        present = run("getent", "passwd", user).returncode == 0
        rep.check("hygiene.build_user_removed", f"no user {user}",
                  f"user {user} present" if present else f"no user {user}")
    rep.check("hygiene.ssh_host_keys", "regenerated on first boot",
              f"{len(keys)} keys, {len(reused)} reused from the build",
              bool(keys) and not reused)
    staged = [str(STATE_DIR / name) for name in STAGING if (STATE_DIR / name).exists()]
    rep.check("hygiene.staging_removed", [], staged,
              note="the install's payload (secrets included), install script and check are gone after it")


def secret_checks(rep: Reporter, exp: dict) -> None:
    """Literal secrets stay secret: secret_checks.py, which the verify boot stages beside this file (it is not
    installed on machines)."""
    try:
        from imagebuild.guest import secret_checks as more  # on the host (tests)
    except ImportError:
        try:
            import secret_checks as more  # type: ignore[no-redef]  # in the guest
        except ImportError as exc:
            rep.check("secret.checks", "secret_checks.py beside check.py", f"<{exc}>", False)
            return
    more.run_all(rep, exp)


def image_build_checks(rep: Reporter, exp: dict) -> None:
    """In an image's build: no hosts.toml written from a value read on the node (SSM, Secrets Manager) is in the
    image; each machine's boots write it with their own role (imagebuild-resolve-secrets.service)."""
    for entry in (exp.get("secrets") or {}).get("on_node", []):
        present = Path(entry["path"]).exists()
        rep.check(f"secret.not_in_image.{entry['path']}", "absent: written at each boot by " + entry["unit"],
                  "present: the image would hold a value the build read" if present
                  else "absent: written at each boot by " + entry["unit"])


def boot_checks(rep: Reporter, boot: dict) -> None:
    """What this verify boot presented (platform, NIC, hostname, IMDS): boot_checks.py, which the verify
    boot stages beside this file (it is not installed on machines)."""
    try:
        import boot_checks as more
    except ImportError as exc:
        rep.check("boot.checks", "boot_checks.py beside check.py", f"<{exc}>", False)
        return
    more.run_all(rep, boot, build_facts())


def extra_checks(rep: Reporter, exp: dict, phase: str = "boot") -> None:
    """The spec's verify.checks; each command sees IMAGEBUILD_CHECK_PHASE: build (the bake's build VM, or
    verify.on_boot's check after a user-data install) or boot (a verify boot)."""
    env = {**os.environ, "IMAGEBUILD_CHECK_PHASE": phase}
    for item in exp["extra_checks"]:
        done = run("bash", "-c", item["run"], timeout=300, env=env)
        rep.check(f"extra.{item['name']}", "exit 0", f"exit {done.returncode}", done.returncode == 0,
                  note=(done.stdout + done.stderr).strip()[-300:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expected", default=str(STATE_DIR / "expected.json"))
    parser.add_argument("--phase", choices=["build", "boot"], default="boot",
                        help="build: inside the Packer build (no hygiene or container checks); boot: a verify boot")
    parser.add_argument("--test-image", help="OCI image tarball for the container checks (boot phase)")
    parser.add_argument("--instance-id", help="the instance-id this boot's seed carries")
    parser.add_argument("--results", help="also write result lines here (e.g. a virtio-serial port)")
    parser.add_argument("--cri-lab", help="the verify boot's registry lab (cri-lab.json) for the CRI checks")
    parser.add_argument("--image-build", action="store_true",
                        help="build phase of an image (the Packer build): a value read on the node is not in it")
    parser.add_argument("--boot", help="JSON facts of this verify boot: platform, instance_id, hostname, mac, "
                                       "public_key (boot phase)")
    args = parser.parse_args(argv)
    boot = json.loads(Path(args.boot).read_text()) if args.boot else {}
    cri_ready_at = None

    exp = json.loads(Path(args.expected).read_text())
    rep = Reporter(args.results)
    service_checks(rep, exp)
    package_checks(rep, exp)
    tool_checks(rep, exp)
    cni_checks(rep, exp)
    runtime_checks(rep, exp)
    config_checks(rep, exp)
    file_checks(rep, exp)
    active_at = unit_checks(rep, exp)
    system_checks(rep, exp)
    if args.phase == "boot":
        container_checks(rep, args.test_image)
        cri_ready_at = cri_checks(rep, json.loads(Path(args.cri_lab).read_text()) if args.cri_lab else None)
        hygiene_checks(rep, exp, args.instance_id or boot.get("instance_id"))
        secret_checks(rep, exp)
        if boot:
            boot_checks(rep, boot)
    if args.phase == "build" and args.image_build:
        image_build_checks(rep, exp)
    extra_checks(rep, exp, args.phase)
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    rep.emit(DONE, {"passed": rep.passed, "failed": rep.failed, "phase": args.phase,
                    "containerd_active_at_s": round(active_at / 1e6, 2), "uptime_s": uptime,
                    "cri_ready_at_s": cri_ready_at,
                    "spec_hash": exp["spec_hash"]})
    return 0 if rep.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
