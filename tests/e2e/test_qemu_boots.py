"""QEMU guests booted for real (imagebuild.vm): results and timings, a guest that never prints its
marker, QEMU failing at once, and a caller killed mid-boot; on the locally built base image.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from imagebuild import vm
from imagebuild.errors import ImagebuildError
from imagebuild.vm import accel, disks
from tests.support import as_from_a_terminal, guest_emit_function, parse_marked_json, records

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _qemu_pids(name: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system-x86_64 -name {name}"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _wait_gone(name: str, seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while (pids := _qemu_pids(name)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def test_kvm_probe_answers_quickly_and_the_probe_sees_tcg(base_image, monkeypatch):
    from imagebuild.build import baseimage
    monkeypatch.setattr(accel, "_kvm_answer", None)
    t0 = time.monotonic()
    answer = vm.probe_kvm(timeout=10)
    took = time.monotonic() - t0
    assert isinstance(answer, bool) and took < 20
    print(f"probe_kvm() = {answer} in {took:.1f} s")
    # The probe itself is sound: the same kernel under TCG passes it.
    kernel, _ = baseimage.kernel_files()
    t0 = time.monotonic()
    assert vm.probe_boot("tcg", kernel, timeout=30)
    print(f"probe_boot('tcg') in {time.monotonic() - t0:.1f} s")
    assert not _qemu_pids("imagebuild-probe-")


# make test-extra (~45 s): make test's budget. Every verify boot in make test reports through the same
# vm.boot: results on the results port, kernel/cloud-init/done timings, the image unchanged.
@pytest.mark.extra
def test_boot_reports_results_and_timings(base_image, tmp_path):
    script = guest_emit_function() + """imagebuild_emit '{"hello": 1}'"""
    user_data = "#cloud-config\n" + yaml.safe_dump({
        "runcmd": [["sh", "-c", script]],
        "power_state": {"mode": "poweroff", "delay": "now"},   # after cloud-init final
    })
    seed = vm.seed_iso(tmp_path / "seed.iso", user_data.encode(),
                         b"instance-id: hello-1\nlocal-hostname: hello\n")
    disk = vm.overlay(base_image, tmp_path)
    before = disks.image_info(base_image)
    name = f"imagebuild-hello-{os.getpid()}"
    result = vm.boot(disk, seed, serial_log=tmp_path / "serial.log", timeout=420,
                       done_marker="IMAGEBUILD-RESULT", accel="auto", exit_grace=90, name=name,
                       markers={"network up": r"Reached target .*[Nn]etwork is Online"})
    print(json.dumps({k: v for k, v in result.markers.items()}, indent=1))
    print(f"done {result.done_s} s, QEMU exited {result.exited_s} s, accel {result.accel}")
    assert records(result) == [{"hello": 1}]
    assert parse_marked_json(result.results_text()) == [{"hello": 1}], \
        "the marker must arrive on the results port"
    assert result.done_line.endswith('IMAGEBUILD-RESULT {"hello": 1}')
    assert 0 < result.kernel_s < result.done_s
    assert result.markers["cloud-init local"] is not None
    assert result.cloud_init_final_s is not None and result.cloud_init_final_s >= result.done_s
    assert result.powered_off and result.exited_s >= result.cloud_init_final_s
    assert result.started_at > 0 and result.accel in ("kvm", "tcg")
    assert (tmp_path / "serial.log").read_text(errors="replace").count("Linux version") == 1
    assert disks.image_info(base_image) == before
    assert not _qemu_pids(name)


def test_boot_without_marker_waits_for_the_guest_to_stop(base_image, tmp_path):
    """done_marker=None: the boot ends when the guest shuts QEMU down (here: a kernel with no
    root filesystem panics, and -no-reboot turns the reboot into an exit)."""
    from imagebuild.build import baseimage
    kernel, _ = baseimage.kernel_files()
    result = vm.boot(None, None, serial_log=tmp_path / "s.log", timeout=120, accel="tcg",
                       network=False, kernel=kernel, append="console=ttyS0 panic=-1",
                       extra_args=["-no-reboot"], markers={"panic": "Kernel panic"})
    assert result.done_s is None and result.exited_s is not None
    assert result.done_at == result.exited_s and result.powered_off
    assert result.kernel_s is not None and result.kernel_s <= result.markers["panic"] <= result.exited_s


def test_boot_timeout_is_clear_and_kills_qemu(base_image, tmp_path):
    seed = vm.seed_iso(tmp_path / "seed.iso", b"#cloud-config\n{}\n", b"instance-id: t-1\n")
    name = f"imagebuild-timeout-{os.getpid()}"
    log = tmp_path / "serial.log"
    t0 = time.monotonic()
    with pytest.raises(ImagebuildError) as err:
        vm.boot(vm.overlay(base_image, tmp_path), seed, serial_log=log, timeout=25,
                  done_marker="NEVER-PRINTED", accel="tcg", name=name)
    assert time.monotonic() - t0 < 45
    message = str(err.value)
    assert "timed out after 25 s" in message and "'NEVER-PRINTED'" in message
    assert str(log) in message
    tail = message.split("last lines of the serial console:\n", 1)[1].splitlines()
    logged = vm.strip_ansi(log.read_text(errors="replace"))
    # The last 30 lines, or all when the guest printed fewer (on a loaded machine it gets less far in 25 s:
    # a fixed minimum of 10 failed there).
    assert 1 <= len(tail) <= 30, tail
    assert all(line in logged for line in tail)
    assert not _wait_gone(name, 1.0)


def test_qemu_exiting_early_is_reported(tmp_path):
    # QEMU fails at once: its disk does not exist.
    with pytest.raises(ImagebuildError, match="exited .* before printing"):
        vm.boot(tmp_path / "missing.qcow2", None, serial_log=tmp_path / "s.log", timeout=30,
                  done_marker="X", accel="tcg")


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from imagebuild import vm
    name, log = sys.argv[1], Path(sys.argv[2])
    vm.boot(None, None, serial_log=log, timeout=600, done_marker="NEVER", accel="tcg",
              network=False, name=name)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_killing_the_caller_leaves_no_qemu(tmp_path, sig):
    name = f"imagebuild-kill-{sig.name.lower()}-{os.getpid()}"
    caller = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, name, str(tmp_path / "s.log")],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    try:
        deadline = time.monotonic() + 30
        while not _qemu_pids(name):
            assert caller.poll() is None, caller.stderr.read()
            assert time.monotonic() < deadline, "QEMU never started"
            time.sleep(0.1)
        time.sleep(1.0)                     # let it get going
        caller.send_signal(sig)
        caller.wait(timeout=20)
        assert caller.returncode != 0
        assert not _wait_gone(name, 10.0), f"QEMU survived {sig.name} of its caller"
    finally:
        if caller.poll() is None:
            caller.kill()
        for pid in _qemu_pids(name):
            os.kill(pid, signal.SIGKILL)
