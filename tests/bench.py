"""`make bench`: imagebuild's performance figures, measured side by side in one run.

    python -m tests.bench [--quick] [--runs N] [--out BENCHMARKS.md] [--history CSV] [--keep]

    python -m tests.bench --arch amd64|arm64   (only one architecture's QEMU rows)

--quick measures only what needs no QEMU (render, --help, user-data size). The full run also
bakes the default spec and boots it, and boots the user-data path (tarball and package installs)
the same way, so the golden/user-data ratio compares like with like. Then arm64 beside amd64: one
spec (Debian 13, containerd 1.7: tests/e2e/test_arm64.py's) baked and verified for each
architecture in the same run, so arm64/amd64 is the architecture's cost alone. The arm64 base image
is never built here (~20-30 min under qemu-user): without it cached those rows say how to build it.
Figures are wall seconds, each the median of --runs runs where a run is cheap. --history appends every
row, dated, to a CSV file (`make bench`: docs/benchmarks-history.csv).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EC2_LIMIT = 16 * 1024


def timed(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cli_figures(runs: int, work: Path) -> list[tuple[str, str, str]]:
    exe = [sys.executable, "-m", "imagebuild"]
    out = work / "render"
    render_s = timed(exe + ["render", "-o", str(out)], runs)
    helps = timed(exe + ["--help"], runs)
    from imagebuild import render
    from imagebuild.spec import load

    raw = render.cloud_config(load()).encode()
    shipped = len(render.user_data(load()))
    packed = len(gzip.compress(raw, 9))
    return [
        ("imagebuild render (default spec)", f"{render_s:.3f} s", "goal <= 0.3 s"),
        ("imagebuild --help", f"{helps:.3f} s", "goal <= 0.2 s"),
        ("user-data, raw", f"{len(raw)} B", f"{len(raw) / EC2_LIMIT:.0%} of EC2's 16 KB"),
        ("user-data, gzipped", f"{packed} B", f"{packed / EC2_LIMIT:.0%} of EC2's 16 KB"),
        ("user-data as rendered", f"{shipped} B", "raw when it fits 16 KB, else gzipped"),
    ]


# CRI ready: the boot's first containerd start finished booting with CRI serving (see
# imagebuild/guest/cri_checks.py booted_at), confirmed by CRI answering RuntimeReady.
TIMINGS = "{kernel_s} / {containerd_active_s} / {cri_ready_s} / {check_done_s} s"
#: The verify timings, in TIMINGS' order, that the arm64 / amd64 ratio row divides.
TIMING_KEYS = ("kernel_s", "containerd_active_s", "cri_ready_s", "check_done_s")
#: arm64 beside amd64: tests/e2e/test_arm64.py's golden (Debian 13, containerd 1.7) and its amd64 twin.
ARCH_OS, ARCH_FAMILY = "debian-13", "1.7"


def base_image(spec) -> tuple[Path, float]:
    """(*spec*'s built-in base image, seconds to get it): built if missing (minutes for amd64)."""
    from imagebuild.build import baseimage

    start = time.perf_counter()
    base = baseimage.build(flavor=baseimage.Flavor.of(spec.image.os, spec.image.architecture))
    return base, time.perf_counter() - start


def bake_and_verify(spec, base: Path, work: Path) -> dict:
    """Bake *spec* (its downloads served by golden.local_mirror) on *base* into *work*, then verify the
    image (NoCloud): what every bake row and verify row of the bench measures. Wall seconds of each."""
    from imagebuild.build.bake import bake
    from imagebuild.verify.boot import verify_image

    start = time.perf_counter()
    image = bake(spec, work / "output", base=str(base))
    bake_s = time.perf_counter() - start
    start = time.perf_counter()
    report = verify_image(image, spec, log_dir=str(work / "verify"))
    return {"image": image, "bake_s": bake_s, "verify_s": time.perf_counter() - start, "report": report,
            "manifest": json.loads((image.parent / "manifest.json").read_text())}


def steps(manifest: dict) -> str:
    """The bake's steps in whole seconds, from its manifest."""
    return ", ".join(f"{k} {v:.0f}" for k, v in manifest["durations_s"].items() if k != "total")


def verdict(report: dict) -> str:
    return "passed" if report["passed"] else "FAILED"


def qemu_figures(work: Path) -> list[tuple[str, str, str]]:
    from devtools import debian_artifacts
    from devtools.golden import local_mirror, served_dir
    from imagebuild.build.bake import bake
    from imagebuild.spec import load, parse
    from imagebuild.verify.boot import verify_image, verify_user_data

    rows = []
    default = load()
    base, base_s = base_image(default)
    rows.append(("base image (cached after the first build)", f"{base_s:.1f} s", str(base.name)))
    with local_mirror(default) as spec:
        served = served_dir(spec)
        install = spec.containerd.install
        payload = sum((served / art.filename).stat().st_size for art in (install.tarball, install.runc))
        run = bake_and_verify(spec, base, work / "golden")
        image, golden = run["image"], run["report"]
        rows.append(("bake (spec -> qcow2)", f"{run['bake_s']:.0f} s", steps(run["manifest"])))
        verify_s = run["verify_s"]
        rows.append(("spec -> verified qcow2 (base cached)", f"{run['bake_s'] + verify_s:.0f} s", "goal <= 360 s"))
        before_image = bake(spec, work / "output-no-discard", base=str(base), packer_vars={"disk_discard": "ignore"})
        rows.append(("verify golden: QEMU -> kernel / containerd active / CRI ready / done",
                     TIMINGS.format(**golden["timings"]), verdict(golden)))
        start = time.perf_counter()
        ec2 = verify_image(image, spec, log_dir=str(work / "verify-golden-ec2"), platform="ec2")
        ec2_s = time.perf_counter() - start
        rows.append(("verify golden as EC2 (IMDSv2): QEMU -> kernel / containerd active / CRI ready / done",
                     TIMINGS.format(**ec2["timings"]),
                     f"{verdict(ec2)}; wall {ec2_s:.0f} s vs NoCloud {verify_s:.0f} s"))
        tarball = verify_user_data(spec, base=str(base), log_dir=str(work / "verify-ud-tarball"))
        rows.append(("verify user-data (tarball): QEMU -> containerd active",
                     f"{tarball['timings']['containerd_active_s']} s", verdict(tarball)))
        versions = debian_artifacts.fetched_versions("1.6")
        doc = yaml.safe_load(yaml.safe_dump(spec.document))
        doc["containerd"]["install"]["method"] = "package"
        doc["containerd"]["install"]["package"]["version"] = versions["containerd"]
        doc["unit"]["exec_start"] = None
        package = verify_user_data(parse(yaml.safe_dump(doc)), base=str(base),
                                   log_dir=str(work / "verify-ud-package"))
        rows.append(("verify user-data (package, apt in guest): QEMU -> containerd active",
                     f"{package['timings']['containerd_active_s']} s", verdict(package)))
    g, t, p = (r["timings"]["containerd_active_s"] for r in (golden, tarball, package))
    rows.append(("golden / user-data time to containerd active", f"{g / t:.2f} (tarball), {g / p:.2f} (package)",
                 "goal <= 0.5"))
    for label, path in (("before: disk_discard=ignore", before_image), ("after: discard + fstrim", image)):
        overhead = path.stat().st_size - base.stat().st_size
        rows.append((f"image overhead vs containerd+runc payload ({label})",
                     f"{overhead / 2**20:.0f} MiB / {payload / 2**20:.0f} MiB = {overhead / payload:.2f}x",
                     "goal <= 1.2x"))
    return rows


def arm64_missing() -> str | None:
    """Why the arm64 rows cannot be measured here (its base image is not cached), or None."""
    from imagebuild.build import baseimage

    if baseimage.cached_image(flavor=baseimage.Flavor.of(ARCH_OS, "arm64")) is not None:
        return None
    return (f"the {ARCH_OS} arm64 base image is not cached; build it first (~20-30 min: mmdebstrap under "
            f"qemu-user, binfmt_misc needed, see docs/platforms.md): "
            f"imagebuild base-image --os {ARCH_OS} --architecture arm64")


def ratio(arm: float | None, amd: float | None) -> str:
    return f"{arm / amd:.2f}" if arm and amd else "n/a"


def arch_figures(work: Path) -> list[tuple[str, str, str]]:
    """arm64 beside amd64: the same spec but image.architecture, baked and verified in this run."""
    from devtools.golden import local_mirror
    from tests.support import default_spec_on

    missing = arm64_missing()
    if missing:
        return [(f"arm64 ({ARCH_OS}): bake, verify, arm64 / amd64", "not measured", missing)]
    runs, rows = {}, []
    for arch in ("amd64", "arm64"):
        with local_mirror(default_spec_on(ARCH_OS, arch, ARCH_FAMILY)) as spec:
            base, base_s = base_image(spec)
            rows.append((f"base image, {ARCH_OS} {arch} (cached after the first build)", f"{base_s:.1f} s",
                         base.name))
            runs[arch] = bake_and_verify(spec, base, work / f"{ARCH_OS}-{arch}")
    what = f"{ARCH_OS}, containerd {ARCH_FAMILY}"
    for arch, run in runs.items():
        manifest = run["manifest"]
        rows.append((f"bake {arch} ({what}), built under {manifest['build_firmware']}, {manifest['accelerator']}",
                     f"{run['bake_s']:.0f} s", steps(manifest)))
    for arch, run in runs.items():
        report = run["report"]
        rows.append((f"verify {arch} under {report['firmware']}: QEMU -> kernel / containerd active / CRI ready / done",
                     TIMINGS.format(**report["timings"]), verdict(report)))
    arm, amd = runs["arm64"], runs["amd64"]
    rows.append(("arm64 / amd64: bake", ratio(arm["bake_s"], amd["bake_s"]),
                 "the same spec but image.architecture, in this run"))
    rows.append(("arm64 / amd64: verify kernel / containerd active / CRI ready / done",
                 " / ".join(ratio(arm["report"]["timings"][k], amd["report"]["timings"][k]) for k in TIMING_KEYS),
                 f"arm64 under {arm['manifest']['accelerator']}, amd64 under {amd['manifest']['accelerator']}"))
    return rows


def table(rows: list[tuple[str, str, str]]) -> str:
    head = ("measure", "figure", "note")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return "\n".join(lines)


HISTORY_COLUMNS = ("date", "source", "measure", "figure", "note")


def append_history(path: Path, rows: list[tuple[str, str, str]], source: str) -> None:
    """Append *rows*, dated today and marked with *source* (how they were measured), to the CSV at *path*."""
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        if new:
            writer.writerow(HISTORY_COLUMNS)
        writer.writerows((time.strftime("%Y-%m-%d"), source, *row) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only what needs no QEMU")
    parser.add_argument("--runs", type=int, default=7, help="runs per cheap figure (median)")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--history", type=Path, help="also append the rows, dated, to this CSV file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (images, serial logs)")
    parser.add_argument("--arch", choices=("both", "amd64", "arm64"), default="both",
                        help="QEMU rows: the amd64 ones, the arm64 / amd64 pair, or both (default)")
    args = parser.parse_args(argv)
    if not args.quick and args.arch != "amd64" and (missing := arm64_missing()):
        # Said before the amd64 rows' ~25 minutes, not only in the table at the end.
        print(f"bench: no arm64 rows this run: {missing} (or --arch amd64 to leave them out)", file=sys.stderr)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="imagebuild-bench-"))
    try:
        rows = cli_figures(args.runs, work)
        if not args.quick and args.arch != "arm64":
            rows += qemu_figures(work)
        if not args.quick and args.arch != "amd64":
            rows += arch_figures(work)
    finally:  # images and serial logs: ~600 MiB a full run
        if args.keep:
            print(f"bench: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    # Wall times are only comparable on a quiet machine: say how busy this one was.
    rows.append(("load average (1 min) at start / end", f"{load_before[0]:.1f} / {os.getloadavg()[0]:.1f}",
                 f"{os.cpu_count()} CPUs: a load above that inflates every wall time"))
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(f"Measured {time.strftime('%Y-%m-%d')} with `make bench` on a 2-core TCG machine.\n\n"
                                  + text + "\n")
    if args.history:
        how = "make bench" + " --quick" * args.quick + f" --arch {args.arch}" * (args.arch != "both")
        append_history(args.history, rows, how)
    return 0


if __name__ == "__main__":
    sys.exit(main())
