"""`make bench` without QEMU: what it says and leaves out when the arm64 base image is not cached, that
--quick stays free of QEMU and of arm64, and what --history appends. (Its QEMU rows are measured by running
it: see docs/benchmarks.md.)"""
from __future__ import annotations

import csv
import time

import pytest

from tests import bench

BUILD_ARM64 = "imagebuild base-image --os debian-13 --architecture arm64"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache holding no base image, so no arm64 base image is cached."""
    monkeypatch.setenv("IMAGEBUILD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_arm64_rows_without_its_base_image_say_how_to_build_it_and_build_nothing(empty_cache, tmp_path):
    rows = bench.arch_figures(tmp_path / "work")
    assert rows == [("arm64 (debian-13): bake, verify, arm64 / amd64", "not measured", bench.arm64_missing())]
    assert BUILD_ARM64 in rows[0][2] and "not cached" in rows[0][2]
    assert not list((empty_cache / "base").rglob("*.qcow2")) and not (tmp_path / "work").exists()


def test_bench_says_before_measuring_that_arm64_rows_are_left_out(empty_cache, capsys):
    assert bench.main(["--arch", "arm64", "--runs", "1"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("bench: no arm64 rows this run: ") and BUILD_ARM64 in err and "--arch amd64" in err
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[-2:]] == [
        "arm64 (debian-13): bake, verify, arm64 / amd64", "load average (1 min) at start / end"]
    assert "not measured" in rows[-2] and not any("bake (spec -> qcow2)" in r for r in rows)


def test_quick_measures_no_qemu_and_says_nothing_of_arm64(empty_cache, capsys):
    assert bench.main(["--quick", "--runs", "1"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "arm64" not in out and "bake" not in out and "verify" not in out
    assert "imagebuild render (default spec)" in out and "load average" in out


def test_ratio_is_arm64_over_amd64_and_na_without_a_figure():
    assert bench.ratio(273.0, 210.0) == "1.30"
    assert bench.ratio(None, 84.1) == bench.ratio(84.1, None) == "n/a"


def test_history_appends_every_row_dated_under_one_header(empty_cache, tmp_path, capsys):
    history = tmp_path / "history.csv"
    assert bench.main(["--quick", "--runs", "1", "--history", str(history)]) == 0
    assert bench.main(["--quick", "--runs", "1", "--history", str(history)]) == 0
    printed = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = list(csv.reader(history.read_text(encoding="utf-8").splitlines()))
    assert rows[0] == list(bench.HISTORY_COLUMNS) and rows.count(rows[0]) == 1
    measures = [m for m in printed if m != "measure"]
    assert [r[2] for r in rows[1:]] == measures and len(measures) == 2 * 6
    assert {(r[0], r[1]) for r in rows[1:]} == {(time.strftime("%Y-%m-%d"), "make bench --quick")}
