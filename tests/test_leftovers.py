"""The detectors that "nothing is left behind" tests rely on, shown able to fail."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from imagebuild import vm
from imagebuild.build.bake import PACKER, PackerRun
from tests.support import qemu_processes_using, temp_dir_of_its_own


def test_a_qemu_on_an_overlay_is_found_by_its_backing_image_and_its_serial_log(tmp_path):
    """Started as verify starts it: the image's overlay in a scratch dir elsewhere. QEMU's command
    line never names the image (that is why `pgrep -f <image>` found nothing), but it holds it open."""
    images, scratch, logs = (tmp_path / d for d in ("images", "scratch", "logs"))
    for d in (images, scratch, logs):
        d.mkdir()
    blank = images / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M"], check=True)
    disk = vm.overlay(blank, scratch)
    guest = vm.Guest(disk, serial_log=logs / "serial.log", accel="tcg", network=False, memory=64, smp=1)
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


# A qemu build that makes its cd_files CD and then fails at once (its QEMU is `false`): what a bake
# does before its VM starts, in a second and without a VM.
CD_ONLY_TEMPLATE = """
source "qemu" "cd" {{
  iso_url          = {iso}
  iso_checksum     = "none"
  qemu_binary      = "false"
  cd_files         = [{seed}]
  cd_label         = "cidata"
  communicator     = "none"
  output_directory = {out}
  headless         = true
  disk_size        = "64M"
  accelerator      = "tcg"
}}
build {{
  name    = "t"
  sources = ["source.qemu.cd"]
}}
"""


def _cd_only_template(directory: Path) -> Path:
    (directory / "seed").mkdir()
    (directory / "seed" / "user-data").write_text("#cloud-config\n")
    (directory / "empty.iso").write_bytes(b"")
    template = directory / "cd.pkr.hcl"
    template.write_text(CD_ONLY_TEMPLATE.format(iso=json.dumps(str(directory / "empty.iso")),
                                                seed=json.dumps(str(directory / "seed" / "user-data")),
                                                out=json.dumps(str(directory / "out"))))
    return template


def test_packer_alone_leaves_its_cd_staging_dir_in_tmpdir(tmp_path):
    """The cause, and the detector failing on it: Packer 1.6.6 never removes `packer_to_cdrom*`."""
    template = _cd_only_template(tmp_path)
    with temp_dir_of_its_own() as tmp:
        proc = subprocess.run([PACKER, "build", "-only=t.qemu.cd", str(template)], capture_output=True, text=True,
                              env={**os.environ, "CHECKPOINT_DISABLE": "1"})
        left = list(tmp.iterdir())
    assert proc.returncode != 0 and "Done copying paths from CD_dirs" in proc.stdout, proc.stdout
    assert [p.name.startswith("packer_to_cdrom") for p in left] == [True]


def test_bakes_packer_leaves_the_temporary_directory_as_it_found_it(tmp_path):
    """bake's PackerRun gives Packer a TMPDIR inside the bake's scratch (removed with it)."""
    template = _cd_only_template(tmp_path)
    scratch = tmp_path / "bake-scratch"
    scratch.mkdir()
    with temp_dir_of_its_own() as tmp:
        run = PackerRun(scratch / "packer.log", tmpdir=scratch / "tmp")
        assert run.run(template, {}, only="t.qemu.cd") != 0
        left = list(tmp.iterdir())
    assert "Done copying paths from CD_dirs" in (scratch / "packer.log").read_text()
    assert left == []
    assert [p.name.startswith("packer_to_cdrom") for p in (scratch / "tmp").iterdir()] == [True]


def test_packer_needs_a_short_tmpdir_for_its_plugin_sockets(tmp_path, monkeypatch):
    """Why bake's Packer TMPDIR is a new directory in the system's temporary directory and not in
    the bake's scratch beside the output (whose path can be long): Packer's plugins listen on unix
    sockets in TMPDIR, and a socket path over 107 bytes makes Packer fail before it starts."""
    monkeypatch.chdir(tmp_path)   # where Packer writes its crash.log
    template = _cd_only_template(tmp_path)
    long_tmp = tmp_path / ("x" * (110 - len(str(tmp_path))))
    run = PackerRun(tmp_path / "packer.log", tmpdir=long_tmp)
    assert run.run(template, {}, only="t.qemu.cd") != 0
    log = (tmp_path / "packer.log").read_text()
    assert "bind: invalid argument" in log and "Done copying paths from CD_dirs" not in log, log[-2000:]
    assert (tmp_path / "crash.log").exists()


def test_temp_dir_of_its_own_sees_what_python_and_child_processes_leave():
    with temp_dir_of_its_own() as tmp:
        assert tempfile.gettempdir() == str(tmp) and list(tmp.iterdir()) == []
        left = Path(tempfile.mkdtemp(prefix="python-"))
        made = subprocess.run(["mktemp", "-d"], capture_output=True, text=True, check=True).stdout.strip()
        assert sorted(tmp.iterdir()) == sorted([left, Path(made)])
    assert tempfile.gettempdir() != str(tmp) and not tmp.exists()
