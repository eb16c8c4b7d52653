"""One QEMU guest, watched: its serial console and results port read line by line, waits for a
marker with a deadline, timings of what it printed, and QEMU stopped however the boot ends.

Every QEMU runs in its own process group (:func:`imagebuild.run.spawned`) and is killed
group-wide when the boot ends, fails, times out or the caller is interrupted (an exception, or
Ctrl-C/SIGTERM turned into one by the CLI). It also carries a parent-death signal, so even a
SIGKILLed caller leaves no QEMU behind.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

from imagebuild.errors import ImagebuildError
from imagebuild.progress import heartbeat, step
from imagebuild.run import DEVNULL, kill_group, spawn
from imagebuild.spec import platforms
from imagebuild.vm import firmware as fw
from imagebuild.vm.accel import accel_args, accelerator
from imagebuild.vm.channel import (
    DONE_PREFIX,
    RESULT_PREFIX,
    RESULTS_PORT_NAME,
    Line,
    Tail,
    clean,
    parse_marked,
    tail,
)

# Markers every boot records (name -> regex), on top of the caller's.
DEFAULT_MARKERS: dict[str, str] = {
    "kernel": r"Linux version \d",
    "cloud-init local": r"Cloud-init v\. \S+ running 'init-local'",
    "cloud-init final": r"Cloud-init v\. \S+ finished at",
    "login prompt": r"\blogin: ",
}

_POLL = 0.1


def option(value: str | os.PathLike) -> str:
    """A path or string as a QEMU option value (commas are doubled)."""
    return os.fspath(value).replace(",", ",,")


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

    def console_text(self) -> str:
        return "\n".join(line.text for line in self.lines if line.source == "console")

    def results_text(self) -> str:
        return "\n".join(line.text for line in self.lines if line.source == "results")

    @property
    def kernel_at(self) -> float | None:
        return self.kernel_s

    @property
    def done_at(self) -> float | None:
        """Done marker, or QEMU's exit when the boot waited for a power-off."""
        return self.done_s if self.done_s is not None else self.exited_s

    @property
    def results(self) -> list[str]:
        """Payloads of the IMAGEBUILD-RESULT and IMAGEBUILD-DONE lines, in order: from the results
        port if it carries the DONE line, else from the console if that does (QEMU is stopped
        at the first DONE it sees, and the port's copy can still be in flight), else whichever
        source has any."""
        pat = f"(?:{re.escape(RESULT_PREFIX)}|{re.escape(DONE_PREFIX)})"
        port, console = self.results_text(), self.console_text()
        for text in (port, console):
            if parse_marked(text, re.escape(DONE_PREFIX)):
                return parse_marked(text, pat)
        return parse_marked(port, pat) or parse_marked(console, pat)


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
                 netdev_options: str = "", arch: str = "amd64", firmware: str = "bios"):
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
        fw.check(arch, firmware)
        self.arch, self.firmware = arch, firmware
        self._firmware_dir: str | None = None     # a UEFI boot's own variable store lives here
        self.name = name or f"imagebuild-{uuid.uuid4().hex[:12]}"
        self.accel: str | None = None
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.lines: list[Line] = []
        self.exited_s: float | None = None
        self._t0 = 0.0
        self._stopping = False
        self._stderr: IO[bytes] | None = None
        self._readers: dict[str, Tail] = {}

    # command line ------------------------------------------------------------------------
    def command(self, accel: str | None = None) -> list[str]:
        """The QEMU argv (the accelerator is resolved if not given): the architecture's binary and
        machine, the firmware of :mod:`imagebuild.vm.firmware` (a UEFI boot gets its own copy of the
        variable store)."""
        accel = accel or self.accel or self._accelerator()
        cpu = accel_args(accel, self.arch)
        cmd = [platforms.qemu_binary(self.arch), "-name", f"{self.name},process={self.name[:15]}",
               "-machine", platforms.machine(self.arch), *cpu, "-smp", str(self.smp), "-m", self.memory,
               "-nodefaults", "-display", "none", "-vga", "none", "-monitor", "none",
               "-no-user-config"]
        if self.firmware != "bios" and self._firmware_dir is None:
            self._firmware_dir = tempfile.mkdtemp(prefix="imagebuild-uefi-")
        cmd += fw.qemu_args(self.arch, self.firmware, self._firmware_dir or "")
        if self.disk is not None:
            fmt = "qcow2" if self.disk.suffix == ".qcow2" else "raw"
            cmd += ["-drive", f"file={option(self.disk)},if=virtio,format={fmt},discard=unmap"]
        if self.seed_iso is not None:
            cmd += ["-drive", f"file={option(self.seed_iso)},if=virtio,format=raw,readonly=on"]
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
        cmd += ["-chardev", f"file,id=con0,path={option(self.serial_log)}",
                "-serial", "chardev:con0",
                "-device", "virtio-serial-pci,id=vser0",
                "-chardev", f"file,id=res0,path={option(self.results_log)}",
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
        self.accel = self.accel or self._accelerator()
        cmd = self.command(self.accel)
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        self.results_log.parent.mkdir(parents=True, exist_ok=True)
        for log in (self.serial_log, self.results_log):
            log.write_bytes(b"")
        self._readers = {"console": Tail(self.serial_log), "results": Tail(self.results_log)}
        # An anonymous (already unlinked) file: nothing to leave behind, even if we are
        # SIGKILLed.
        self._stderr = tempfile.TemporaryFile(prefix="imagebuild-qemu-stderr-")
        self.started_at = time.time()
        self._t0 = time.monotonic()
        try:
            self.proc = spawn(cmd, stdout=DEVNULL, stderr=self._stderr, die_with_parent=True)
        except ImagebuildError:
            self._cleanup()
            raise

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
        for source, reader in self._readers.items():
            for text in reader.read_lines():
                new.append(Line(round(now, 2), source, text))
        self.lines.extend(new)
        if (self.exited_s is None and not self._stopping and self.proc is not None
                and self.proc.poll() is not None):
            self.exited_s = round(now, 2)
        return new

    def wait_for(self, pattern: str | re.Pattern | None, timeout: float) -> Line | None:
        """Wait until a line (console or results port) matches *pattern* (str: substring,
        re.Pattern: regex) and return it; *pattern* None waits for QEMU to exit.
        Raises ImagebuildError on timeout or if QEMU exits first. A long silent wait logs a
        heartbeat line with the elapsed time."""
        with heartbeat(f"guest {self.name}: waiting for {_describe(pattern)}"):
            return self._wait_for(pattern, timeout)

    def _wait_for(self, pattern: str | re.Pattern | None, timeout: float) -> Line | None:
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
                for source, reader in self._readers.items():   # a last unterminated line
                    rest = reader.flush()
                    if rest:
                        line = Line(round(self.elapsed(), 2), source, rest)
                        self.lines.append(line)
                        if rx is not None and rx.search(rest):
                            return line
                if rx is None:
                    return None
                raise ImagebuildError(
                    f"QEMU guest {self.name} exited (status {self.proc and self.proc.returncode}) after "
                    f"{self.elapsed():.0f} s before printing {_describe(pattern)}; "
                    f"serial log: {self.serial_log}{self._stderr_tail()}\n"
                    f"last lines of the serial console:\n{self.tail(30)}")
            if rx is not None:                 # a prompt ("login: ") ends in no newline: it waits
                for source, reader in self._readers.items():
                    if reader.partial and rx.search(clean(reader.partial)):
                        line = Line(round(self.elapsed(), 2), source, reader.flush())
                        self.lines.append(line)
                        return line
            if time.monotonic() >= deadline:
                what = _describe(pattern)
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
                kill_group(self.proc)
            with contextlib.suppress(Exception):
                self.poll()
            for source, reader in self._readers.items():
                rest = reader.flush()
                if rest:
                    self.lines.append(Line(round(self.elapsed(), 2), source, rest))
        self._cleanup()

    def tail(self, n: int = 30) -> str:
        return tail(self.serial_log, n)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            err = self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError, AttributeError):
            return ""
        return f"\nQEMU said: {err[-2000:]}" if err else ""

    def _accelerator(self) -> str:
        """KVM only for the host's own architecture (and only when the probe says it works)."""
        return accelerator(self.accel_choice, self.arch)

    def _cleanup(self) -> None:
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                self._stderr.close()
        if self._firmware_dir is not None:
            shutil.rmtree(self._firmware_dir, ignore_errors=True)
            self._firmware_dir = None

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def result(self, done: Line | None = None,
               markers: Mapping[str, str | re.Pattern] | None = None) -> BootResult:
        names: dict[str, str | re.Pattern] = {**DEFAULT_MARKERS, **(markers or {})}
        found = {}
        for key, pat in names.items():
            rx = pat if isinstance(pat, re.Pattern) else re.compile(pat)
            found[key] = next((line.elapsed for line in self.lines if rx.search(line.text)), None)
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
    with guest:
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


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def _describe(pattern: str | re.Pattern | None) -> str:
    if pattern is None:
        return "the guest to power off"
    if isinstance(pattern, re.Pattern):
        return f"a line matching /{pattern.pattern}/"
    return f"{pattern!r}"
