"""`imagebuild doctor`: what this machine lacks for each stage, run for real (a PATH without some programs,
AWS credentials present or not), and its list held to the product's code: every program the product runs on
the host (read from its `run([...])`, `spawn(...)` and `spawned(...)` calls) is one the doctor checks, and
every Debian package it asks for is one `make deps` installs (the Makefile's APT_PACKAGES)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuild.cli import doctor
from tests.support import ROOT

PACKAGE = ROOT / "imagebuild"
SECRET = "imagebuild-doctor-test-secret-0123456789"
KEY_ID = "AKIAIMAGEBUILDDOCTOR"


def run_doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`imagebuild doctor ARGS` as a subprocess, with no AWS settings of this machine (and never a metadata
    service: only 127.0.0.1 is reachable here) unless *env* gives some."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base["AWS_EC2_METADATA_DISABLED"] = "true"
    return subprocess.run([sys.executable, "-m", "imagebuild", "doctor", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=ROOT, timeout=120)


def path_without(tmp_path: Path, *left_out: str) -> str:
    """A PATH of one directory linking every program the doctor knows that is installed, but *left_out*."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in doctor.programs() - set(left_out):
        found = next((f"{d}/{name}" for d in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
                      if os.access(f"{d}/{name}", os.X_OK)), None)
        if found:
            (bin_dir / name).symlink_to(found)
    return str(bin_dir)


def test_nothing_missing_for_verify_on_a_machine_set_up_by_make_deps():
    proc = run_doctor("--stage", "verify", "--architecture", "amd64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISSING" not in proc.stdout and proc.stdout.rstrip().endswith("nothing missing for verify")
    assert "ok       docker-registry" in proc.stdout and "/dev/kvm: " in proc.stdout


def test_missing_programs_are_named_with_their_packages_and_one_install_command(tmp_path):
    proc = run_doctor("--stage", "verify", "--stage", "publish", "--architecture", "amd64",
                      env={"PATH": path_without(tmp_path, "qemu-img", "skopeo", "debugfs")})
    assert proc.returncode == 1, proc.stdout
    lines = proc.stdout.splitlines()
    assert any(re.match(r"  MISSING  qemu-img\s+the throwaway overlay .*\(Debian package qemu-utils\)", line)
               for line in lines), proc.stdout
    assert any(line.startswith("  MISSING  skopeo ") and "(Debian package skopeo)" in line for line in lines)
    # debugfs is installed in /usr/sbin, only not on this PATH: said so, and not installed again.
    debugfs = next(line for line in lines if line.startswith("  MISSING  debugfs "))
    assert "/usr/sbin/debugfs is installed but not on PATH" in debugfs and "e2fsprogs" not in debugfs
    assert "  apt-get install -y qemu-utils skopeo" in lines
    assert "ok       docker-registry" in proc.stdout  # on the PATH given
    # publish needs qemu-img too; each stage says so
    assert "missing for verify, publish" in proc.stdout


def test_a_stage_narrows_the_report(tmp_path):
    proc = run_doctor("--stage", "render", env={"PATH": str(tmp_path)})  # no program at all on PATH
    assert proc.returncode == 0, proc.stdout
    assert "render: nothing beyond imagebuild itself" in proc.stdout
    assert "bake:" not in proc.stdout and "verify:" not in proc.stdout
    proc = run_doctor("--stage", "bake", env={"PATH": str(tmp_path)})
    assert proc.returncode == 1 and "MISSING  packer " in proc.stdout and "verify:" not in proc.stdout


def test_aws_credentials_are_found_and_never_printed():
    proc = run_doctor("--stage", "publish", env={"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET})
    assert proc.returncode == 0, proc.stdout
    assert "ok       AWS credentials  found by boto3 (env)" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr and KEY_ID not in proc.stdout + proc.stderr


def test_no_aws_credentials_is_missing_for_publish(tmp_path):
    proc = run_doctor("--stage", "publish", env={"HOME": str(tmp_path),
                                                 "AWS_CONFIG_FILE": str(tmp_path / "none"),
                                                 "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    assert proc.returncode == 1, proc.stdout
    assert "MISSING  AWS credentials" in proc.stdout and "`aws configure`" in proc.stdout


def test_arm64_images_need_arm64_qemu_and_firmware():
    names = {name for stage in doctor.STAGES for need in doctor.needs(stage, "arm64") for name in need.names}
    assert {"qemu-system-aarch64", "/usr/share/AAVMF/AAVMF_CODE.fd"} <= names
    assert "qemu-system-x86_64" not in names
    uefi = next(n for n in doctor.needs("bake", "arm64") if n.kind == "files")
    assert uefi.package == "qemu-efi-aarch64" and not uefi.optional  # arm64 has no BIOS
    assert next(n for n in doctor.needs("bake", "amd64") if n.kind == "files").optional


# --- the doctor's list is the product's -----------------------------------------------------------

CALLS = {"run", "spawn", "spawned", "Popen"}
#: Call sites whose program the scan cannot read from the code (built elsewhere), and what they run.
INDIRECT = {
    "imagebuild/build/bake.py:bake": set(),  # PackerRun.run(template, ...): a method, the packer of PackerRun.run
    "imagebuild/build/baseimage.py:_run_mmdebstrap": {"mmdebstrap"},  # its caller's cmd = ["mmdebstrap", ...]
    "imagebuild/build/provenance.py:_tool_version": {"packer", "qemu-system-x86_64", "qemu-system-aarch64"},
    "imagebuild/vm/disks.py:data_iso": {"xorriso", "genisoimage"},  # the first of SEED_ISO_TOOLS found
    "imagebuild/vm/guest.py:start": {"qemu-system-x86_64", "qemu-system-aarch64"},  # self.command(): platforms
    "imagebuild/run.py:spawn": {"setpriv"},  # and whatever the caller runs (read at the caller)
    "imagebuild/run.py:spawned": set(),
    "imagebuild/run.py:run": set(),
}


def _scopes(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    """node -> the function (or module) it is in."""
    owner: dict[ast.AST, ast.AST] = {}

    def visit(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            owner[child] = scope
            visit(child, child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope)
    visit(tree, tree)
    return owner


def _bindings(scope: ast.AST, *, top_level: bool) -> dict[str, list[tuple[str, ast.expr]]]:
    """name -> what it is bound to in *scope*: ("value", expr) or ("item of", iterable)."""
    found: dict[str, list[tuple[str, ast.expr]]] = {}
    nodes = scope.body if top_level else ast.walk(scope)  # type: ignore[attr-defined]
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found.setdefault(node.targets[0].id, []).append(("value", node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            found.setdefault(node.target.id, []).append(("value", node.value))
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
            found.setdefault(node.target.id, []).append(("item of", node.iter))
    return found


def _resolve(expr: ast.expr, names: list[dict], depth: int = 0) -> set[str] | None:
    """The programs *expr* (an argv, or its first element) can name; None when the code does not say."""
    if depth > 8:
        return None

    def union(parts):
        sets = [_resolve(p, names, depth + 1) for p in parts]
        return None if any(s is None for s in sets) else set().union(*sets)

    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {os.path.basename(expr.value)}
    if isinstance(expr, ast.List | ast.Tuple):
        return None if not expr.elts or isinstance(expr.elts[0], ast.Starred) else union(expr.elts[:1])
    if isinstance(expr, ast.IfExp):
        return union([expr.body, expr.orelse])
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return union([expr.left])
    if isinstance(expr, ast.BoolOp):
        return union(expr.values)
    if isinstance(expr, ast.Call) and getattr(expr.func, "attr", getattr(expr.func, "id", "")) == "which":
        return union(expr.args[:1])
    if isinstance(expr, ast.Name):
        bound = next((scope[expr.id] for scope in names if expr.id in scope), None)
        if not bound:
            return None
        parts: list[ast.expr] = []
        for how, value in bound:
            if how == "value":
                parts.append(value)
            elif isinstance(value, ast.List | ast.Tuple):
                parts += value.elts
            elif isinstance(value, ast.Name):
                items = next((scope[value.id] for scope in names if value.id in scope), [])
                lists = [v for h, v in items if h == "value" and isinstance(v, ast.List | ast.Tuple)]
                if not lists:
                    return None
                parts += [element for lst in lists for element in lst.elts]
            else:
                return None
        return union(parts)
    return None


def programs_run(source: str, relpath: str) -> tuple[set[str], dict[str, str]]:
    """(the programs *source* runs, {call site: its call} for those the code does not name)."""
    tree = ast.parse(source)
    owner = _scopes(tree)
    module = _bindings(tree, top_level=True)
    programs: set[str] = set()
    unresolved: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and \
                getattr(node.func, "attr", getattr(node.func, "id", None)) in CALLS:
            scope = owner[node]
            found = _resolve(node.args[0], [_bindings(scope, top_level=False), module]
                             if scope is not tree else [module])
            if found is None:
                unresolved[f"{relpath}:{getattr(scope, 'name', '<module>')}"] = ast.unparse(node)[:80]
            else:
                programs |= found
        # an argv built for a helper that runs it: cmd = ["prog", ...]
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in ("cmd", "argv")
                                                for t in node.targets):
            if isinstance(node.value, ast.List) and node.value.elts and \
                    isinstance(node.value.elts[0], ast.Constant) and isinstance(node.value.elts[0].value, str):
                programs.add(os.path.basename(node.value.elts[0].value))
    return programs, unresolved


def product_programs() -> tuple[set[str], dict[str, str]]:
    """Every program the product runs on the host (the in-guest code, imagebuild/guest, runs in the guest)."""
    programs: set[str] = set()
    unresolved: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("imagebuild/guest/"):
            continue
        found, sites = programs_run(path.read_text(), rel)
        programs |= found
        unresolved |= sites
    return programs, unresolved


def test_the_doctor_checks_every_program_the_product_runs():
    programs, unresolved = product_programs()
    assert {"packer", "qemu-img", "mmdebstrap", "openssl", "skopeo", "ssh-keygen"} <= programs  # the scan reads
    assert set(unresolved) == set(INDIRECT), f"call sites whose program the code does not name: {unresolved}"
    wanted = programs | set().union(*INDIRECT.values())
    assert sorted(wanted - doctor.programs()) == []


def test_the_scan_finds_a_new_program_and_a_call_it_cannot_read():
    source = '''
TOOL = "frobnicate"
def f(path):
    run(["newtool", "--flag", path])
    cmd = [TOOL, "x"]
    spawned(cmd)
    for step in [["a-tool"], ["b-tool", "-v"]]:
        run(step)
    run(make_command())
'''
    programs, unresolved = programs_run(source, "x.py")
    assert programs == {"newtool", "frobnicate", "a-tool", "b-tool"}
    assert list(unresolved) == ["x.py:f"]
    assert "newtool" not in doctor.programs()  # so the test above would fail on it


def apt_packages(makefile: str) -> set[str]:
    text = makefile.replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.startswith("APT_PACKAGES :="))
    return set(line.split(":=", 1)[1].split())


def required_packages(names: set[str]) -> set[str]:
    """Which of *names* are of Debian's priority required (on every Debian machine), by dpkg."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Priority}\n", *sorted(names)],
                         capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.endswith(" required")}


def test_every_package_the_doctor_asks_for_is_one_make_deps_installs():
    listed = apt_packages((ROOT / "Makefile").read_text())
    asked = doctor.packages()
    assert {"packer", "qemu-utils", "ovmf", "qemu-efi-aarch64", "openssh-client"} <= asked
    outside = asked - listed
    assert outside == required_packages(outside), f"not in the Makefile's APT_PACKAGES: {outside}"
    assert required_packages({"skopeo", "coreutils"}) == {"coreutils"}  # the dpkg check tells them apart


@pytest.mark.parametrize("left_out", ["skopeo", "openssh-client"])
def test_a_package_missing_from_the_makefile_is_found(left_out):
    makefile = (ROOT / "Makefile").read_text().replace(f" {left_out} ", " ")
    assert left_out not in apt_packages(makefile) and left_out in doctor.packages()
