"""verify's test image: made from the package's bytes (no apt, no network), reproducible, and run by the
real containerd 1.6, 1.7 and 2.1 (ctr import + run under runc): echo prints, sleep and pause stay up.
"""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO

import pytest

from devtools import debian_artifacts as da
from devtools import testimage as dev_testimage
from imagebuild.errors import ImagebuildError
from imagebuild.verify import testimage
from tests.daemons import Daemon

#: The manifest digest of the default test image. It changes only when the image's content does
#: (the program, its links, the config): a different digest on another machine is a reproducibility bug.
DEFAULT_DIGEST = "sha256:7e6ca32816902a0e2c273b4a638bc830611793e73c95b1c17142b7f5dbb7d099"
#: The same for `arch="arm64"`.
ARM64_DIGEST = "sha256:ac308af7ffd65a19aa9686f68fde6bba978a94002bc964dbd16109917384f5fe"


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return testimage.test_oci_image(tmp_path_factory.mktemp("oci") / "test-image.tar")


def _members(path: str) -> tuple[list[str], dict[str, bytes], dict]:
    with tarfile.open(path) as tar:
        names = tar.getnames()
        blobs = {n.rsplit("/", 1)[1]: tar.extractfile(n).read()
                 for n in names if n.startswith("blobs/sha256/") and tar.getmember(n).isfile()}
        index = json.loads(tar.extractfile("index.json").read())
    return names, blobs, index


# ----------------------------------------------------------------- bytes: reproducible, pinned


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_program_is_what_its_source_assembles_to(arch):
    """The committed program is exactly what binutils makes of the committed source."""
    assert sorted(testimage.PROGRAM_SHA256) == sorted(dev_testimage.TOOLS) == ["amd64", "arm64"]
    assert dev_testimage.assemble(arch) == testimage.program(arch)
    assert hashlib.sha256(testimage.program(arch)).hexdigest() == testimage.PROGRAM_SHA256[arch]


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_an_edited_source_gives_other_bytes(tmp_path, arch):
    """The comparison above can fail: one changed byte of the source changes the program."""
    source = tmp_path / f"{arch}.s"
    source.write_text(testimage.source_path(arch).read_text().replace('"echo"', '"ecko"'))
    assert dev_testimage.assemble(arch, source) != testimage.program(arch)


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_a_source_with_relocations_is_refused(tmp_path, arch):
    source = tmp_path / f"{arch}.s"
    source.write_text(testimage.source_path(arch).read_text() + "\n        .quad   somewhere_else\n")
    with pytest.raises(ImagebuildError, match="relocations"):
        dev_testimage.assemble(arch, source)


def test_a_program_of_another_architecture_is_refused(tmp_path, monkeypatch):
    """Even pinned, the amd64 program is not taken as the arm64 one (its ELF e_machine says x86-64)."""
    (tmp_path / "arm64.bin").write_bytes(testimage.program("amd64"))
    monkeypatch.setattr(testimage, "program_path", lambda arch="amd64": tmp_path / f"{arch}.bin")
    monkeypatch.setitem(testimage.PROGRAM_SHA256, "arm64", testimage.PROGRAM_SHA256["amd64"])
    with pytest.raises(ImagebuildError, match="not a 64-bit little-endian ELF for arm64 "
                                              r"\(e_machine 62, expected 183\)"):
        testimage.program("arm64")


def test_program_bytes_are_checked_against_their_pin(tmp_path, monkeypatch):
    changed = bytearray(testimage.program())
    changed[-2] ^= 1
    (tmp_path / "amd64.bin").write_bytes(bytes(changed))
    monkeypatch.setattr(testimage, "program_path", lambda arch="amd64": tmp_path / f"{arch}.bin")
    with pytest.raises(ImagebuildError, match="not the pinned"):
        testimage.program()
    with pytest.raises(ImagebuildError, match="no test image program for architecture 'riscv64'"):
        testimage.program("riscv64")


def test_image_is_reproducible_and_oci_shaped(image, tmp_path):
    assert image["ref"] == "docker.io/library/imagebuild-test:latest"
    assert image["digest"] == DEFAULT_DIGEST
    again = testimage.test_oci_image(tmp_path / "again.tar")
    assert Path(again["path"]).read_bytes() == Path(image["path"]).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.tar"]
    names, blobs, index = _members(image["path"])
    assert names[:2] == ["oci-layout", "index.json"]
    for digest, data in blobs.items():
        assert hashlib.sha256(data).hexdigest() == digest
    (desc,) = index["manifests"]
    assert desc["digest"] == image["digest"]
    assert desc["annotations"] == {"org.opencontainers.image.ref.name": image["ref"],
                                   "io.containerd.image.name": image["ref"]}
    manifest = json.loads(blobs[desc["digest"].split(":")[1]])
    config = json.loads(blobs[manifest["config"]["digest"].split(":")[1]])
    assert (config["architecture"], config["os"], config["config"]["Cmd"]) == ("amd64", "linux", ["/bin/pause"])
    (layer,) = manifest["layers"]
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]
    with tarfile.open(fileobj=io.BytesIO(blobs[layer["digest"].split(":")[1]])) as lt:
        entries = {m.name: m for m in lt.getmembers()}
        program = lt.extractfile("bin/imagebuild-test").read()
    assert program == testimage.program() and entries["bin/imagebuild-test"].mode == 0o755
    for applet in ("echo", "sleep", "pause", "true", "false"):
        assert entries[f"bin/{applet}"].issym() and entries[f"bin/{applet}"].linkname == "imagebuild-test"


def test_arm64_image_carries_the_arm64_program(tmp_path, image):
    arm = testimage.test_oci_image(tmp_path / "arm64.tar", arch="arm64")
    assert arm["digest"] == ARM64_DIGEST
    assert testimage.test_oci_image(tmp_path / "again.tar", arch="arm64")["digest"] == ARM64_DIGEST
    _, blobs, index = _members(arm["path"])
    (desc,) = index["manifests"]
    assert desc["platform"] == {"architecture": "arm64", "os": "linux"}
    manifest = json.loads(blobs[desc["digest"].split(":")[1]])
    config = json.loads(blobs[manifest["config"]["digest"].split(":")[1]])
    assert (config["architecture"], config["os"]) == ("arm64", "linux")
    (layer,) = manifest["layers"]
    with tarfile.open(fileobj=io.BytesIO(blobs[layer["digest"].split(":")[1]])) as lt:
        assert lt.extractfile("bin/imagebuild-test").read() == testimage.program("arm64")


def test_cmd_changes_only_the_config(tmp_path, image):
    other = testimage.test_oci_image(tmp_path / "sleep.tar", cmd=("/bin/sleep", "3600"))
    assert other["digest"] != image["digest"]
    _, blobs, index = _members(other["path"])
    manifest = json.loads(blobs[index["manifests"][0]["digest"].split(":")[1]])
    config = json.loads(blobs[manifest["config"]["digest"].split(":")[1]])
    assert config["config"]["Cmd"] == ["/bin/sleep", "3600"]
    _, default_blobs, _ = _members(image["path"])
    assert manifest["layers"] == json.loads(default_blobs[image["digest"].split(":")[1]])["layers"]


# ----------------------------------------------------------------- the program's applets, on the host

#: How each architecture's program runs here: amd64 natively, arm64 under qemu-user (no binfmt_misc
#: needed: qemu-aarch64-static is given the program; it passes argv[0] and signals through).
RUNNERS: dict[str, list[str]] = {"amd64": [], "arm64": ["qemu-aarch64-static"]}


def _install_applets(bindir: Path, program: bytes) -> Path:
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "imagebuild-test").write_bytes(program)
    (bindir / "imagebuild-test").chmod(0o755)
    for name in (*testimage.APPLETS, "cat"):
        (bindir / name).symlink_to("imagebuild-test")
    return bindir


@pytest.fixture(scope="module", params=sorted(RUNNERS))
def applets(request, tmp_path_factory) -> tuple[list[str], Path]:
    """(runner, bindir): the program of that architecture with its applet links, as the image lays them out."""
    arch = request.param
    runner = RUNNERS[arch]
    assert not runner or shutil.which(runner[0]), f"{runner[0]} not found: install qemu-user-static"
    return runner, _install_applets(tmp_path_factory.mktemp(f"bin-{arch}"), testimage.program(arch))


def _applet(applets: tuple[list[str], Path], *argv: str,
            stdout: int | IO = subprocess.PIPE) -> subprocess.CompletedProcess:
    runner, bindir = applets
    return subprocess.run([*runner, str(bindir / argv[0]), *argv[1:]], stdout=stdout, stderr=subprocess.PIPE,
                          timeout=30)


def test_echo_true_false_and_unknown(applets):
    assert _applet(applets, "echo", "imagebuild-ok").stdout == b"imagebuild-ok\n"
    assert _applet(applets, "echo", "a b", "", "c").stdout == b"a b  c\n"
    assert _applet(applets, "echo").stdout == b"\n"
    assert _applet(applets, "true").returncode == 0
    assert _applet(applets, "false").returncode == 1
    unknown = _applet(applets, "cat", "/etc/passwd")
    assert (unknown.returncode, unknown.stdout) == (127, b"")
    assert b"unknown applet" in unknown.stderr
    with open("/dev/full", "wb") as full:
        assert _applet(applets, "echo", "x", stdout=full).returncode == 1


def test_sleep_sleeps_and_refuses_bad_intervals(applets):
    started = time.monotonic()
    assert _applet(applets, "sleep", "1").returncode == 0
    assert 0.9 < time.monotonic() - started < 5
    assert _applet(applets, "sleep", "0").returncode == 0
    for bad in (["1.5"], ["x"], [""], ["-1"], ["99999999999999999999"], ["9223372036854775808"], [], ["1", "2"]):
        proc = _applet(applets, "sleep", *bad)
        assert proc.returncode == 1 and b"invalid time interval" in proc.stderr, bad


@pytest.mark.parametrize("argv", [("pause",), ("sleep", "infinity"), ("sleep", "3600")])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stays_up_until_term_or_int(applets, argv, sig):
    runner, bindir = applets
    proc = subprocess.Popen([*runner, str(bindir / argv[0]), *argv[1:]])
    try:
        time.sleep(0.5 if runner else 0.3)
        assert proc.poll() is None, "exited on its own"
        os.kill(proc.pid, signal.SIGCHLD)   # reaped nothing, went on
        time.sleep(0.1)
        assert proc.poll() is None, "a SIGCHLD ended it"
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


def test_arm64_program_is_an_aarch64_executable():
    """What the arm64 image carries is an AArch64 ELF (as `file` sees it), not the amd64 program."""
    info = subprocess.run(["file", "-b", "-"], input=testimage.program("arm64"), capture_output=True,
                          check=True).stdout
    assert info.startswith(b"ELF 64-bit LSB executable, ARM aarch64"), info
    assert testimage.program("arm64") != testimage.program("amd64")


def test_qemu_user_runs_only_an_aarch64_program(tmp_path):
    """The arm64 runs above prove the arm64 program: qemu-aarch64 refuses the amd64 one."""
    proc = _applet((RUNNERS["arm64"], _install_applets(tmp_path, testimage.program("amd64"))),
                   "echo", "imagebuild-ok")
    assert proc.returncode != 0 and proc.stdout == b"", proc


def test_a_broken_arm64_program_fails_the_echo_check(tmp_path):
    """The echo check can fail on arm64: the source with the x86-64 number of write(2) assembles to
    a program whose echo writes nothing (syscall 1 is io_destroy on AArch64) and exits 1."""
    source = tmp_path / "arm64.s"
    source.write_text(testimage.source_path("arm64").read_text().replace(
        ".set SYS_write, 64", ".set SYS_write, 1"))
    broken = dev_testimage.assemble("arm64", source)
    assert broken != testimage.program("arm64")
    proc = _applet((RUNNERS["arm64"], _install_applets(tmp_path / "bin", broken)), "echo", "imagebuild-ok")
    assert (proc.returncode, proc.stdout) == (1, b"")


# ----------------------------------------------------------------- the real containerd runs it


def _start_containerd(family: str, workdir: Path) -> tuple[Daemon, str]:
    sock = str(workdir / "sock")
    config = workdir / "config.toml"
    config.write_text(
        f'version = {3 if family.startswith("2.") else 2}\n'
        f'root = "{workdir}/root"\nstate = "{workdir}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n')
    # runc from bookworm: the trixie/sid runc builds need glibc 2.38, newer than this host's
    path = os.pathsep.join([str(da.binary("1.6", "runc").parent), str(da.binary(family).parent),
                            os.environ.get("PATH", "")])
    daemon = Daemon([da.binary(family), "--config", config], workdir / "containerd.log",
                    env={**os.environ, "PATH": path})
    daemon.wait_ready(lambda: os.path.exists(sock), 20, f"serving {sock}")
    return daemon, sock


@pytest.fixture(params=list(da.FAMILIES))
def ctr(request):
    """`ctr` of a containerd of that family, started on a scratch root (needs root: it runs runc)."""
    assert os.geteuid() == 0, "running containers needs root"
    family = request.param
    workdir = Path(tempfile.mkdtemp(prefix="ctrd-"))
    daemon, sock = _start_containerd(family, workdir)
    try:
        yield [str(da.binary(family, "ctr")), "-a", sock, "-n", "k8s.io"]
    finally:
        daemon.stop(grace=20)
        subprocess.run(["rm", "-rf", "--one-file-system", str(workdir)], check=False)


def _ctr(ctr: list[str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ctr, *args], capture_output=True, text=True, timeout=timeout)


def _task_status(ctr: list[str], name: str) -> str:
    for line in _ctr(ctr, "tasks", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == name:
            return fields[2]
    return ""


def _wait_status(ctr: list[str], name: str, wanted: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while (status := _task_status(ctr, name)) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return status


def test_containerd_imports_and_runs_it(ctr, image):
    """What verify's in-guest check asks (imagebuild/guest/check.py container_checks), under runc."""
    imported = _ctr(ctr, "images", "import", "--all-platforms", image["path"])
    assert imported.returncode == 0, imported.stderr
    assert image["ref"] in _ctr(ctr, "images", "ls", "-q").stdout.split()
    once = _ctr(ctr, "run", "--rm", image["ref"], "t-once", "/bin/echo", "imagebuild-ok")
    assert (once.returncode, once.stdout) == (0, "imagebuild-ok\n"), once.stderr
    for name, argv in (("t-sleep", ["/bin/sleep", "3600"]), ("t-pause", [])):   # [] runs the Cmd: /bin/pause
        started = _ctr(ctr, "run", "-d", image["ref"], name, *argv)
        assert started.returncode == 0, started.stderr
        assert _wait_status(ctr, name, "RUNNING") == "RUNNING"
        time.sleep(1)
        assert _task_status(ctr, name) == "RUNNING"
        assert _ctr(ctr, "tasks", "kill", "-s", "SIGTERM", name).returncode == 0   # PID 1: only a handler ends it
        assert _wait_status(ctr, name, "STOPPED") == "STOPPED"
        assert _ctr(ctr, "tasks", "delete", name).returncode == 0
        assert _ctr(ctr, "containers", "delete", name).returncode == 0


def test_a_broken_image_fails_the_echo_check(tmp_path, monkeypatch):
    """The check above can fail: an image without /bin/echo does not print imagebuild-ok."""
    assert os.geteuid() == 0, "running containers needs root"
    monkeypatch.setattr(testimage, "APPLETS", tuple(a for a in testimage.APPLETS if a != "echo"))
    broken = testimage.test_oci_image(tmp_path / "broken.tar")
    daemon, sock = _start_containerd("1.6", tmp_path)
    ctr = [str(da.binary("1.6", "ctr")), "-a", sock, "-n", "k8s.io"]
    try:
        assert _ctr(ctr, "images", "import", broken["path"]).returncode == 0
        once = _ctr(ctr, "run", "--rm", broken["ref"], "t-broken", "/bin/echo", "imagebuild-ok")
        assert once.returncode != 0 and "imagebuild-ok" not in once.stdout
        assert "echo" in once.stderr and "no such file" in once.stderr.lower(), once.stderr
    finally:
        daemon.stop(grace=20)
        subprocess.run(["umount", "-R", str(tmp_path / "state")], capture_output=True, check=False)


def _platform_row(ctr: list[str], ref: str) -> list[str]:
    rows = [line.split() for line in _ctr(ctr, "images", "ls").stdout.splitlines()[1:]]
    (row,) = [r for r in rows if r[0] == ref]
    return row


def test_containerd_imports_the_arm64_image_as_linux_arm64(ctr, image, tmp_path):
    """The arm64 image is what containerd takes as linux/arm64 (running it needs an arm64 host:
    the verify boot under qemu-system-aarch64 does that; the runs above prove the program itself).
    The default image, imported first, shows linux/amd64 there: the platform check can fail."""
    assert _ctr(ctr, "images", "import", image["path"]).returncode == 0
    row = _platform_row(ctr, image["ref"])
    assert image["digest"] in row and "linux/amd64" in row and "linux/arm64" not in row, row
    arm = testimage.test_oci_image(tmp_path / "arm64.tar", arch="arm64")
    imported = _ctr(ctr, "images", "import", "--platform", "linux/arm64", arm["path"])
    assert imported.returncode == 0, imported.stderr
    row = _platform_row(ctr, arm["ref"])
    assert arm["digest"] in row and "linux/arm64" in row, row
