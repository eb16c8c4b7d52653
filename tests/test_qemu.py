"""QEMU guests: results parsing, command lines, seeds, overlays (the real boots: tests/e2e/test_qemu_boots.py)."""
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagebuild import vm
from imagebuild.errors import ImagebuildError
from imagebuild.vm import accel, channel, disks
from tests.support import guest_emit_function, parse_marked_json, records

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------ marked lines (fast)

def test_parse_marked_lines_plain_and_prefixed():
    text = (
        'IMAGEBUILD-RESULT {"a": 1}\n'
        '[   12.345678] cloud-init[612]: IMAGEBUILD-RESULT {"b": 2}\r\n'
        '\x1b[0;32mIMAGEBUILD-RESULT\x1b[0m {"c": 3}\n'
        'IMAGEBUILD-RESULTX not this one\n'
        'IMAGEBUILD-DONE {"passed": 1}\n'
        'nothing here\n'
        'IMAGEBUILD-RESULT\n'
        'IMAGEBUILD-RESULT \t{"d": 4}  '
    )
    assert vm.parse_marked_lines(text, "IMAGEBUILD-RESULT") == \
        ['{"a": 1}', '{"b": 2}', '{"c": 3}', "", '{"d": 4}']
    assert vm.parse_marked_lines(text, "IMAGEBUILD-DONE") == ['{"passed": 1}']
    assert vm.parse_marked_lines("", "X") == []


def test_parse_marked_lines_interleaved_console():
    # The kernel printed in the middle of a line: the fragment after the interruption
    # still carries the prefix only once, and the broken record is not valid JSON.
    text = ('IMAGEBUILD-RESULT {"ok": tr[   40.1] random: crng init done\n'
            'ue}\n'
            'junk IMAGEBUILD-RESULT old IMAGEBUILD-RESULT {"last": true}\n')
    assert vm.parse_marked_lines(text) == ['{"ok": tr[   40.1] random: crng init done',
                                             '{"last": true}']
    assert parse_marked_json(text) == [{"last": True}]


def test_boot_result_prefers_the_results_port():
    def result(lines):
        return vm.BootResult(
            name="g", command=[], accel="tcg", serial_log=Path("s"), results_log=Path("r"),
            started_at=0.0, kernel_s=1.0, cloud_init_final_s=None, done_s=None, done_line=None,
            markers={}, exited_s=9.0, returncode=0, powered_off=True, lines=lines)

    L = vm.Line
    both = result([L(1.0, "console", "[ 1.0] Linux version 6.1"),
                   L(2.0, "console", 'IMAGEBUILD-RESULT {"from": "console"}'),
                   L(2.1, "results", 'IMAGEBUILD-RESULT {"from": "port"}'),
                   L(2.2, "results", 'IMAGEBUILD-DONE {"passed": 1, "failed": 0}')])
    assert records(both) == [{"from": "port"}]
    assert both.results == ['{"from": "port"}', '{"passed": 1, "failed": 0}']
    assert both.kernel_at == 1.0 and both.done_at == 9.0          # no marker: QEMU's exit
    console_only = result([L(2.0, "console", 'IMAGEBUILD-RESULT {"from": "console"}')])
    assert records(console_only) == [{"from": "console"}]
    # QEMU was stopped at the console's DONE before the port's copy landed: the console's
    # complete report wins over the port's truncated one.
    port_behind = result([L(2.0, "results", 'IMAGEBUILD-RESULT {"from": "port"}'),
                          L(2.1, "console", '[ 2.1] cloud-init[511]: IMAGEBUILD-RESULT {"from": "console"}'),
                          L(2.2, "console", '[ 2.2] cloud-init[511]: IMAGEBUILD-DONE {"passed": 1, "failed": 0}')])
    assert port_behind.results == ['{"from": "console"}', '{"passed": 1, "failed": 0}']
    no_done = result([L(2.0, "results", 'IMAGEBUILD-RESULT {"from": "port"}'),
                      L(2.1, "console", 'IMAGEBUILD-RESULT {"from": "console"}')])
    assert no_done.results == ['{"from": "port"}']


def test_guest_emit_function_writes_whole_lines(tmp_path):
    port, console = tmp_path / "port", tmp_path / "console"
    port.write_text("")
    fn = guest_emit_function().replace(vm.RESULTS_DEVICE, str(port)) \
                                   .replace(vm.SERIAL_DEVICE, str(console))
    subprocess.run(["sh", "-c", fn + """imagebuild_emit '{"hello": 1}'; imagebuild_emit x y"""],
                   check=True)
    expected = 'IMAGEBUILD-RESULT {"hello": 1}\nIMAGEBUILD-RESULT x y\n'
    assert port.read_text() == expected and console.read_text() == expected


def test_tail_reader_handles_partial_lines(tmp_path):
    f = tmp_path / "log"
    f.write_bytes(b"")
    t = channel.Tail(f)
    with open(f, "ab") as w:
        w.write(b"one\r\ntw")
        w.flush()
        assert t.read_lines() == ["one"]
        w.write(b"o\n\x1b[1mthree\x1b[0m\n\xffpart")
        w.flush()
        assert t.read_lines() == ["two", "three"]
    assert t.flush() == "\ufffdpart"


# ------------------------------------------------------------------------ command line (fast)

def test_command_line_tcg(tmp_path):
    g = vm.Guest(tmp_path / "disk,1.qcow2", tmp_path / "seed.iso", serial_log=tmp_path / "s.log",
                   accel="tcg", name="imagebuild-unit")
    cmd = g.command()
    joined = " ".join(cmd)
    assert cmd[0] == "qemu-system-x86_64"
    assert "-accel tcg,thread=multi -cpu max -smp 2 -m 2048" in joined
    assert f"file={tmp_path}/disk,,1.qcow2,if=virtio,format=qcow2" in joined
    assert f"file={tmp_path}/seed.iso,if=virtio,format=raw,readonly=on" in joined
    assert "-netdev user,id=net0 " in joined and "hostfwd" not in joined
    assert f"file,id=con0,path={tmp_path}/s.log" in joined
    assert f"file,id=res0,path={tmp_path}/s.log.results" in joined
    assert "virtserialport,bus=vser0.0,chardev=res0,name=imagebuild.results" in joined
    assert "-nodefaults" in cmd and "-name" in cmd and "imagebuild-unit" in cmd[cmd.index("-name") + 1]
    assert "-kernel" not in cmd and "-enable-kvm" not in cmd


def test_command_line_options(tmp_path):
    g = vm.Guest(None, None, serial_log=tmp_path / "s.log", results_log=tmp_path / "r.log",
                   accel="kvm", memory=4096, smp=4, hostfwd=[(40022, 22)], kernel="/k",
                   initrd="/i", append="console=ttyS0", extra_args=["-snapshot"])
    joined = " ".join(g.command())
    assert "-accel kvm -cpu host -smp 4 -m 4096" in joined
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in joined
    assert "-kernel /k -initrd /i -append console=ttyS0" in joined
    assert f"path={tmp_path}/r.log" in joined and joined.endswith("-snapshot")
    assert "-drive" not in joined
    no_net = vm.Guest(None, serial_log=tmp_path / "s.log", accel="tcg", network=False).command()
    assert "-netdev" not in no_net


def test_command_line_of_an_ec2_boot(tmp_path):
    """EC2's SMBIOS identity, the link-local network with the IMDS forwarded, a fresh MAC in slot 5."""
    mac = vm.random_mac()
    g = vm.Guest(tmp_path / "d.qcow2", tmp_path / "data.iso", serial_log=tmp_path / "s.log", accel="tcg",
                   mac=mac, nic_slot=vm.EC2_NIC_SLOT, netdev_options=vm.ec2_netdev("relay --to 1,2"),
                   extra_args=vm.ec2_smbios("i-0123456789abcdef0", "m7g.large"))
    cmd = g.command()
    netdev = cmd[cmd.index("-netdev") + 1]
    assert netdev == ("user,id=net0,net=169.254.0.0/16,host=169.254.0.1,dhcpstart=169.254.10.15,"
                      "guestfwd=tcp:169.254.169.254:80-cmd:relay --to 1,,2")
    assert f"virtio-net-pci,netdev=net0,mac={mac},addr=0x5" in cmd
    type1 = next(a for a in cmd if a.startswith("type=1,"))
    fields = dict(f.split("=", 1) for f in type1.split(","))
    assert fields["manufacturer"] == "Amazon EC2" and fields["uuid"] == fields["serial"]
    assert fields["product"] == "m7g.large"          # the instance type, as the IMDS document's
    assert fields["uuid"].startswith("ec2")          # what ds-identify's ec2 platform check reads
    assert "type=3,manufacturer=Amazon EC2,asset=i-0123456789abcdef0" in cmd


def test_random_macs_are_fresh_unicast_and_local():
    macs = {vm.random_mac() for _ in range(50)}
    assert len(macs) == 50 and "52:54:00:12:34:56" not in macs
    for mac in macs:
        first = int(mac.split(":")[0], 16)
        assert len(mac.split(":")) == 6 and first & 1 == 0 and first & 2 == 2


def test_data_iso_has_its_own_label(tmp_path):
    if not shutil.which("xorriso"):
        pytest.skip("xorriso not installed")
    iso = vm.data_iso(tmp_path / "d.iso", {"test-image.tar": b"x"}, label="imagebuild")
    assert iso.read_bytes()[0x8000 + 40:0x8000 + 72].rstrip() == b"imagebuild"   # not cidata: no NoCloud seed


def test_accelerator_choices(monkeypatch):
    monkeypatch.delenv("IMAGEBUILD_ACCEL", raising=False)
    assert vm.accelerator("tcg") == "tcg"
    assert vm.accelerator("kvm") == "kvm"
    with pytest.raises(ImagebuildError, match="unknown accelerator"):
        vm.accelerator("hvf")
    monkeypatch.setenv("IMAGEBUILD_ACCEL", "tcg")
    assert vm.accelerator("auto") == "tcg"
    assert vm.accel_args("tcg") == ["-accel", "tcg,thread=multi", "-cpu", "max"]


def test_a_guest_of_another_architecture_runs_under_tcg_with_its_cpu(monkeypatch):
    monkeypatch.delenv("IMAGEBUILD_ACCEL", raising=False)
    host = accel.host_arch()
    foreign = "arm64" if host == "amd64" else "amd64"
    assert vm.accelerator("kvm", host) == "kvm"         # the host's own architecture keeps the choice
    assert vm.accelerator("kvm", foreign) == "tcg"      # KVM runs only the host's architecture
    assert vm.accel_args("tcg", "arm64") == ["-accel", "tcg,thread=multi", "-cpu", "max,pauth-impdef=on"]
    assert vm.accel_args("kvm", "arm64") == ["-accel", "kvm", "-cpu", "host"]


def test_probe_kvm_without_a_usable_device_is_false_and_cached(monkeypatch):
    monkeypatch.setattr(accel, "_kvm_answer", None)
    monkeypatch.setattr(accel, "_kvm_device_usable", lambda: False)
    monkeypatch.setattr(accel, "probe_boot", lambda *a, **k: pytest.fail("must not boot"))
    assert vm.probe_kvm() is False
    monkeypatch.setattr(accel, "_kvm_device_usable", lambda: pytest.fail("must be cached"))
    assert vm.probe_kvm() is False
    monkeypatch.delenv("IMAGEBUILD_ACCEL", raising=False)
    assert vm.accelerator("auto") == "tcg"


def test_probe_kvm_uses_the_boot_probe(monkeypatch, tmp_path):
    monkeypatch.setattr(accel, "_kvm_answer", None)
    monkeypatch.setattr(accel, "_kvm_device_usable", lambda: True)
    seen = []
    monkeypatch.setattr(accel, "probe_boot", lambda accel, kernel, timeout: seen.append(accel) or True)
    assert vm.probe_kvm(kernel=tmp_path / "vmlinuz") is True
    assert vm.probe_kvm() is True and seen == ["kvm"]


# -------------------------------------------------------------------- seeds, overlays (fast)

def test_seed_iso(tmp_path):
    if not shutil.which("xorriso"):
        pytest.skip("xorriso not installed")
    iso = vm.seed_iso(tmp_path / "seed.iso", b"#cloud-config\n{}\n", b"instance-id: x\n",
                        {"files/payload.tar.gz": b"\x1f\x8b payload", "top.txt": b"top"})
    data = iso.read_bytes()
    assert data[0x8000 + 1:0x8000 + 6] == b"CD001"
    assert data[0x8000 + 40:0x8000 + 72].rstrip() == b"cidata"
    out = tmp_path / "x"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)],
                   check=True, capture_output=True)
    assert (out / "user-data").read_bytes() == b"#cloud-config\n{}\n"
    assert (out / "meta-data").read_bytes() == b"instance-id: x\n"
    assert (out / "files/payload.tar.gz").read_bytes() == b"\x1f\x8b payload"
    assert (out / "top.txt").read_bytes() == b"top"
    assert not list(tmp_path.glob(".seed.iso.*"))


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "user-data"])
def test_seed_iso_rejects_bad_names(tmp_path, bad):
    with pytest.raises(ImagebuildError):
        vm.seed_iso(tmp_path / "s.iso", b"", b"", {bad: b"x"})


def test_overlay_never_touches_the_image(tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    before = base.read_bytes()
    ov = vm.overlay(base, tmp_path, size="128M")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(ov)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 128 * 2**20
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 1M", str(ov)], check=True, capture_output=True)
    assert base.read_bytes() == before
    assert vm.overlay(base, tmp_path) != ov
    with pytest.raises(ImagebuildError, match="not found"):
        vm.overlay(tmp_path / "missing.qcow2", tmp_path)


def test_wait_for_sees_a_prompt_that_ends_in_no_newline(tmp_path):
    """`login: ` waits for input and never gets its newline: wait_for must still find it (the EC2
    boot of an image whose cloud-init stayed off is judged at that prompt)."""
    g = vm.Guest(None, None, serial_log=tmp_path / "s.log", accel="tcg")
    g.serial_log.write_bytes(b"Debian GNU/Linux 12 debian ttyS0\n\ndebian login: ")
    g.results_log.write_bytes(b"")
    g._t0 = time.monotonic()
    g._readers = {"console": channel.Tail(g.serial_log), "results": channel.Tail(g.results_log)}
    line = g.wait_for(re.compile(vm.DEFAULT_MARKERS["login prompt"]), timeout=5)
    assert line is not None and line.text == "debian login: " and line.source == "console"
    with pytest.raises(ImagebuildError, match="timed out"):   # and a prompt that is not there is not found
        g.wait_for(re.compile(r"\bpassword: "), timeout=0.5)


def test_convert_shows_a_bar_to_100_percent_and_reports_failures(tmp_path, capsys):
    src = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 8M", str(src)], check=True, capture_output=True)
    disks.convert(src, tmp_path / "out.raw", source_format="qcow2", dest_format="raw", what="to raw")
    assert (tmp_path / "out.raw").stat().st_size == 64 * 2**20
    assert (tmp_path / "out.raw").read_bytes()[:8 * 2**20] == b"\x5a" * 8 * 2**20
    bar_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  to raw")]
    assert bar_lines[-1] == "  to raw 100%", bar_lines
    with pytest.raises(ImagebuildError, match=r"qemu-img convert of .*missing.qcow2 failed \(exit 1\): .*"):
        disks.convert(tmp_path / "missing.qcow2", tmp_path / "x.raw", source_format="qcow2", dest_format="raw")
