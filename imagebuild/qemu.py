"""Booting guests in QEMU: accelerator choice, NoCloud seeds, overlays, watched boots.

A boot is watched through its serial console, which QEMU writes to a file (the *serial
log*, for humans and for timing). Results travel on a second, dedicated channel: a
virtio-serial port named ``imagebuild.results`` whose host side is another file. In the
guest it appears as ``/dev/virtio-ports/imagebuild.results`` (udev's default rule; the
``virtio_console`` module loads by itself). Lines written there never interleave with
kernel or systemd messages, as they can on the console. :func:`guest_emit_function` is a
shell function for user-data that writes a whole line to that port (and a copy to the
console); :func:`parse_marked_lines` reads ``PREFIX payload`` lines back from either.

Every QEMU process runs in its own process group and is killed (group-wide) when the boot
ends, fails, times out, or the caller is interrupted (exception, KeyboardInterrupt, SIGTERM
while :func:`boot` runs in the main thread). As a last resort it also carries a
parent-death signal, so even a SIGKILLed caller leaves no QEMU behind.

KVM is used only when :func:`probe_kvm` proves it works: on some hosts ``/dev/kvm`` opens
and even runs real/long-mode code, yet a Linux guest never gets past its decompressor.
The probe therefore boots a real Debian kernel (the base image's, see
:func:`imagebuild.baseimage.kernel_files`) and waits for it to finish its own start-up.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from imagebuild.errors import ImagebuildError
from imagebuild.progress import step

QEMU = "qemu-system-x86_64"
RESULT_PREFIX = "IMAGEBUILD-RESULT"
DONE_PREFIX = "IMAGEBUILD-DONE"
RESULTS_PORT_NAME = "imagebuild.results"
RESULTS_PORT = RESULTS_PORT_NAME
RESULTS_DEVICE = f"/dev/virtio-ports/{RESULTS_PORT_NAME}"
SERIAL_DEVICE = "/dev/ttyS0"

# Markers every boot records (name -> regex), on top of the caller's.
DEFAULT_MARKERS: dict[str, str] = {
    "kernel": r"Linux version \d",
    "cloud-init local": r"Cloud-init v\. \S+ running 'init-local'",
    "cloud-init final": r"Cloud-init v\. \S+ finished at",
    "login prompt": r"\blogin: ",
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>c]")
_POLL = 0.1


# --- accelerator -------------------------------------------------------------------------

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
        from imagebuild import baseimage
        files = baseimage.kernel_files()
        if files:
            return files[0]
    except Exception:  # noqa: BLE001 - a probe must not fail because of the cache
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
    proc = None
    try:
        proc = _spawn(cmd, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Linux version" in text and _PROBE_DONE.search(text):
                return True
            if proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                return "Linux version" in text and bool(_PROBE_DONE.search(text))
            time.sleep(_POLL)
        return False
    except OSError:
        return False
    finally:
        if proc is not None:
            _kill_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def accelerator(choice: str = "auto") -> str:
    """"kvm" or "tcg". "auto" (or ``$IMAGEBUILD_ACCEL=auto``) is "kvm" only when
    :func:`probe_kvm` passes; ``$IMAGEBUILD_ACCEL`` (kvm|tcg) overrides "auto"."""
    if choice == "auto":
        choice = os.environ.get("IMAGEBUILD_ACCEL", "auto") or "auto"
    if choice not in ("auto", "kvm", "tcg"):
        raise ImagebuildError(f"unknown accelerator {choice!r}: use auto, kvm or tcg")
    if choice == "auto":
        return "kvm" if probe_kvm() else "tcg"
    return choice


def accel_args(accel: str) -> list[str]:
    """QEMU arguments for a resolved accelerator (CPU model included)."""
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    if accel == "tcg":
        # -cpu max is ~30% faster than the default qemu64 model under TCG
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]
    raise ImagebuildError(f"unknown accelerator {accel!r}: use kvm or tcg")


# --- disks ---------------------------------------------------------------------------------

def seed_iso(out: str | os.PathLike, user_data: bytes, meta_data: bytes,
             extra_files: Mapping[str, bytes] | None = None, *,
             network_config: bytes | None = None) -> Path:
    """Write a NoCloud seed ISO (volume label ``cidata``) to *out* and return its path.

    *extra_files* maps relative paths (``"files/containerd.tar.gz"``) to contents; they
    land on the ISO beside ``user-data`` and ``meta-data`` (the guest finds the ISO as the
    block device labelled ``cidata``, e.g. ``mount -r LABEL=cidata /mnt``).
    """
    files: dict[str, bytes] = {"user-data": user_data, "meta-data": meta_data}
    if network_config is not None:
        files["network-config"] = network_config
    for name, data in (extra_files or {}).items():
        if name in files:
            raise ImagebuildError(f"seed ISO file {name!r} is given twice")
        files[name] = data
    return data_iso(out, files, label="cidata")


def data_iso(out: str | os.PathLike, files: Mapping[str, bytes], *, label: str) -> Path:
    """Write an ISO 9660 image (Joliet, Rock Ridge) labelled *label* holding *files*
    (relative path -> contents) to *out*, atomically, and return its path."""
    out = Path(out)
    for name in files:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ImagebuildError(f"seed ISO file name must be a relative path: {name!r}")
    tool = shutil.which("xorriso") or shutil.which("genisoimage")
    if tool is None:
        raise ImagebuildError("writing a NoCloud seed ISO needs xorriso (or genisoimage)")
    scratch = Path(tempfile.mkdtemp(prefix="imagebuild-seed-"))
    try:
        root = scratch / "root"
        root.mkdir()
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
        cmd = ([tool, "-as", "mkisofs"] if tool.endswith("xorriso") else [tool])
        cmd += ["-quiet", "-output", str(tmp_out), "-volid", label, "-joliet", "-rock",
                str(root)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp_out.unlink(missing_ok=True)
            raise ImagebuildError(f"writing the seed ISO failed: {proc.stderr.strip()}")
        os.replace(tmp_out, out)
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def virtual_size(image: str | os.PathLike) -> int:
    """The virtual disk size of *image* in bytes (``qemu-img info``)."""
    return int(_qemu_img_info(Path(image))["virtual-size"])


def random_mac() -> str:
    """A fresh unicast, locally administered MAC (``0a:...`` as on EC2 Nitro), never QEMU's
    default ``52:54:00:12:34:56`` that every build VM gets."""
    return "0a:" + ":".join(f"{b:02x}" for b in os.urandom(5))


#: EC2 as a guest sees it (QEMU options): the SMBIOS identity ds-identify reads (product UUID
#: and serial starting with "ec2", Amazon EC2 as vendor and product, the instance id as the
#: chassis asset tag, as on Nitro) and a link-local user network whose 169.254.169.254:80 is
#: forwarded to an IMDS on the host (:mod:`imagebuild.imds`).
EC2_NET = "169.254.0.0/16"
EC2_HOST = "169.254.0.1"          # the host's loopback as the guest sees it on that network
EC2_GUEST_IP = "169.254.10.15"    # the first (only) DHCP lease
EC2_NIC_SLOT = 5                  # PCI slot of the NIC: ens5, as on Nitro instances


def ec2_smbios(instance_id: str) -> list[str]:
    """``-smbios`` options of an EC2 (Nitro) instance whose id is *instance_id*."""
    ident = "ec2" + uuid.uuid4().hex[3:]
    vm_uuid = str(uuid.UUID(ident))
    return ["-smbios", f"type=1,manufacturer=Amazon EC2,product=m6i.large,serial={vm_uuid},uuid={vm_uuid}",
            "-smbios", f"type=3,manufacturer=Amazon EC2,asset={_opt(instance_id)}"]


def ec2_netdev(relay_cmd: str) -> str:
    """``-netdev user`` options (after ``user,id=net0``) of the EC2 network, with the
    guest's 169.254.169.254:80 forwarded to *relay_cmd* (run per connection)."""
    return (f"net={EC2_NET},host={EC2_HOST},dhcpstart={EC2_GUEST_IP},"
            f"guestfwd=tcp:169.254.169.254:80-cmd:{_opt(relay_cmd)}")


def overlay(image: str | os.PathLike, dir: str | os.PathLike, *,
            size: str | int | None = None) -> Path:
    """A throwaway copy-on-write qcow2 in *dir* on top of *image* (never modified).

    *size* (bytes, or qemu-img syntax like ``"8G"``) makes the overlay's virtual disk
    larger than the image's, for cloud-init's growpart to use.
    """
    image = Path(image).resolve()
    if not image.is_file():
        raise ImagebuildError(f"disk image not found: {image}")
    info = _qemu_img_info(image)
    dest = Path(dir) / f"{image.stem}-overlay-{uuid.uuid4().hex[:8]}.qcow2"
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", info["format"], "-b", str(image),
           str(dest)]
    if size is not None:
        cmd.append(str(size))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImagebuildError(f"qemu-img create (overlay of {image}) failed: "
                              f"{proc.stderr.strip()}")
    return dest


def _qemu_img_info(image: Path) -> dict:
    proc = subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImagebuildError(f"qemu-img info {image} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


# --- results channel ---------------------------------------------------------------------

def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_marked_lines(text: str, prefix: str = RESULT_PREFIX) -> list[str]:
    """Payloads of the lines in *text* that carry *prefix*, in order.

    A line counts if *prefix* appears in it followed by whitespace or the end of the line;
    anything before the prefix (a console timestamp, "cloud-init[123]: ", colour codes)
    is ignored, and the payload is the stripped rest of the line. CR/LF line ends, ANSI
    escapes and undecodable bytes are tolerated. A line that the kernel broke in two by
    printing in the middle of it cannot be repaired: use the results port for results.
    """
    return _parse_marked(text, re.escape(prefix))


def _parse_marked(text: str, prefix_regex: str) -> list[str]:
    out = []
    pat = re.compile(prefix_regex + r"(?=\s|$)")
    for raw in text.splitlines():
        line = strip_ansi(raw).replace("\x00", "")
        m = None
        for m in pat.finditer(line):
            pass                       # the last occurrence wins
        if m is not None:
            out.append(line[m.end():].strip())
    return out


def parse_marked_json(text: str, prefix: str = RESULT_PREFIX) -> list:
    """Like :func:`parse_marked_lines`, each payload parsed as JSON; unparsable ones
    (e.g. broken by interleaved console output) are skipped."""
    out = []
    for payload in parse_marked_lines(text, prefix):
        try:
            out.append(json.loads(payload))
        except ValueError:
            continue
    return out


def guest_emit_function(prefix: str = RESULT_PREFIX, name: str = "imagebuild_emit") -> str:
    """A POSIX shell function for guest scripts: ``imagebuild_emit '{"k": 1}'`` writes the
    line ``PREFIX {"k": 1}`` in one write to the results port (when present) and to the
    serial console (for humans; the host prefers the port's copy)."""
    return (
        f"{name}() {{\n"
        f"  _ib_line=\"{prefix} $*\"\n"
        f"  if [ -w {RESULTS_DEVICE} ]; then printf '%s\\n' \"$_ib_line\" >> {RESULTS_DEVICE}; fi\n"
        f"  printf '%s\\n' \"$_ib_line\" >> {SERIAL_DEVICE} 2>/dev/null || true\n"
        f"}}\n"
    )


# --- guests ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Line:
    elapsed: float   # seconds since QEMU started, when the host saw the line
    source: str      # "console" or "results"
    text: str        # without line end and ANSI escapes


@dataclasses.dataclass
class BootResult:
    name: str
    command: list[str]
    accel: str
    serial_log: Path
    results_log: Path
    started_at: float                      # epoch seconds when QEMU was started
    kernel_s: float | None                 # QEMU start -> "Linux version"
    cloud_init_final_s: float | None       # QEMU start -> "Cloud-init v. ... finished"
    done_s: float | None                   # QEMU start -> done marker
    done_line: str | None
    markers: dict[str, float | None]       # name -> seconds since QEMU start (None: not seen)
    exited_s: float | None                 # QEMU exited by itself; None if we stopped it
    returncode: int | None
    powered_off: bool                      # the guest shut QEMU down by itself
    lines: list[Line]

    def time_of(self, pattern: str | re.Pattern, source: str | None = None) -> float | None:
        """Seconds from QEMU start to the first line matching *pattern* (regex)."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in self.lines:
            if (source is None or line.source == source) and rx.search(line.text):
                return line.elapsed
        return None

    def console_text(self) -> str:
        return "\n".join(l.text for l in self.lines if l.source == "console")

    def results_text(self) -> str:
        return "\n".join(l.text for l in self.lines if l.source == "results")

    @property
    def kernel_at(self) -> float | None:
        return self.kernel_s

    @property
    def done_at(self) -> float | None:
        """Done marker, or QEMU's exit when the boot waited for a power-off."""
        return self.done_s if self.done_s is not None else self.exited_s

    def marked(self, prefix: str = RESULT_PREFIX) -> list[str]:
        """Marked payloads from the results port, or from the console if the port has
        none (a guest without virtio_console, or a script that wrote only to ttyS0)."""
        from_port = parse_marked_lines(self.results_text(), prefix)
        return from_port if from_port else parse_marked_lines(self.console_text(), prefix)

    @property
    def results(self) -> list[str]:
        """Payloads of the IMAGEBUILD-RESULT and IMAGEBUILD-DONE lines, in order: from the results
        port if it carries the DONE line, else from the console if that does (QEMU is stopped
        at the first DONE it sees, and the port's copy can still be in flight), else whichever
        source has any."""
        pat = f"(?:{re.escape(RESULT_PREFIX)}|{re.escape(DONE_PREFIX)})"
        port, console = self.results_text(), self.console_text()
        for text in (port, console):
            if _parse_marked(text, re.escape(DONE_PREFIX)):
                return _parse_marked(text, pat)
        return _parse_marked(port, pat) or _parse_marked(console, pat)

    def records(self, prefix: str = RESULT_PREFIX) -> list:
        """:meth:`marked` payloads parsed as JSON (unparsable ones skipped)."""
        out = []
        for payload in self.marked(prefix):
            try:
                out.append(json.loads(payload))
            except ValueError:
                continue
        return out


def _compile(pattern: str | re.Pattern) -> re.Pattern:
    """A str is a literal substring; pass re.compile(...) for a regex."""
    return pattern if isinstance(pattern, re.Pattern) else re.compile(re.escape(pattern))


class Guest:
    """One QEMU process with a watched serial console and a results port.

    Use as a context manager (or call :meth:`stop`): QEMU is always killed on the way out.
    Start and stop a guest from the same thread (the parent-death signal is per thread).
    """

    def __init__(self, disk: str | os.PathLike | None, seed_iso: str | os.PathLike | None = None,
                 *, serial_log: str | os.PathLike, results_log: str | os.PathLike | None = None,
                 memory: str | int = "2048", smp: int = 2, accel: str = "auto",
                 hostfwd: Iterable[tuple[int, int]] = (), network: bool = True,
                 kernel: str | os.PathLike | None = None, initrd: str | os.PathLike | None = None,
                 append: str | None = None, extra_args: Sequence[str] = (),
                 name: str | None = None, mac: str | None = None, nic_slot: int | None = None,
                 netdev_options: str = ""):
        self.disk = Path(disk) if disk else None
        self.seed_iso = Path(seed_iso) if seed_iso else None
        self.serial_log = Path(serial_log)
        self.results_log = (Path(results_log) if results_log
                            else self.serial_log.with_name(self.serial_log.name + ".results"))
        self.memory = str(memory)
        self.smp = int(smp)
        self.accel_choice = accel
        self.hostfwd = list(hostfwd)
        self.network = network
        self.mac, self.nic_slot, self.netdev_options = mac, nic_slot, netdev_options
        self.kernel, self.initrd, self.append = kernel, initrd, append
        self.extra_args = list(extra_args)
        self.name = name or f"imagebuild-{uuid.uuid4().hex[:12]}"
        self.accel: str | None = None
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.lines: list[Line] = []
        self.exited_s: float | None = None
        self._t0 = 0.0
        self._stopping = False
        self._stderr = None
        self._readers: dict[str, _Tail] = {}

    # command line ------------------------------------------------------------------------
    def command(self, accel: str | None = None) -> list[str]:
        """The qemu-system-x86_64 argv (the accelerator is resolved if not given)."""
        accel = accel or self.accel or accelerator(self.accel_choice)
        cmd = [QEMU, "-name", f"{self.name},process={self.name[:15]}",
               "-machine", "pc", *accel_args(accel), "-smp", str(self.smp), "-m", self.memory,
               "-nodefaults", "-display", "none", "-vga", "none", "-monitor", "none",
               "-no-user-config"]
        if self.disk is not None:
            fmt = "qcow2" if self.disk.suffix == ".qcow2" else "raw"
            cmd += ["-drive", f"file={_opt(self.disk)},if=virtio,format={fmt},discard=unmap"]
        if self.seed_iso is not None:
            cmd += ["-drive", f"file={_opt(self.seed_iso)},if=virtio,format=raw,readonly=on"]
        if self.network:
            netdev = "user,id=net0"
            if self.netdev_options:
                netdev += "," + self.netdev_options
            for host_port, guest_port in self.hostfwd:
                netdev += f",hostfwd=tcp:127.0.0.1:{int(host_port)}-:{int(guest_port)}"
            nic = "virtio-net-pci,netdev=net0"
            if self.mac:
                nic += f",mac={self.mac}"
            if self.nic_slot is not None:
                nic += f",addr={int(self.nic_slot):#x}"
            cmd += ["-netdev", netdev, "-device", nic]
        cmd += ["-chardev", f"file,id=con0,path={_opt(self.serial_log)}",
                "-serial", "chardev:con0",
                "-device", "virtio-serial-pci,id=vser0",
                "-chardev", f"file,id=res0,path={_opt(self.results_log)}",
                "-device", f"virtserialport,bus=vser0.0,chardev=res0,name={RESULTS_PORT_NAME}"]
        if self.kernel:
            cmd += ["-kernel", str(self.kernel)]
            if self.initrd:
                cmd += ["-initrd", str(self.initrd)]
            if self.append:
                cmd += ["-append", self.append]
        cmd += ["-device", "virtio-rng-pci"]    # entropy for early-boot sshd / Python
        cmd += self.extra_args
        return cmd

    # life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.proc is not None:
            raise ImagebuildError(f"guest {self.name} already started")
        self.accel = self.accel or accelerator(self.accel_choice)
        cmd = self.command(self.accel)
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self.results_log.parent.mkdir(parents=True, exist_ok=True)
        for log in (self.serial_log, self.results_log):
            log.write_bytes(b"")
        self._readers = {"console": _Tail(self.serial_log), "results": _Tail(self.results_log)}
        # An anonymous (already unlinked) file: nothing to leave behind, even if we are
        # SIGKILLed.
        self._stderr = tempfile.TemporaryFile(prefix="imagebuild-qemu-stderr-")
        self.started_at = time.time()
        self._t0 = time.monotonic()
        try:
            self.proc = _spawn(cmd, stderr=self._stderr)
        except OSError as exc:
            self._cleanup()
            raise ImagebuildError(f"cannot start {QEMU}: {exc}") from None

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> list[Line]:
        """Read what the guest wrote since the last call; return the new complete lines."""
        new: list[Line] = []
        now = self.elapsed()
        for source, tail in self._readers.items():
            for text in tail.read_lines():
                new.append(Line(round(now, 2), source, text))
        self.lines.extend(new)
        if (self.exited_s is None and not self._stopping and self.proc is not None
                and self.proc.poll() is not None):
            self.exited_s = round(now, 2)
        return new

    def wait_for(self, pattern: str | re.Pattern | None, timeout: float) -> Line | None:
        """Wait until a line (console or results port) matches *pattern* (str: substring,
        re.Pattern: regex) and return it; *pattern* None waits for QEMU to exit.
        Raises ImagebuildError on timeout or if QEMU exits first."""
        rx = _compile(pattern) if pattern is not None else None
        deadline = time.monotonic() + timeout
        for line in self.lines:            # already seen?
            if rx is not None and rx.search(line.text):
                return line
        while True:
            exited = self.proc is not None and self.proc.poll() is not None
            for line in self.poll():
                if rx is not None and rx.search(line.text):
                    return line
            if exited:
                for source, tail in self._readers.items():   # a last unterminated line
                    rest = tail.flush()
                    if rest:
                        line = Line(round(self.elapsed(), 2), source, rest)
                        self.lines.append(line)
                        if rx is not None and rx.search(rest):
                            return line
                if rx is None:
                    return None
                raise ImagebuildError(
                    f"QEMU guest {self.name} exited (status {self.proc.returncode}) after "
                    f"{self.elapsed():.0f} s before printing {_describe(pattern)}; "
                    f"serial log: {self.serial_log}{self._stderr_tail()}\n"
                    f"last lines of the serial console:\n{self.tail(30)}")
            if rx is not None:                 # a prompt ("login: ") ends in no newline: it waits
                for source, tail in self._readers.items():
                    if tail.partial and rx.search(_clean(tail.partial)):
                        line = Line(round(self.elapsed(), 2), source, tail.flush())
                        self.lines.append(line)
                        return line
            if time.monotonic() >= deadline:
                what = _describe(pattern) if pattern is not None else "the guest to power off"
                raise ImagebuildError(
                    f"timed out after {timeout:.0f} s waiting for {what} from QEMU guest "
                    f"{self.name}; serial log: {self.serial_log}\n"
                    f"last lines of the serial console:\n{self.tail(30)}")
            time.sleep(_POLL)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to *timeout* s for QEMU to exit by itself (guest power-off)."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            self.poll()
            time.sleep(_POLL)
        self.poll()
        return not self.running()

    def stop(self) -> None:
        """Kill QEMU (whole process group) if it still runs; idempotent."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.poll()               # what it wrote before we stop it
                self._stopping = True
                _kill_group(self.proc)
            with contextlib.suppress(Exception):
                self.poll()
            for source, tail in self._readers.items():
                rest = tail.flush()
                if rest:
                    self.lines.append(Line(round(self.elapsed(), 2), source, rest))
        self._cleanup()

    def tail(self, n: int = 30) -> str:
        return tail(self.serial_log, n)

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError, AttributeError):
            return ""
        return f"\nQEMU said: {err[-2000:]}" if err else ""

    def _cleanup(self) -> None:
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                self._stderr.close()

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def result(self, done: Line | None = None,
               markers: Mapping[str, str | re.Pattern] | None = None) -> BootResult:
        names = dict(DEFAULT_MARKERS)
        names.update(markers or {})
        found = {}
        for key, pat in names.items():
            rx = pat if isinstance(pat, re.Pattern) else re.compile(pat)
            found[key] = next((l.elapsed for l in self.lines if rx.search(l.text)), None)
        rc = self.proc.returncode if self.proc else None
        return BootResult(
            name=self.name, command=self.command(self.accel), accel=self.accel or "",
            serial_log=self.serial_log, results_log=self.results_log,
            started_at=self.started_at or 0.0, kernel_s=found.get("kernel"),
            cloud_init_final_s=found.get("cloud-init final"),
            done_s=done.elapsed if done else None, done_line=done.text if done else None,
            markers=found, exited_s=self.exited_s, returncode=rc,
            powered_off=self.exited_s is not None and rc == 0, lines=list(self.lines))


def boot(disk: str | os.PathLike | None, seed_iso: str | os.PathLike | None = None, *,
         serial_log: str | os.PathLike, timeout: float,
         done_marker: str | re.Pattern | None = None,
         markers: Mapping[str, str | re.Pattern] | None = None,
         memory: str | int = "2048", smp: int = 2, accel: str = "auto",
         hostfwd: Iterable[tuple[int, int]] = (), exit_grace: float = 0.0,
         **guest_options) -> BootResult:
    """Boot *disk* (use an :func:`overlay`), wait for *done_marker*, stop QEMU.

    *done_marker*: a str (substring) or compiled regex matched against each line of the
    serial console and the results port; None waits for the guest to power off.
    *markers*: extra name -> regex whose first-seen times land in ``result.markers``
    (beside ``kernel``, ``cloud-init final`` ...). After the marker, QEMU gets
    *exit_grace* seconds to exit by itself (a guest that powers off), then is killed.
    Raises ImagebuildError (with the serial log's path and tail) on timeout or if QEMU
    exits before the marker. QEMU never outlives this call.
    """
    guest = Guest(disk, seed_iso, serial_log=serial_log, memory=memory, smp=smp,
                  accel=accel, hostfwd=hostfwd, **guest_options)
    with sigterm_as_exit(), guest:
        guest.start()
        step(f"guest {guest.name}: booting under {guest.accel} "
             f"(serial log {guest.serial_log})")
        done = guest.wait_for(done_marker, timeout)
        if exit_grace > 0 and done_marker is not None:
            guest.wait_exit(exit_grace)
        guest.stop()
        result = guest.result(done, markers)
    step(f"guest {guest.name}: done after {result.done_s or result.exited_s or 0:.1f} s "
         f"(kernel {_fmt(result.kernel_s)}, cloud-init final {_fmt(result.cloud_init_final_s)})")
    return result


def tail(path: str | os.PathLike, n: int = 30) -> str:
    """The last *n* lines of a serial log, ANSI escapes removed (for error messages)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "replace")
    except OSError:
        return "(no serial log)"
    lines = [strip_ansi(l).rstrip("\r") for l in text.splitlines()]
    return "\n".join(lines[-n:]) if lines else "(the guest printed nothing)"


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that is free right now (for hostfwd)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- helpers ----------------------------------------------------------------------------------

def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def _describe(pattern) -> str:
    if isinstance(pattern, re.Pattern):
        return f"a line matching /{pattern.pattern}/"
    return f"{pattern!r}"


def _opt(value: str | Path) -> str:
    """A path or string as a QEMU option value (commas are doubled)."""
    return str(value).replace(",", ",,")


class _Tail:
    """Incremental reader of a growing file, yielding complete decoded lines."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [_clean(c) for c in complete]

    def flush(self) -> str:
        self.read_lines()
        rest, self.partial = self.partial, b""
        return _clean(rest) if rest.strip() else ""


def _clean(raw: bytes) -> str:
    return strip_ansi(raw.decode("utf-8", "replace")).rstrip("\r").replace("\x00", "")


_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except (OSError, AttributeError):   # pragma: no cover - not Linux
    _prctl = None


def _child_setup() -> None:   # runs in the child between fork and exec
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn(cmd: list[str], stderr) -> subprocess.Popen:
    """Start *cmd* in a new session (its own process group), with SIGKILL as its
    parent-death signal, stdin from /dev/null."""
    setpriv = shutil.which("setpriv")
    if setpriv:   # no Python code between fork and exec
        return subprocess.Popen([setpriv, "--pdeathsig", "KILL", "--", *cmd],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, start_new_session=True)
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=stderr, start_new_session=True, preexec_fn=_child_setup)


def _kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group, SIGKILL it after *grace* s, reap. Never blocks long."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def sigterm_as_exit():
    """While a boot runs in the main thread, turn SIGTERM into SystemExit(143) so the
    cleanup code runs (only if nobody else installed a SIGTERM handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):  # pragma: no cover
        yield
        return
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
