"""Upstream containerd, runc and the CNI plugins, built from the Go module proxy at their release tags, laid
out as their release artifacts: what `make golden`, the tests and the bench serve in place of Debian's
patched builds (a tarball install must get upstream's binaries, upstream's defaults and version strings).

Each build is upstream's own recipe (its Makefile, build script), as far as the module proxy allows:
- containerd: `containerd`, `ctr` static with cgo (tags urfave_cli_no_docs osusergo netgo static_build),
  the shim static without cgo; `version.Version` and `.Package` as upstream's Makefile sets them.
  Modules whose go.mod carries replace or exclude directives (1.6, 1.7) refuse `go install pkg@v`: they
  build in a small wrapper module that requires the release and repeats those directives.
- runc: static-pie with seccomp (Debian's libseccomp, where upstream bundles a newer one); each containerd
  family's tarball comes with the runc of `RUNC` (the one its own release names, as far as the proxy has it).
- CNI plugins: static, without cgo, with `buildversion.BuildVersion`.
- crictl (cri-tools): static, without cgo, with `version.Version` (the tag less its "v"), for the tests.
- kubelet (k8s.io/kubernetes): static, without cgo, on request only (`kubelet()`; nothing calls it by default:
  its first build takes about 20 minutes on 2 shared cores). Its go.mod replaces the staging modules
  (k8s.io/api, ...) by local paths: it builds in a wrapper module that pins each at v0.<minor>.<patch>.
The module proxy does not say which commit a tag names, so the revision (`version.Revision`, runc's
`gitCommit`) is the module's go.sum hash (`gomod-h1:...`): it names the exact source that was built.

Everything is built once per version and architecture (amd64: the build host's) into the cache, under a
lock; a failed build says what failed and is never replaced by another build.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from devtools import release_files
from imagebuild.errors import ImagebuildError
from imagebuild.paths import cache_dir
from imagebuild.progress import step
from imagebuild.run import locked, run

#: The runc each containerd family's release files come with: family -> (the runc that the family's release
#: in devtools.families names in its module's `script/setup/runc-version`, the runc built for it). The runc
#: built is the one named where the proxy serves it as a release of RUNC_MINORS, else the newest patch of
#: that minor there, else (a minor before them) the oldest minor's newest (`runc_for`; of these minors the
#: proxy serves v1.4.0-v1.4.4 and v1.5.0-v1.5.3). Read 2026-12-07 from 1.6.20, 1.7.24, 2.0.14, 2.1.9,
#: 2.2.10, 2.3.7, 2.4.2; tests/test_upstream.py checks every row against upstream's file and the proxy.
RUNC: Mapping[str, tuple[str, str]] = MappingProxyType({
    "1.6": ("v1.1.5", "1.4.4"), "1.7": ("v1.2.2", "1.4.4"), "2.0": ("v1.3.6", "1.4.4"), "2.1": ("v1.3.6", "1.4.4"),
    "2.2": ("v1.3.6", "1.4.4"), "2.3": ("v1.5.2", "1.5.2"), "2.4": ("v1.5.2", "1.5.2"),
})
#: The runc minors imagebuild builds (the issue's "runc 1.4/1.5"; the proxy serves older ones too, unused).
RUNC_MINORS = ("1.4", "1.5")
CNI_VERSION = "1.10.0"
#: cri-tools' crictl: the proxy serves v1.34.0 and v1.37.0; 1.37 speaks the CRI of the newest families
#: (containerd 2.4.2 requires k8s.io/cri-api v0.37.0, 2.3.7 v0.36.3) and CRI v1 to every older one.
CRICTL_VERSION = "1.37.0"
#: Kubernetes' newest release on the proxy (v1.34.4, v1.35.4, v1.36.3, v1.37.2 are the newest patches there).
KUBELET_VERSION = "1.37.2"
CNI_PLUGINS = ("main/bridge", "main/host-device", "main/ipvlan", "main/loopback", "main/macvlan", "main/ptp",
               "main/vlan", "main/dummy", "main/tap", "ipam/dhcp", "ipam/host-local", "ipam/static",
               "meta/bandwidth", "meta/firewall", "meta/portmap", "meta/sbr", "meta/tuning", "meta/vrf")
_STAMP = ".built.json"
_TIMEOUT = 1800
#: Called with *what* on every `_once` call, built or found in the cache (tests/conftest.py: a fast test
#: that uses a Go-built piece must say so with the `builds` marker, so a first run orders it last).
watchers: list[Callable[[str], None]] = []


def _go_env(cgo: bool) -> dict[str, str]:
    """The Go toolchain's environment: its caches under imagebuild's, the local toolchain only."""
    if shutil.which("go") is None:
        raise ImagebuildError("building upstream releases needs Go (the `go` command) and the Go module proxy")
    return {**os.environ, "GOPATH": str(cache_dir("go", "path")), "GOMODCACHE": str(cache_dir("go", "mod")),
            "GOCACHE": str(cache_dir("go", "build")), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local",
            "CGO_ENABLED": "1" if cgo else "0", "GOARCH": "amd64", "GOOS": "linux"}


#: How every Go command runs: yielding the CPUs to everything else, a boot's QEMU above all. With the kernel's
#: autogroups a process's nice ranks it only inside its session, and run() gives each command a session of its
#: own: so the command's session (its autogroup) gets nice 19 too, where the kernel has autogroups.
LOWEST_PRIORITY = ("nice", "-n", "19", "sh", "-c", 'echo 19 > /proc/self/autogroup 2>/dev/null; exec "$@"', "sh")


def _go(args: list[str], what: str, cwd: Path | None = None, cgo: bool = False, env: dict | None = None) -> str:
    return run([*LOWEST_PRIORITY, "go", *args], what=what, cwd=cwd, env=_go_env(cgo) | (env or {}),
               timeout=_TIMEOUT, long_step=True).stdout


def module_info(module: str, version: str) -> dict:
    """`go mod download -json MODULE@vVERSION`: where the proxy's go.mod and source are, and the go.sum hash."""
    info = json.loads(_go(["mod", "download", "-json", f"{module}@v{version}"], f"go mod download {module}@v{version}",
                          cwd=cache_dir("go")))
    if info.get("Error"):
        raise ImagebuildError(f"the Go module proxy has no {module}@v{version}: {info['Error']}")
    return info


def module_versions(module: str) -> list[str]:
    """`go list -m -versions MODULE`: the versions the Go module proxy lists, oldest first."""
    return _go(["list", "-m", "-versions", module], f"go list -m -versions {module}", cwd=cache_dir("go")).split()[1:]


def directives(go_mod: str) -> str:
    """The replace and exclude directives of *go_mod* (blocks and single lines), less replacements by a
    local path, which mean nothing outside the module's own tree."""
    out, block = [], None
    for line in go_mod.splitlines():
        bare = line.split("//", 1)[0].rstrip()
        if block:
            if bare.strip() == ")":
                block = None
            elif bare.strip() and not re.search(r"=>\s*\.{1,2}/", bare):
                out.append(f"{block} {bare.strip()}")
            continue
        match = re.match(r"^(replace|exclude)\s*(\(|\S.*)$", bare)
        if match and match.group(2) == "(":
            block = match.group(1)
        elif match and not re.search(r"=>\s*\.{1,2}/", bare):
            out.append(bare.strip())
    return "\n".join(out)


def wrapper_module(tmp: Path, name: str, module: str, version: str, info: dict, packages: list[str]) -> Path:
    """`<tmp>/src`: a module imagebuild.local/*name* requiring *module* at *version* with the replace and exclude
    directives of its go.mod (*info*: module_info's), *packages* fetched at *version*: build them there. (A
    module with such directives refuses `go install pkg@v`.)"""
    wrapper = tmp / "src"
    wrapper.mkdir()
    go_mod = f"module imagebuild.local/{name}\n\ngo 1.22\n\nrequire {module} v{version}\n\n"
    (wrapper / "go.mod").write_text(go_mod + directives(Path(info["GoMod"]).read_text()) + "\n")
    _go(["get", *(f"{package}@v{version}" for package in packages)], f"go get {name} v{version}", cwd=wrapper)
    return wrapper


def _built(target: Path) -> dict | None:
    try:
        return json.loads((target / _STAMP).read_text())
    except (OSError, ValueError):
        return None


def _once(target: Path, what: str, build) -> dict:
    """Run *build(tmp_dir) -> facts* once for *target* (a cache directory), under a lock; the result is
    swapped in whole, with its stamp, so an interrupted build is redone."""
    for watcher in watchers:
        watcher(what)
    done = _built(target)
    if done:
        return done
    with locked(target.with_name(f".{target.name}.lock"), waiting=f"waiting for another build of {what}"):
        done = _built(target)
        if done:
            return done
        step(f"building {what} from the Go module proxy (once; cached)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            facts = build(tmp)
            (tmp / _STAMP).write_text(json.dumps(facts, indent=2) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return facts


def containerd(version: str) -> Path:
    """bin/containerd, bin/ctr, bin/containerd-shim-runc-v2 of containerd *version* (e.g. 1.7.36)."""
    major = int(version.split(".")[0])
    module = "github.com/containerd/containerd" + ("/v2" if major >= 2 else "")
    target = cache_dir("upstream") / f"containerd-{version}-linux-amd64"

    def build(tmp: Path) -> dict:
        info = module_info(module, version)
        revision = "gomod-" + info["Sum"]
        cmds = [f"{module}/cmd/{name}" for name in release_files.TARBALL_BINARIES]
        wrapper = wrapper_module(tmp, "containerd", module, version, info, cmds)
        ldflags = (f"-X {module}/version.Version=v{version} -X {module}/version.Revision={revision} "
                   f"-X {module}/version.Package={module} -s -w -extldflags -static")
        tags = [] if version.startswith("1.6.") else ["urfave_cli_no_docs"]
        (tmp / "bin").mkdir()
        for name, cmd in zip(release_files.TARBALL_BINARIES, cmds, strict=True):
            shim = name.startswith("containerd-shim")
            build_tags = tags + (["no_grpc"] if shim and major >= 2 else []) + \
                ([] if shim else ["osusergo", "netgo", "static_build"])
            _go(["build", "-trimpath", "-tags", " ".join(build_tags), "-ldflags", ldflags, "-o",
                 str(tmp / "bin" / name), cmd], f"go build {name} v{version}", cwd=wrapper, cgo=not shim)
        shutil.rmtree(wrapper)
        return {"module": module, "version": version, "revision": revision}

    _once(target, f"containerd {version}", build)
    return target


def _release(version: str) -> tuple[int, ...] | None:
    """(major, minor, patch) of a plain release "v1.5.2" / "1.5.2"; None for a pre-release or anything else."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.(\d+)", version.strip())
    return tuple(int(n) for n in match.groups()) if match else None


def runc_for(named: str, served: Sequence[str]) -> str:
    """The runc to build for a containerd release whose `script/setup/runc-version` says *named*, given the
    runc versions the module proxy *served*: *named* where it is a release of RUNC_MINORS there, else the
    newest patch of its minor there, else (an older minor) the oldest of RUNC_MINORS' newest patch."""
    want = _release(named)
    if want is None:
        raise ImagebuildError(f"runc-version {named!r} is not a runc release (vMAJOR.MINOR.PATCH)")
    minors = [tuple(int(n) for n in m.split(".")) for m in RUNC_MINORS]
    releases = sorted({r for r in map(_release, served) if r is not None and r[:2] in minors})
    if want[:2] > minors[-1]:
        raise ImagebuildError(f"containerd names runc {named}, newer than the runc minors imagebuild builds "
                              f"({', '.join(RUNC_MINORS)}): add its minor to upstream.RUNC_MINORS")
    minor = want[:2] if want[:2] in minors else minors[0]
    if want in releases:
        return ".".join(map(str, want))
    patches = [r for r in releases if r[:2] == minor]
    if not patches:
        raise ImagebuildError(f"the Go module proxy serves no runc {'.'.join(map(str, minor))}.x "
                              f"(served: {', '.join(served) or 'nothing'})")
    return ".".join(map(str, patches[-1]))


def runc_version(containerd_version: str) -> str:
    """The runc the release files of containerd *containerd_version* come with: its family's row of RUNC."""
    family = ".".join(containerd_version.split(".")[:2])
    if family not in RUNC:
        raise ImagebuildError(f"no runc is chosen for containerd {containerd_version} (family {family}); "
                              f"upstream.RUNC knows {', '.join(RUNC)}")
    return RUNC[family][1]


def go_install(name: str, module: str, version: str, args: Callable[[str], list[str]], *, cgo: bool = False) -> Path:
    """`go install` of *module* at *version* into `<cache>/upstream/<name>-<version>-linux-amd64` (once, under
    its lock): *args(revision)* are the arguments after `install` (flags, then the packages at their version);
    the revision is the module's go.sum hash (`gomod-h1:...`)."""
    target = cache_dir("upstream") / f"{name}-{version}-linux-amd64"

    def build(tmp: Path) -> dict:
        revision = "gomod-" + module_info(module, version)["Sum"]
        _go(["install", *args(revision)], f"go install {name} v{version}", cgo=cgo, env={"GOBIN": str(tmp)})
        return {"module": module, "version": version, "revision": revision}

    _once(target, f"{name} {version}", build)
    return target


def runc(version: str) -> Path:
    """A static-pie runc *version* with seccomp: `<dir>/runc`."""
    module = "github.com/opencontainers/runc"
    return go_install("runc", module, version, lambda revision: [
        "-trimpath", "-buildmode=pie", "-tags", "seccomp urfave_cli_no_docs netgo osusergo", "-ldflags",
        f"-X main.gitCommit={revision} -w -s -buildid= -linkmode external -extldflags -static-pie",
        f"{module}@v{version}"], cgo=True)


def cni_plugins(version: str = CNI_VERSION) -> Path:
    """The CNI plugins of release *version*, static, in one directory (as the release tarball holds them)."""
    module = "github.com/containernetworking/plugins"
    return go_install("cni-plugins", module, version, lambda _: [
        "-ldflags", f"-extldflags -static -X {module}/pkg/utils/buildversion.BuildVersion=v{version}",
        *(f"{module}/plugins/{p}@v{version}" for p in CNI_PLUGINS)])


def crictl(version: str = CRICTL_VERSION) -> Path:
    """A static crictl of cri-tools *version*: `<dir>/crictl`."""
    module = "sigs.k8s.io/cri-tools"
    return go_install("crictl", module, version, lambda _: [
        "-trimpath", "-ldflags", f"-X {module}/pkg/version.Version={version} -s -w", f"{module}/cmd/crictl@v{version}"])


def kubelet(version: str = KUBELET_VERSION) -> Path:
    """A static kubelet of Kubernetes *version*: `<dir>/kubelet` (docs/contributing.md: running it standalone)."""
    target = cache_dir("upstream") / f"kubelet-{version}-linux-amd64"
    module = "k8s.io/kubernetes"

    def build(tmp: Path) -> dict:
        info = module_info(module, version)
        revision = "gomod-" + info["Sum"]
        go_mod = Path(info["GoMod"]).read_text()
        staging = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", go_mod, flags=re.M)
        if not staging:
            raise ImagebuildError(f"{module}@v{version}'s go.mod replaces no staging module: not a release to wrap")
        pin = "v0." + version.split(".", 1)[1]
        wrapper = tmp / "src"
        wrapper.mkdir()
        head = "\n".join(re.findall(r"^(?:go|godebug) .*$", go_mod, flags=re.M))
        (wrapper / "go.mod").write_text(f"module imagebuild.local/kubelet\n\n{head}\n\nrequire {module} v{version}\n\n"
                                        "replace (\n" + "".join(f"\t{m} => {m} {pin}\n" for m in staging) + ")\n")
        _go(["get", f"{module}/cmd/kubelet@v{version}"], f"go get kubelet v{version}", cwd=wrapper)
        var, minor = "k8s.io/component-base/version", version.split(".")[1]
        ldflags = (f"-s -w -X {var}.gitVersion=v{version} -X {var}.gitMajor=1 -X {var}.gitMinor={minor} "
                   f"-X {var}.gitCommit={revision} -X {var}.gitTreeState=clean")
        _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp / "kubelet"), f"{module}/cmd/kubelet"],
            f"go build kubelet v{version}", cwd=wrapper)
        shutil.rmtree(wrapper)
        return {"module": module, "version": version, "revision": revision, "staging": pin}

    _once(target, f"kubelet {version}", build)
    return target


def release_tarballs(containerd_version: str, out_dir: Path | str, compresslevel: int = 6) -> dict[str, dict]:
    """`containerd-<v>-linux-amd64.tar.gz` (bin/containerd, bin/containerd-shim-runc-v2, bin/ctr, as the
    release tarball lays them out), `runc.amd64` and their `.sha256sum` files in *out_dir*, built from
    upstream, runc that of the family's row of RUNC. Returns {"containerd": {"path", "sha256", "version"},
    "runc": {...}}."""
    runc_release = runc_version(containerd_version)
    built = containerd(containerd_version) / "bin"
    return release_files.containerd_and_runc(
        out_dir, "amd64", containerd_version, {name: built / name for name in release_files.TARBALL_BINARIES},
        runc_release, runc(runc_release) / "runc", compresslevel)


def cni_tarball(out_dir: Path | str, compresslevel: int = 6) -> dict:
    """`cni-plugins-linux-amd64-v<v>.tgz` (plugins at `./<name>`, as the release lays them out) and its
    `.sha256` in *out_dir*. Returns {"path", "sha256", "version", "plugins"}."""
    return release_files.cni_plugins_tarball(out_dir, "amd64", CNI_VERSION, cni_plugins(), compresslevel)
