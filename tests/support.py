"""Helpers shared by the foundation's tests: specs from YAML, the CLI (in-process and as a real
subprocess), directory snapshots, and the real consumers of what imagebuild renders (containerd,
systemd-analyze, cloud-init, packer).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml

from devtools import families
from imagebuild import cli
from imagebuild import spec as spec_module
from imagebuild.spec import API_VERSION, Spec
from imagebuild.vm.channel import RESULT_PREFIX, RESULTS_DEVICE, SERIAL_DEVICE, parse_marked_lines
from imagebuild.vm.guest import BootResult

ROOT = Path(__file__).resolve().parents[1]
ZERO_CHECKSUM = "sha256:" + "0" * 64
GZIP_MAGIC = b"\x1f\x8b"
#: One containerd release per reference-default family: the one Debian packages (1.6, 1.7, 2.1), else the
#: family's latest patch on the Go module proxy (devtools.families.UPSTREAM_ONLY).
FAMILY_VERSIONS = {"1.6": "1.6.20", "1.7": "1.7.24", "2.0": "2.0.14", "2.1": "2.1.9", "2.2": "2.2.10",
                   "2.3": "2.3.7", "2.4": "2.4.2"}
#: Debian package versions of those families (bookworm, trixie, sid).
PACKAGE_VERSIONS = {"1.6": "1.6.20~ds1-1+deb12u3", "1.7": "1.7.24~ds1-6+deb13u1", "2.1": "2.1.9+ds1-5"}
#: The system's python3: cloud-init's own modules live there, not in the venv.
SYSTEM_PYTHON = "/usr/bin/python3"


def as_from_a_terminal() -> None:
    """preexec_fn of a child a test sends SIGINT as Ctrl-C: SIGINT at its default action, as a shell in a
    terminal starts a program (a job a non-interactive shell starts in the background has it ignored, and a
    child inherits that: Python then raises no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spec_of(doc: dict | str | None = None) -> Spec:
    """A validated Spec from a YAML document (text, or a dict dumped to YAML first)."""
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc or {}, sort_keys=False)
    return spec_module.parse(text, "test spec")


def default_spec_on(os_name: str, architecture: str, family: str) -> Spec:
    """The default spec on *os_name* and *architecture* with containerd of *family*: the goldens of
    tests/e2e beyond the default one, and the arm64 / amd64 pair `make bench` compares."""
    doc = yaml.safe_load(yaml.safe_dump(spec_module.load().document))   # a deep copy
    doc["image"] |= {"os": os_name, "architecture": architecture}
    doc["containerd"]["version"] = FAMILY_VERSIONS[family]
    return spec_module.parse(yaml.safe_dump(doc), f"{os_name} {architecture} golden spec")


def with_pause_archive(spec: Spec, work: Path) -> tuple[Spec, dict]:
    """*spec* whose sandbox image is a real pause (Debian's catatonit) under a local name, baked from an OCI
    archive (image.sandbox.source archive), and the archive ({"path", "ref", "digest", "sha256"})."""
    from devtools import pause_image

    made = pause_image.pause_archive(Path(work) / "catatonit-pause.tar", spec.image.architecture)
    doc = yaml.safe_load(yaml.safe_dump(spec.document))
    doc["config"]["sandbox_image"] = made["ref"]
    doc["image"]["sandbox"] = {"source": "archive", "archive": {"url": made["path"], "sha256": made["sha256"]}}
    return spec_module.parse(yaml.safe_dump(doc), "spec (sandbox image from an archive)"), made


def write_spec(directory: Path, doc: dict | str | None, name: str = "spec.yaml") -> Path:
    path = Path(directory) / name
    if not isinstance(doc, str):  # a spec as a user writes it today: in the current spec version
        doc = yaml.safe_dump({"apiVersion": API_VERSION, **(doc or {})}, sort_keys=False)
    path.write_text(doc)
    return path


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """`imagebuild ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: --help, bad arguments
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The real entry point, `python -m imagebuild ARGS`, as a subprocess (bytes out)."""
    return subprocess.run([sys.executable, "-m", "imagebuild", *args], capture_output=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, input=stdin, timeout=120)


def snapshot(directory: Path) -> dict[str, tuple]:
    """Every entry under *directory*: relative path -> (kind, mode, mtime_ns, content)."""
    directory = Path(directory)
    found: dict[str, tuple] = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            found[rel] = ("link", st.st_mode, st.st_mtime_ns, os.readlink(path))
        elif path.is_dir():
            found[rel] = ("dir", st.st_mode, None, None)
        else:
            found[rel] = ("file", st.st_mode, st.st_mtime_ns, path.read_bytes())
    return found


def ungzip(blob: bytes) -> bytes:
    return gzip.decompress(blob) if blob[:2] == GZIP_MAGIC else blob


# --------------------------------------------------------------------- real consumers


def containerd_dump(config_text: str, family: str, workdir: Path) -> tuple[subprocess.CompletedProcess, Any]:
    """`containerd --config FILE config dump` with the real binary of *family*: (process, parsed dump)."""
    path = Path(workdir) / f"config-{family}.toml"
    path.write_text(config_text)
    proc = subprocess.run([str(families.binary(family)), "--config", str(path), "config", "dump"],
                          capture_output=True, text=True, timeout=60)
    dumped = tomllib.loads(proc.stdout) if proc.returncode == 0 else None
    return proc, dumped


def packer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["packer", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CHECKPOINT_DISABLE": "1"})


def packer_console(packer_dir: Path, expression: str) -> str:
    """What Packer evaluates *expression* to, with the template's variables loaded."""
    proc = subprocess.run(["packer", "console", "imagebuild.pkr.hcl"], cwd=packer_dir, input=expression + "\n",
                          capture_output=True, text=True, timeout=60, env={**os.environ, "CHECKPOINT_DISABLE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.rstrip("\n")


def packer_validate(packer_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return packer("validate", "-var", "base_image=/nonexistent/base.qcow2", "-var",
                  f"base_checksum={ZERO_CHECKSUM}", *extra, "imagebuild.pkr.hcl", cwd=packer_dir)


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True, timeout=120)


_CLOUD_INIT_PARTS = r"""
import json, sys
from cloudinit import helpers, user_data, util
msg = user_data.UserDataProcessor(helpers.Paths({})).process(sys.stdin.buffer.read())
def text(payload):
    return payload.decode() if isinstance(payload, bytes) else payload
parts = [{"type": p.get_content_type(), "payload": text(util.fully_decoded_payload(p))}
         for p in msg.walk() if p.get_content_maintype() != "multipart"]
print(json.dumps(parts))
"""


def cloud_init_parts(blob: bytes) -> list[dict]:
    """The parts cloud-init's own user-data processor makes of *blob* (it un-gzips and splits MIME)."""
    proc = subprocess.run([SYSTEM_PYTHON, "-c", _CLOUD_INIT_PARTS], input=blob, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)


def qemu_processes_using(path: Path) -> dict[int, str]:
    """Live QEMU processes that touch *path* (a file, or anything under a directory): named on
    their command line (a serial log, a disk) or held open (an overlay's backing image, which
    never appears on the command line). pid -> command line. For "no QEMU outlived X" checks:
    `pgrep -f <image>` cannot see a guest that runs on an overlay of <image>."""
    path = Path(path).resolve()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not os.path.basename(argv[0]).startswith(b"qemu-system"):
                continue
            command = b" ".join(argv).decode(errors="replace").strip()
            touched = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except (FileNotFoundError, ProcessLookupError):   # gone meanwhile
            continue
        touched.append(command)
        if any(str(path) in item for item in touched):
            found[int(proc.name)] = command
    return found


@contextlib.contextmanager
def temp_dir_of_its_own():
    """Run the body with a new, empty directory as the temporary directory of this process
    (`tempfile`) and of every process it starts ($TMPDIR); yield it, remove it afterwards. What
    the body leaves there is what it would have left in /tmp: "leaves /tmp as it found it" is
    "the directory is still empty at the end of the body", whatever else runs on the machine.
    The directory is made in the system's temporary directory, so its path stays short (Packer's
    plugin sockets live in TMPDIR, and a unix socket path is limited to 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="own-tmp-"))
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(directory), str(directory)
    try:
        yield directory
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------- QEMU test boots


def guest_emit_function(prefix: str = RESULT_PREFIX, name: str = "imagebuild_emit") -> str:
    """A POSIX shell function for test guests' user-data: ``imagebuild_emit '{"k": 1}'`` writes the
    line ``PREFIX {"k": 1}`` in one write to the results port (when present) and to the serial
    console (for humans; the host prefers the port's copy)."""
    return (
        f"{name}() {{\n"
        f"  _ib_line=\"{prefix} $*\"\n"
        f"  if [ -w {RESULTS_DEVICE} ]; then printf '%s\\n' \"$_ib_line\" >> {RESULTS_DEVICE}; fi\n"
        f"  printf '%s\\n' \"$_ib_line\" >> {SERIAL_DEVICE} 2>/dev/null || true\n"
        f"}}\n"
    )


def parse_marked_json(text: str, prefix: str = RESULT_PREFIX) -> list:
    """The marked payloads of *text* parsed as JSON; unparsable ones (e.g. broken by interleaved
    console output) are skipped."""
    out = []
    for payload in parse_marked_lines(text, prefix):
        try:
            out.append(json.loads(payload))
        except ValueError:
            continue
    return out


def records(result: BootResult, prefix: str = RESULT_PREFIX) -> list:
    """The JSON records a boot marked with *prefix*: from the results port, or from the console if
    the port has none (a guest without virtio_console, or a script that wrote only to ttyS0)."""
    return parse_marked_json(result.results_text(), prefix) or parse_marked_json(result.console_text(), prefix)


def without_eol(err):
    """*err* (str or bytes) without the one-line warnings of a containerd family past upstream's end of support
    (the seed's 1.6 has one on every command: tests of other things compare the rest)."""
    if isinstance(err, bytes):
        return without_eol(err.decode()).encode()
    return "".join(line for line in err.splitlines(keepends=True) if " left upstream support on " not in line)


def eol_warning(family: str) -> str:
    """The spec warning of a family past its end of support, as Spec.warnings holds it."""
    from imagebuild.spec.containerd import end_of_support_warning

    return f"containerd.version: {end_of_support_warning(family)}"
