"""The accelerator of a boot: KVM only where a probe shows a Linux kernel really boots under it.

On some hosts ``/dev/kvm`` opens and even runs real/long-mode code, yet a Linux guest never gets
past its decompressor. :func:`probe_kvm` therefore boots a real Debian kernel (the base image's,
see :func:`imagebuild.baseimage.kernel_files`) and waits for it to finish its own start-up.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from imagebuild import baseimage
from imagebuild.errors import ImagebuildError
from imagebuild.progress import step
from imagebuild.run import DEVNULL, spawned
from imagebuild.vm import firmware

QEMU = "qemu-system-x86_64"
_POLL = 0.1

_kvm_answer: bool | None = None
_kvm_lock = threading.Lock()


def probe_kvm(timeout: float = 10.0, *, kernel: str | os.PathLike | None = None) -> bool:
    """True only if a Linux kernel demonstrably boots under ``-accel kvm`` here.

    Boots *kernel* (default: the base image's kernel, else the host's /boot/vmlinuz*)
    with no disk under KVM and waits up to *timeout* seconds for it to finish its own
    start-up on the serial console (it then panics for lack of a root filesystem, which
    is the point). No /dev/kvm, no permission, no kernel to probe with, no output in
    time: False. The answer is cached for the process (except "no kernel found", which
    is retried once a kernel exists). Never hangs: QEMU is killed at the deadline.
    """
    global _kvm_answer
    with _kvm_lock:
        if _kvm_answer is not None:
            return _kvm_answer
        if not _kvm_device_usable():
            _kvm_answer = False
            return False
        kernel_path = Path(kernel) if kernel else _probe_kernel()
        if kernel_path is None:
            step("KVM probe: no kernel to probe with yet; using TCG for now")
            return False
        t0 = time.monotonic()
        ok = probe_boot("kvm", kernel_path, timeout)
        step(f"KVM probe: {'works' if ok else 'does not work'} "
             f"({time.monotonic() - t0:.1f} s); using {'kvm' if ok else 'tcg'}")
        _kvm_answer = ok
        return ok


def _kvm_device_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _probe_kernel() -> Path | None:
    try:
        files = baseimage.kernel_files()
        if files:
            return files[0]
    except (OSError, ImagebuildError):   # a probe must not fail because of the cache
        pass
    hosts = sorted(Path("/boot").glob("vmlinuz-*"))
    return hosts[-1] if hosts else None


# A kernel that finished start-up: it tried to mount root (and panicked: no disk) or
# freed its init memory on the way to running init.
_PROBE_DONE = re.compile(r"Kernel panic|VFS: Unable to mount root|Freeing unused kernel|Run /init")


def probe_boot(accel: str, kernel: str | os.PathLike, timeout: float = 10.0) -> bool:
    """Boot *kernel* alone under *accel*; True if it prints its banner and reaches the
    end of kernel start-up within *timeout* seconds. QEMU is always killed."""
    scratch = Path(tempfile.mkdtemp(prefix="imagebuild-kvmprobe-"))
    log = scratch / "serial.log"
    cmd = [QEMU, "-name", f"imagebuild-probe-{uuid.uuid4().hex[:8]}", "-nodefaults",
           "-display", "none", "-no-reboot", *accel_args(accel), "-smp", "1", "-m", "256",
           "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
           "-chardev", f"file,id=con0,path={log}", "-serial", "chardev:con0"]

    def booted() -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        return "Linux version" in text and bool(_PROBE_DONE.search(text))

    try:
        with spawned(cmd, stdout=DEVNULL, stderr=DEVNULL, die_with_parent=True) as proc:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if booted():
                    return True
                if proc.poll() is not None:
                    return booted()
                time.sleep(_POLL)
            return False
    except ImagebuildError:   # QEMU cannot start: no KVM either
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def host_arch() -> str:
    """This machine's architecture, by its Debian name (amd64, arm64)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def accelerator(choice: str = "auto", arch: str | None = None) -> str:
    """"kvm" or "tcg". "auto" (or ``$IMAGEBUILD_ACCEL=auto``) is "kvm" only when
    :func:`probe_kvm` passes; ``$IMAGEBUILD_ACCEL`` (kvm|tcg) overrides "auto". A guest of another
    *arch* than the host's always runs under TCG (KVM runs only the host's own)."""
    if arch is not None and arch != host_arch():
        return "tcg"
    if choice == "auto":
        choice = os.environ.get("IMAGEBUILD_ACCEL", "auto") or "auto"
    if choice not in ("auto", "kvm", "tcg"):
        raise ImagebuildError(f"unknown accelerator {choice!r}: use auto, kvm or tcg")
    if choice == "auto":
        return "kvm" if probe_kvm() else "tcg"
    return choice


def accel_args(accel: str, arch: str = "amd64") -> list[str]:
    """QEMU arguments for a resolved accelerator (CPU model included) and a guest of *arch*."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        # amd64: -cpu max is ~30% faster than the default qemu64 model under TCG (arm64: vm.firmware)
        return ["-accel", "tcg,thread=multi", "-cpu", firmware.tcg_cpu(arch)]
    raise ImagebuildError(f"unknown accelerator {accel!r}: use kvm or tcg")
