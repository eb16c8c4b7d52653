#!/usr/bin/env python3
"""The verify boot's CRI checks: what kubelet sees, asked through CRI (cri.py, a stdlib CRI v1 client),
not ctr. Python 3.11 standard library only.

Staged by the verify boot beside check.py from its seed disk, with cri.py and the registry lab's
cri-lab.json (imagebuild/verify/cri_lab.py); not installed on machines.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import subprocess
import time
from pathlib import Path

CRI_READY_TIMEOUT = 60
PULL_TIMEOUT = 300
CNI_CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
SANDBOX_SLICE = "imagebuild-verify.slice"
NETWORK_READY_TIMEOUT = 30  # CRI reloads its CNI config on a file event: a second or two
BUILD_LAB_MARK = "# imagebuild-build-lab"  # on the /etc/hosts lines the bake's lab of earlier releases added


def _cri_client():
    try:
        from imagebuild.guest import cri as client  # on the host (tests)
    except ImportError:
        try:
            import cri as client  # in the guest: staged beside check.py
        except ImportError:
            return None
    return client


def booted_at() -> float | None:
    """Seconds since boot at which this boot's first containerd start finished booting (journal line
    'containerd successfully booted': every plugin's service, CRI's included, is registered and the
    socket serves), or None."""
    try:
        out = subprocess.run(["journalctl", "-b", "-u", "containerd", "-o", "short-monotonic", "--no-pager", "-q"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return first_boot(out)


def first_boot(journal: str) -> float | None:
    """The monotonic time of the first 'successfully booted' line of `journalctl -o short-monotonic`."""
    for line in journal.splitlines():
        match = re.match(r"\[\s*([0-9.]+)\]", line)
        if match and "successfully booted" in line:
            return float(match.group(1))
    return None


def run_all(rep, lab: dict | None, socket_path: str | None = None,
            ready_timeout: float = CRI_READY_TIMEOUT) -> float | None:
    """What kubelet sees, asked through CRI (cri.py, a stdlib CRI v1 client), not ctr: the runtime is
    ready; NetworkReady matches the CNI network configs present; with the verify boot's registry lab
    (*lab*, cri-lab.json): CRI's view of its config holds the spec's sandbox image and config_path
    (1.x: containerd 2.x's Status shows no image config, the pulls and the sandbox prove it), a pull
    from each mirrored registry succeeds (the upstreams are unreachable; the host reads the mirror's
    log), and a pod sandbox (host network: no CNI needed) and a container in it run.
    A baked image (lab["baked"]) first proves, before the lab's host names join /etc/hosts (lab["hosts"]),
    so with every registry unreachable: no lab line is in /etc/hosts, and containerd holds exactly the
    images the bake put there: its sandbox image when image.sandbox baked one (lab["sandbox_baked"]; by
    name and by the digest its source gave), else none. A baked sandbox image must be pinned where
    containerd can pin, and a pod sandbox starts from it. Otherwise (the user-data path, or a bake with
    image.sandbox.source none) the pod pulls it through the lab, as kubelet's first pod would.
    Returns when CRI became ready (seconds since boot, see booted_at), None if it did not."""
    client = _cri_client()
    if client is None:
        rep.check("cri.client", "cri.py beside cri_checks.py", "<missing>", False)
        return None
    sock = socket_path or client.DEFAULT_SOCKET
    try:
        status = client.wait_ready(sock, timeout=ready_timeout)
    except client.CRIError as exc:
        rep.check("cri.runtime_ready", True, str(exc)[-300:], False)
        return None
    ready_at = booted_at()
    rep.check("cri.runtime_ready", True, True)
    conditions = client.conditions(status)
    try:
        conf_dir = json.loads(status["info"].get("cniconfig", "{}")).get("PluginConfDir") or "/etc/cni/net.d"
    except ValueError:
        conf_dir = "/etc/cni/net.d"
    confs = sorted(p.name for p in Path(conf_dir).glob("*") if p.suffix in CNI_CONFIG_SUFFIXES)
    rep.check("cri.network_ready", bool(confs), conditions.get("NetworkReady", "<absent>"),
              note=f"CNI network configs in {conf_dir}: {', '.join(confs) or 'none'} (a node without kubelet "
                   "has none until a CNI plugin installs one)")
    if lab is None:
        return ready_at
    try:
        config = json.loads(status["info"].get("config", "{}"))
    except ValueError:
        config = {}
    if lab["family"].startswith("1."):
        rep.check("cri.config.sandbox_image", lab["sandbox_image"], config.get("sandboxImage", "<absent>"))
        if lab["config_path"]:
            rep.check("cri.config.registry_config_path", lab["config_path"],
                      (config.get("registry") or {}).get("configPath", "<absent>"))

    def call(method: str, request: dict, timeout: float = 120) -> dict:
        return client.call(method, request, socket_path=sock, timeout=timeout)

    linux: dict = {"security_context": {"namespace_options": {"network": client.NAMESPACE_NODE}}}
    if lab.get("systemd_cgroup"):  # the systemd cgroup driver takes a slice, as kubelet passes one
        linux["cgroup_parent"] = SANDBOX_SLICE
    sandbox = {"metadata": {"name": "imagebuild-verify", "uid": "imagebuild-verify", "namespace": "default"},
               "linux": linux}
    pod = None
    if lab.get("baked"):  # before any registry is reachable: the lab's names are not in /etc/hosts yet
        hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").is_file() else ""
        rep.check("hygiene.build_lab_removed", [], build_lab_left(hosts, lab.get("hosts") or []),
                  note="no /etc/hosts line of a registry lab")
        images_at_boot(rep, lab, call)
        if lab.get("sandbox_baked"):
            sandbox_checks(rep, lab, call)
            pod = run_pod(rep, call, sandbox, "the image's own sandbox image; every registry unreachable")
            if pod and lab.get("sandbox_program"):
                sandbox_process(rep, lab["sandbox_program"], call, pod)
    if lab.get("hosts"):
        with open("/etc/hosts", "a", encoding="utf-8") as etc_hosts:
            etc_hosts.write("".join(f"{line}\n" for line in lab["hosts"]))
    for pull in lab["pulls"]:
        try:
            ref = call("PullImage", {"image": {"image": pull["image"]}}, PULL_TIMEOUT)["image_ref"]
            rep.check(f"cri.pull.{pull['host']}", "pulled", "pulled", note=f"{pull['image']} -> {ref}")
        except client.CRIError as exc:
            rep.check(f"cri.pull.{pull['host']}", "pulled", str(exc)[-300:], False)
    if not lab.get("sandbox_baked"):
        pod = run_pod(rep, call, sandbox, "pulled through the lab")
        if pod:
            sandbox_checks(rep, lab, call)
    if pod is not None:
        container_checks(rep, lab, call, pod, sandbox)
    if lab.get("runtime_pods"):
        runtime_pods(rep, lab, call, sandbox)
    if lab.get("pod_network"):
        pod_network(rep, lab["pod_network"], call, sandbox, conf_dir)
    return ready_at


def runtime_pods(rep, lab: dict, call, sandbox: dict) -> None:
    """A pod under each runtime the spec installs (runtime_pods.py, staged beside this file)."""
    try:
        from imagebuild.guest import runtime_pods as pods  # on the host (tests)
    except ImportError:
        try:
            import runtime_pods as pods  # type: ignore[no-redef]  # in the guest
        except ImportError as exc:
            rep.check("cri.runtime_pods", "runtime_pods.py beside cri_checks.py", f"<{exc}>", False)
            return
    pods.run_all(rep, lab, call, sandbox, _cri_client().CRIError)


def container_checks(rep, lab: dict, call, pod: str, sandbox: dict) -> None:
    """A container runs in the pod *pod* (then the pod is stopped and removed)."""
    client = _cri_client()
    try:
        # A pulled test image runs sleep; with no mirror to pull from, the sandbox image runs its own program.
        run_image = lab["pulls"][0]["image"] if lab["pulls"] else lab["sandbox_image"]
        command = {"command": ["/bin/sleep", "3600"]} if lab["pulls"] else {}
        try:
            container = call("CreateContainer", {"pod_sandbox_id": pod, "sandbox_config": sandbox, "config": {
                "metadata": {"name": "imagebuild-verify"}, "image": {"image": run_image}, **command}})["container_id"]
            call("StartContainer", {"container_id": container})
            state = call("ContainerStatus", {"container_id": container})["status"]["state"]
            rep.check("cri.container", "running", "running" if state == client.CONTAINER_RUNNING else f"state {state}",
                      note=run_image)
        except client.CRIError as exc:
            rep.check("cri.container", "running", str(exc)[-300:], False)
        else:
            try:  # kubelet's default grace period: with 1 s, a slow exit raced SIGKILL on 1.6 ("ttrpc: closed")
                call("StopContainer", {"container_id": container, "timeout": 30})
                call("RemoveContainer", {"container_id": container})
            except client.CRIError as exc:
                rep.check("cri.container_stop", "stopped and removed", str(exc)[-300:], False)
    finally:
        remove_pod(rep, call, pod)


def remove_pod(rep, call, pod: str) -> None:
    client = _cri_client()
    for method in ("StopPodSandbox", "RemovePodSandbox"):
        try:
            call(method, {"pod_sandbox_id": pod})
        except client.CRIError as exc:
            rep.check(f"cri.{method}", "ok", str(exc)[-300:], False)


def pod_network(rep, net: dict, call, sandbox: dict, conf_dir: str) -> None:
    """A pod in a network namespace of its own gets an address from a bridge network whose plugins
    (bridge and host-local; loopback, which CRI adds to every pod) containerd finds in its CNI bin dir:
    what every pod needs once a CNI plugin (Flannel, Calico, Cilium) has written its network config
    and installed its plugins beside the node's. The network config is the verify boot's own (*net*,
    from cri-lab.json: its file name, the config, its subnet), written into *conf_dir* of the boot's
    throwaway overlay and removed afterwards."""
    client = _cri_client()
    conf = Path(conf_dir) / net["file"]
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(json.dumps(net["config"]), encoding="utf-8")
    pod, ip, why = None, "", ""
    try:
        deadline = time.monotonic() + NETWORK_READY_TIMEOUT
        while not client.conditions(call("Status", {})).get("NetworkReady") and time.monotonic() < deadline:
            time.sleep(0.5)
        config = {**sandbox, "metadata": {"name": "imagebuild-verify-net", "uid": "imagebuild-verify-net",
                                          "namespace": "default"},
                  "linux": {**sandbox["linux"],
                            "security_context": {"namespace_options": {"network": client.NAMESPACE_POD}}}}
        try:
            pod = call("RunPodSandbox", {"config": config}, PULL_TIMEOUT)["pod_sandbox_id"]
            status = call("PodSandboxStatus", {"pod_sandbox_id": pod})["status"]
            ip = (status.get("network") or {}).get("ip") or ""
            why = "" if ip else "PodSandboxStatus has no address"
        except client.CRIError as exc:
            why = str(exc)[-300:]
        inside = bool(ip) and ipaddress.ip_address(ip) in ipaddress.ip_network(net["subnet"])
        rep.check("cri.pod_network", f"an address in {net['subnet']}", ip or why, inside,
                  note=f"a pod in its own network namespace, network {net['file']} in {conf_dir}")
    finally:
        if pod:
            remove_pod(rep, call, pod)
        conf.unlink(missing_ok=True)


def run_pod(rep, call, sandbox: dict, how: str) -> str | None:
    """RunPodSandbox (host network: no CNI needed); the pod's id once it is ready, else None."""
    client = _cri_client()
    try:
        pod = call("RunPodSandbox", {"config": sandbox}, PULL_TIMEOUT)["pod_sandbox_id"]
        state = call("PodSandboxStatus", {"pod_sandbox_id": pod})["status"]["state"]
    except client.CRIError as exc:
        rep.check("cri.pod_sandbox", "ready", str(exc)[-300:], False, note=how)
        return None
    rep.check("cri.pod_sandbox", "ready", "ready" if state == client.SANDBOX_READY else f"state {state}", note=how)
    return pod


def sandbox_checks(rep, lab: dict, call) -> None:
    """CRI holds the spec's sandbox image; a baked one is pinned (kubelet's image GC leaves it alone) where
    containerd can pin (1.7+: the label io.cri-containerd.pinned, set when CRI pulls its sandbox image);
    containerd 1.6's CRI has no pinned images, so there it must say not pinned."""
    client = _cri_client()
    name = lab["sandbox_image"]
    try:
        image = call("ImageStatus", {"image": {"image": name}})["image"]
    except client.CRIError as exc:
        image, error = None, str(exc)[-300:]
    else:
        error = f"not among CRI's images ({image and image['repo_tags']})"
    present = bool(image and name in image["repo_tags"])
    rep.check("cri.sandbox_image", name, name if present else error,
              note=f"pinned: {bool(image and image['pinned'])}" + ("; baked in" if lab.get("sandbox_baked") else ""))
    if lab.get("sandbox_baked"):
        can_pin = not lab["family"].startswith("1.6")
        rep.check("cri.sandbox_pinned", can_pin, bool(image and image["pinned"]) if present else "absent",
                  note="baked in by imagebuild bake (image.sandbox)" if can_pin else
                  "containerd 1.6's CRI cannot pin images: kubelet's image GC may remove it (1.7+ pins it)")


def sandbox_process(rep, program: dict, call, pod: str) -> None:
    """The pod sandbox's process runs the baked sandbox image's own program: the executable of the pid
    CRI reports has the sha256 the bake read from the image (*program*: {"path", "sha256"})."""
    client = _cri_client()
    try:
        info = call("PodSandboxStatus", {"pod_sandbox_id": pod, "verbose": True}).get("info", {})
        pid = json.loads(info.get("info", "{}")).get("pid")
        got = hashlib.sha256(_past_runtime_init(pid).read_bytes()).hexdigest() if pid else "no pid in its status"
    except (client.CRIError, OSError, ValueError) as exc:
        got = str(exc)[-300:]
    rep.check("cri.sandbox_process", program["sha256"], got, note=f"{program['path']} of the baked sandbox image")


def _past_runtime_init(pid: int, wait: float = 10) -> Path:
    """/proc/<pid>/exe once the sandbox's process has left its runtime's init: RunPodSandbox returns when
    `runc start` has released `runc init`, which execs the image's program a moment later (measured: under
    load the check read runc's own executable). Waits at most *wait* seconds, then reads what is there."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            comm = Path(f"/proc/{pid}/comm").read_bytes()
        except OSError:
            break
        if not (argv[1:2] == [b"init"] and argv[0].endswith(b"runc")) and not comm.startswith(b"runc:"):
            break
        time.sleep(0.02)
    return Path(f"/proc/{pid}/exe")


def images_at_boot(rep, lab: dict, call) -> None:
    """Before anything is pulled, containerd's CRI holds exactly what the bake put there: the sandbox
    image when image.sandbox baked one, nothing else (no test program under any name); a baked sandbox
    image carries the manifest digest its source gave at bake time (lab["sandbox_digest"], when known)."""
    client = _cri_client()
    want = [lab["sandbox_name"]] if lab.get("sandbox_baked") else []
    try:
        images = call("ListImages", {}).get("images", [])
    except client.CRIError as exc:
        rep.check("cri.images_at_boot", want, str(exc)[-300:], False)
        return
    names = sorted({tag for image in images for tag in image.get("repo_tags", [])})
    untagged = sum(1 for image in images if not image.get("repo_tags"))
    rep.check("cri.images_at_boot", want, names + [f"{untagged} untagged"] * bool(untagged),
              note="the images the bake put into the image, before any pull")
    if lab.get("sandbox_baked") and lab.get("sandbox_digest"):
        name = lab["sandbox_name"]
        want_digest = f"{name.split('@')[0].rsplit(':', 1)[0]}@{lab['sandbox_digest']}"  # repository@digest
        digests = sorted({d for image in images if name in image.get("repo_tags", [])
                          for d in image.get("repo_digests", [])})
        rep.check("cri.sandbox_digest", want_digest, want_digest if want_digest in digests else
                  (", ".join(digests) or "none"), note="the manifest digest the bake's source gave")


def build_lab_left(hosts: str, lab_lines: list[str]) -> list[str]:
    """/etc/hosts lines a registry lab adds (marked by an earlier bake's lab, or this boot's own
    lab lines, *lab_lines*, which it adds only after this check): none belongs in an image."""
    lines = [line.strip() for line in hosts.splitlines()]
    return [line for line in lines if line.endswith(BUILD_LAB_MARK) or line in lab_lines]
