"""The detectors that "nothing is left behind" tests rely on, shown able to fail."""
from __future__ import annotations

import subprocess
import time

from imagebuild import qemu
from tests.support import qemu_processes_using


def test_a_qemu_on_an_overlay_is_found_by_its_backing_image_and_its_serial_log(tmp_path):
    """Started as verify starts it: the image's overlay in a scratch dir elsewhere. QEMU's command
    line never names the image (that is why `pgrep -f <image>` found nothing), but it holds it open."""
    images, scratch, logs = (tmp_path / d for d in ("images", "scratch", "logs"))
    for d in (images, scratch, logs):
        d.mkdir()
    blank = images / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M"], check=True)
    disk = qemu.overlay(blank, scratch)
    guest = qemu.Guest(disk, serial_log=logs / "serial.log", accel="tcg", network=False, memory=64, smp=1)
    assert qemu_processes_using(blank) == {}
    with guest:
        guest.start()
        deadline = time.monotonic() + 10
        while guest.running() and not qemu_processes_using(blank) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert guest.running(), guest.tail()
        assert str(blank) not in " ".join(guest.command("tcg")), "the image is not on QEMU's command line"
        assert list(qemu_processes_using(blank)) == [guest.pid]      # held open: the backing file
        assert list(qemu_processes_using(logs)) == [guest.pid]       # named: the serial log
        assert list(qemu_processes_using(tmp_path)) == [guest.pid]
        assert qemu_processes_using(tmp_path / "elsewhere") == {}
    assert qemu_processes_using(tmp_path) == {}
