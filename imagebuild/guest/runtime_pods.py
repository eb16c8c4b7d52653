#!/usr/bin/env python3
"""The verify boot's pods of the spec's own runtimes: for each runtime the spec installs (config.runtimes.<name>
with `install`), a pod sandbox asked for with that runtime handler must start, as a pod whose RuntimeClass
names it would; where the runtime runs the sandbox in a process of its own binary (gVisor: runsc re-executes
itself as the sandbox), the pod's process must be exactly the binary the spec installed. Python 3.11
standard library only.

Staged by the verify boot beside check.py and cri_checks.py from its seed disk (with the registry lab's
cri-lab.json, whose `runtime_pods` lists the runtimes); not installed on machines.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

#: RunPodSandbox of a sandboxed runtime under TCG: gVisor boots its own kernel for the pod.
POD_TIMEOUT = 300


def run_all(rep, lab: dict, call, sandbox: dict, error: type[Exception]) -> None:
    """One pod per runtime of lab["runtime_pods"] ({"name", "exe_sha256"}): `cri.runtime.<name>` (the pod is
    ready, under that handler) and, with exe_sha256, `cri.runtime.<name>.process`. *call* is cri_checks'
    CRI call, *sandbox* its pod config (host network), *error* cri.CRIError."""
    for runtime in lab.get("runtime_pods") or []:
        name = runtime["name"]
        config = {**sandbox, "metadata": {"name": f"imagebuild-verify-{name}", "uid": f"imagebuild-verify-{name}",
                                          "namespace": "default"}}
        start = time.monotonic()
        try:
            pod = call("RunPodSandbox", {"config": config, "runtime_handler": name}, POD_TIMEOUT)["pod_sandbox_id"]
        except error as exc:
            rep.check(f"cri.runtime.{name}", f"a pod ready under handler {name}", str(exc)[-400:], False)
            continue
        took = round(time.monotonic() - start, 1)
        try:
            answer = call("PodSandboxStatus", {"pod_sandbox_id": pod, "verbose": True})
            status = answer["status"]
            ready = status["state"] == 0 and status.get("runtime_handler") == name   # SANDBOX_READY
            rep.check(f"cri.runtime.{name}", f"a pod ready under handler {name}",
                      f"a pod ready under handler {name}" if ready else
                      f"state {status['state']}, handler {status.get('runtime_handler')!r}", ready,
                      note=f"RunPodSandbox took {took} s")
            if runtime.get("exe_sha256"):
                rep.check(f"cri.runtime.{name}.process", runtime["exe_sha256"], _exe_sha256(answer),
                          note=f"the pod's process is the {name} binary the spec installed")
        except error as exc:
            rep.check(f"cri.runtime.{name}", f"a pod ready under handler {name}", str(exc)[-400:], False)
        finally:
            for method in ("StopPodSandbox", "RemovePodSandbox"):
                try:
                    call(method, {"pod_sandbox_id": pod}, POD_TIMEOUT)
                except error as exc:
                    rep.check(f"cri.runtime.{name}.{method}", "ok", str(exc)[-300:], False)


def _exe_sha256(answer: dict) -> str:
    """The sha256 of the executable of the pid a verbose PodSandboxStatus reports, or why there is none."""
    try:
        pid = json.loads(answer.get("info", {}).get("info", "{}")).get("pid")
        if not pid:
            return "no pid in its status"
        return hashlib.sha256(Path(f"/proc/{pid}/exe").read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        return str(exc)[-300:]
