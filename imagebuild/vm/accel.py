"""The accelerator of a boot: KVM only where a probe shows a Linux kernel really boots under it.

On some hosts ``/dev/kvm`` opens and even runs real/long-mode code, yet a Linux guest never gets
past its decompressor. :func:`probe_kvm` therefore boots a real Debian kernel (a base image's from
the cache, see :func:`imagebuild.build.baseimage.kernel_files`, else the host's) and waits for it to
finish its own start-up.
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

from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import step
from imagebuild.run import DEVNULL, spawned
from imagebuild.spec import platforms

QEMU = "qemu-system-x86_64"
_POLL = 0.1

_kvm_answer: bool | None = None
_kvm_lock = threading.Lock()


def probe_kvm(timeout: float = 10.0, *, kernel: str | os.PathLike | None = None) -> bool:
    """True only if a Linux kernel demonstrably boots under ``-accel kvm`` here.

    Boots *kernel* (default: a cached base image's kernel of this architecture, else the host's /boot/vmlinuz*)
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


#: Where a kernel image of each host architecture says what it is (x86 bzImage "HdrS", arm64 Image "ARMd").
_KERNEL_MAGIC = {"x86_64": (0x202, b"HdrS"), "aarch64": (0x38, b"ARM\x64")}


def _runs_here(kernel: Path) -> bool:
    """Whether *kernel* is a kernel image of this host's architecture (KVM runs no other)."""
    offset, magic = _KERNEL_MAGIC.get(os.uname().machine, (0, b"\0"))
    try:
        with open(kernel, "rb") as f:
            f.seek(offset)
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _probe_kernel() -> Path | None:
    """The newest base image kernel in the cache that runs here, else the host's own."""
    try:
        cached = sorted(cache_dir("base").glob("*/*.vmlinuz"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:   # a probe must not fail because of the cache
        cached = []
    hosts = sorted(Path("/boot").glob("vmlinuz-*"), reverse=True)
    return next((k for k in cached + hosts if _runs_here(k)), None)


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
        return ["-accel", "tcg,thread=multi", "-cpu", platforms.tcg_cpu(arch)]
    raise ImagebuildError(f"unknown accelerator {accel!r}: use kvm or tcg")
