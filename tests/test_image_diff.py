"""`imagebuild diff OLD NEW` (imagebuild/build/image_diff.py) on two bakes' records, made from the inventory a real
bake captured (tests/records): what changed, as text and JSON, with diff(1)'s exit status."""
from __future__ import annotations

import json

from imagebuild.verify import boot as verify
from tests import records
from tests.support import run_main


def two_images(tmp_path, change=None, **new_manifest):
    """OLD from the real bake's inventory, NEW from it after *change* (a function of the inventory)."""
    records.baked(tmp_path / "old", image=b"old image", build_time="2026-12-01T10:00:00Z")
    document = records.inventory()
    if change:
        change(document)
    records.baked(tmp_path / "new", image=b"new image", build_time="2026-12-07T14:52:00Z", document=document,
                  **new_manifest)
    return tmp_path / "old", tmp_path / "new"


def with_verify_report(image_dir, timings: dict) -> None:
    """verify.json beside the image, written by verify's own writer."""
    manifest = json.loads((image_dir / "manifest.json").read_text())
    report = {"passed": True, "failed": [], "checks": [{"check": "service.active", "ok": True}], "summary": {},
              "timings": timings, "serial_log": "serial.log", "platform": "nocloud", "firmware": "uefi"}
    verify.write_image_report(image_dir, report, image_dir / manifest["image"], manifest["sha256"],
                              manifest["spec_hash"])


def test_two_images_of_the_same_content_differ_in_nothing(tmp_path):
    old, new = two_images(tmp_path)
    code, out, err = run_main(["diff", str(old), str(new / "containerd-golden.qcow2")])   # a directory or its image
    assert (code, err) == (0, "")
    assert "packages: unchanged" in out and "containerd config dump: unchanged" in out and "kernel: unchanged" in out
    assert out.endswith("differences: none\n")


def change_everything(document: dict) -> None:
    packages = document["dpkg"]["packages"]
    document["dpkg"]["packages"] = [p for p in packages if p["name"] != "socat"] + [
        {"name": "jq", "version": "1.6-2.1", "architecture": "amd64", "source": "jq", "source_version": "1.6-2.1"}]
    next(p for p in packages if p["name"] == "libc6")["version"] = "2.36-9+deb12u15"
    containerd = next(b for b in document["binaries"] if b["name"] == "containerd")
    containerd.update(version="v1.6.21", sha256="ee" * 32)
    document["containerd"]["config_dump"] = document["containerd"]["config_dump"].replace(
        "oom_score = -999", "oom_score = -500")
    unit = next(f for f in document["imagebuild_files"] if f["path"] == "/etc/systemd/system/containerd.service")
    unit.update(text=unit["text"].replace("LimitNOFILE=infinity", "LimitNOFILE=1048576"), sha256="aa" * 32)
    containerd_unit = document["containerd"]["unit"]
    document["containerd"]["unit"] = containerd_unit.replace("LimitNOFILE=infinity", "LimitNOFILE=1048576")
    document["unit_files"]["apt-daily.timer"] = "enabled"
    document["containerd"]["images"] = [
        {"namespace": "k8s.io", "name": "localhost/imagebuild/pause:catatonit", "digest": "sha256:" + "ab" * 32,
         "media_type": "application/vnd.oci.image.manifest.v1+json", "labels": {}, "pinned": True}]
    document["kernel"]["release"] = "6.1.0-58-cloud-amd64"


def test_every_kind_of_change_is_reported(tmp_path):
    old, new = two_images(tmp_path, change_everything)
    code, out, err = run_main(["diff", str(old), str(new)])
    assert code == 1 and err == ""
    assert "packages: 1 added, 1 removed, 1 changed" in out
    assert "  + jq:amd64 1.6-2.1" in out and "  - socat:amd64 1.7.4.4-2" in out
    assert "  ~ libc6:amd64 2.36-9+deb12u14 -> 2.36-9+deb12u15" in out
    assert "  ~ /usr/local/bin/containerd v1.6.20 sha256:767259703" in out and "-> v1.6.21 sha256:eeeeeeeeeeee" in out
    assert "containerd config dump: changed" in out and "  -oom_score = -999" in out and "  +oom_score = -500" in out
    assert "units and drop-ins imagebuild installed: 1 changed" in out
    assert "  --- old/etc/systemd/system/containerd.service" in out and "  +LimitNOFILE=1048576" in out
    assert "systemctl cat containerd: changed" in out
    assert "unit file states: 1 changed" in out and "  ~ apt-daily.timer masked -> enabled" in out
    assert "images in containerd's store: 1 added" in out
    assert f"  + k8s.io/localhost/imagebuild/pause:catatonit sha256:{'ab' * 32} (pinned)" in out
    assert "kernel: release 6.1.0-57-cloud-amd64 -> 6.1.0-58-cloud-amd64" in out
    assert out.endswith("differences: packages, binaries, containerd_config, units, images, kernel\n")

    code, out, _ = run_main(["diff", "--json", str(old), str(new)])
    result = json.loads(out)
    assert code == 1 and result["changed"] == ["packages", "binaries", "containerd_config", "units", "images", "kernel"]
    assert result["packages"]["removed"] == [["socat:amd64", "1.7.4.4-2"]]
    assert result["images"]["added"][0][1] == {"digest": "sha256:" + "ab" * 32, "pinned": True}
    assert [result[side]["build_time"] for side in ("old", "new")] == ["2026-12-01T10:00:00Z", "2026-12-07T14:52:00Z"]


def test_a_missing_package_alone_is_a_difference(tmp_path):
    def drop(document):
        document["dpkg"]["packages"] = [p for p in document["dpkg"]["packages"] if p["name"] != "conntrack"]

    old, new = two_images(tmp_path, drop)
    code, out, _ = run_main(["diff", str(old), str(new)])
    assert code == 1 and "packages: 1 removed\n  - conntrack:amd64 1:1.4.7-1+b2\n" in out
    assert out.endswith("differences: packages\n")
    code, out, _ = run_main(["diff", str(new), str(old)])
    assert code == 1 and "  + conntrack:amd64 1:1.4.7-1+b2\n" in out


def test_verify_timings_are_shown_and_never_count_as_a_difference(tmp_path):
    old, new = two_images(tmp_path)
    with_verify_report(old, {"kernel_s": 3.9, "containerd_active_s": 37.0, "check_done_s": 54.0, "cri_ready_s": None})
    code, out, _ = run_main(["diff", str(old), str(new)])
    assert code == 0 and "verify timings: no verify report beside both images" in out
    with_verify_report(new, {"kernel_s": 4.2, "containerd_active_s": 35.5, "check_done_s": 60.0, "cri_ready_s": None})
    code, out, _ = run_main(["diff", str(old), str(new)])
    assert code == 0
    assert ("verify timings (verify.json): check_done_s 54.0 -> 60.0 (+6.0), containerd_active_s 37.0 -> 35.5 (-1.5), "
            "cri_ready_s None -> None, kernel_s 3.9 -> 4.2 (+0.3)") in out


def test_records_that_changed_after_the_bake_or_are_missing_are_trouble(tmp_path):
    old, new = two_images(tmp_path)
    inventory = new / "containerd-golden.inventory.json"
    inventory.write_text(inventory.read_text().replace('"socat"', '"socat2"'))
    code, out, err = run_main(["diff", str(old), str(new)])
    assert (code, out) == (2, "") and "the inventory record" in err and "it changed after the bake" in err
    code, out, err = run_main(["diff", str(old), str(tmp_path / "nowhere")])
    assert (code, out) == (2, "") and "holds no manifest.json" in err
