"""Bake real images with Packer's qemu builder and prove them by booting in QEMU."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest
import yaml

from imagebuild import render
from imagebuild.build import base_disk, lab_ledger
from imagebuild.cli import main
from imagebuild.digest import sha256_file
from imagebuild.errors import ImagebuildError
from imagebuild.spec import parse
from imagebuild.verify import cri_lab, egress
from imagebuild.verify.boot import verify_image, verify_user_data
from imagebuild.vm.disks import OfflineImage
from tests.support import qemu_processes_using

pytestmark = pytest.mark.e2e

# Every point of the seed the verify boot must prove, by check name.
SEED_CHECKS = {
    "service.active", "service.enabled", "version.client", "version.server", "version.runc",
    "config.sandbox_image", "config.systemd_cgroup", "config.oom_score", "config.root", "config.state",
    "config.registry.config_path", "unit.Delegate", "unit.KillMode", "unit.OOMScoreAdjust", "unit.LimitNOFILE",
    "unit.LimitNPROC", "unit.LimitCORE", "unit.TasksMax", "unit.Restart", "process.oom_score_adj",
    "module.overlay", "module.br_netfilter", "sysctl.net.ipv4.ip_forward", "container.import", "container.run",
    "container.own_cgroup", "container.restart_containerd", "container.survives_restart",
    "hygiene.cloud_init_fresh", "hygiene.machine_id", "hygiene.ssh_host_keys",
    "file./etc/containerd/certs.d/k8s.gcr.io/hosts.toml", "file./etc/containerd/config.toml",
    # cloud-init's logs and stored user-data root-only; no secret to search for (no e2e spec carries headers:
    # tests/test_secret_checks.py runs these checks against a spec that does, on the host)
    "secret.private./var/log/cloud-init.log", "secret.private./var/log/cloud-init-output.log",
    "secret.private./var/lib/cloud/instance/user-data.txt", "secret.readable",
}

# What the verify boot proves through CRI (imagebuild/guest/cri_checks.py, in the guest) and from the
# lab registry's access log (imagebuild/verify/cri_lab.py, on the host), for the default spec's four mirrors.
CRI_CHECKS = {
    "cri.runtime_ready", "cri.network_ready", "cri.pod_sandbox", "cri.sandbox_image", "cri.container",
    *(f"cri.{kind}.{host}" for kind in ("pull", "mirror") for host in ("docker.io", "gcr.io", "k8s.gcr.io", "quay.io")),
    "cri.mirror.sandbox_image",
}
CRI_CONFIG_CHECKS = {"cri.config.sandbox_image", "cri.config.registry_config_path"}  # 1.x: Status shows its config
# The proxy-only boot (egress proxy): what passed through the lab's proxy, from its log (imagebuild/verify/egress.py).
EGRESS_CHECKS = {"egress.proxy.download.tarball", "egress.proxy.download.runc", "egress.proxy.apt",
                 *(f"egress.proxy.registry.{host}" for host in ("docker.io", "gcr.io", "k8s.gcr.io", "quay.io")),
                 "egress.proxy.registry.sandbox_image"}
# A baked image: no lab's hosts line, and containerd holds exactly what the bake put there (asked through CRI
# at boot, and read from the content store without booting).
BAKED_CHECKS = {"hygiene.build_lab_removed", "cri.images_at_boot", "image.content_store"}
# A baked sandbox image (image.sandbox.source archive): pinned, with its source's digest, running its program.
SANDBOX_BAKED_CHECKS = {"cri.sandbox_pinned", "cri.sandbox_digest", "cri.sandbox_process"}


def with_changes(spec, **changes):
    doc = yaml.safe_load(yaml.safe_dump(spec.document))
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return parse(yaml.safe_dump(doc), "e2e spec")


def test_golden_image_bakes_with_manifest(golden_bake, golden_spec):
    golden_image, left_in_tmp = golden_bake
    # Nothing left in the temporary directory either (Packer's cd_files staging dir used to stay).
    assert left_in_tmp == []
    manifest = json.loads((golden_image.parent / "manifest.json").read_text())
    assert manifest["image"] == golden_image.name
    assert manifest["sha256"] == sha256_file(golden_image)
    assert manifest["spec_hash"] == golden_spec.spec_hash
    assert manifest["containerd_version"] == "1.6.20"
    assert manifest["virtual_size"] == golden_spec.image.disk_size_gb * 2**30
    assert manifest["disk_size"] == golden_image.stat().st_size
    assert manifest["packer"]["builder_type"] == "qemu"
    assert set(manifest["durations_s"]) >= {"boot", "provision", "check", "inventory", "total"}
    # The Debian 12 base is hybrid (GPT: BIOS boot + ESP + root): registered uefi-preferred, built under
    # SeaBIOS (its BIOS path), verified under OVMF (test_golden_image_verifies: its UEFI path).
    assert (manifest["boot_mode"], manifest["architecture"], manifest["build_firmware"]) == (
        "uefi-preferred", "x86_64", "bios")
    packer_log = (golden_image.parent / f"{golden_spec.name}.packer.log").read_text()
    assert packer_log.count("Connected to SSH") == 1   # which firmware: boot.build_firmware at verify
    # The sandbox image's registry is not reachable here: the golden bakes none (image.sandbox.source none), and
    # no lab stands in for it. containerd and runc are upstream's builds: no lab content.
    assert "sandbox image" not in packer_log and golden_spec.image.sandbox.source == "none"
    assert manifest["sandbox_image"] == {"source": "none", "name": golden_spec.config.sandbox_image, "digest": None}
    assert manifest["lab_content"] == [] and len(manifest["artifacts"]) == 2
    # Read without booting: containerd's content store in the image is empty (it was the lab's test program
    # under the sandbox image's registry name before bake stopped running a lab).
    with OfflineImage(golden_image, golden_image.parent) as disk:
        assert disk.listdir("/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256") in (None, [])
        status = disk.read("/var/lib/dpkg/status")
        installed = {path: disk.read(path) for path in ("/usr/local/bin/containerd", "/usr/local/sbin/runc")}
        cni_dir = disk.listdir("/opt/cni/bin")
        # The inventory's program and output went with the build's staging.
        left = [f"/tmp/{n}" for n in disk.listdir("/tmp") or []] + [
            f"/var/lib/imagebuild/{n}" for n in disk.listdir("/var/lib/imagebuild") or []]
    assert not [path for path in left if "inventory" in path], left
    # Nothing of the build's scratch stays beside the image; its records do (issue 20, item 5).
    stem = golden_image.stem
    names = {"inventory": f"{stem}.inventory.json", "sbom": f"{stem}.cdx.json", "provenance": f"{stem}.provenance.json"}
    assert sorted(p.name for p in golden_image.parent.iterdir()) == sorted(
        [golden_image.name, "manifest.json", f"{golden_spec.name}.packer.log", *names.values()])
    _records_describe_the_image(golden_image, golden_spec, manifest, names, status, installed, cni_dir)


def _records_describe_the_image(golden_image, golden_spec, manifest, names, status, installed, cni_dir):
    """The SBOM and provenance beside the golden image say what the image holds, checked against the image read
    without booting it: every Debian package its dpkg database lists (read by the host's dpkg-query), containerd
    and runc as upstream's releases print themselves with the sha256 of the files in the image, CNI plugins only
    when installed, no lab content; and `imagebuild diff` of the image with itself finds no difference."""
    for record, name in names.items():
        assert manifest["records"][record]["file"] == name
        assert manifest["records"][record]["sha256"] == sha256_file(golden_image.parent / name)
    sbom = json.loads((golden_image.parent / names["sbom"]).read_text())
    assert (sbom["bomFormat"], sbom["specVersion"]) == ("CycloneDX", "1.5")
    assert sbom["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": manifest["sha256"]}]
    admin = golden_image.parent.parent / "dpkg-admin"
    admin.mkdir()
    (admin / "status").write_bytes(status)
    listed = subprocess.run(["dpkg-query", f"--admindir={admin}", "-W", "-f",
                             "${db:Status-Status} ${Package} ${Version} ${Architecture}\n"],
                            capture_output=True, text=True, check=True).stdout
    dpkg = {tuple(line.split()[1:]) for line in listed.splitlines() if line.startswith("installed ")}
    debs = {(c["name"], c["version"], c["purl"].split("arch=")[1].split("&")[0])
            for c in sbom["components"] if c.get("purl", "").startswith("pkg:deb/debian/")}
    assert len(dpkg) > 200 and debs == dpkg
    assert all("distro=debian-12" in c["purl"] for c in sbom["components"] if c.get("purl", "").startswith("pkg:deb/"))
    apps = {c["name"]: c for c in sbom["components"] if c["type"] == "application"}
    props = {name: {p["name"]: p["value"] for p in c["properties"]} for name, c in apps.items()}
    assert apps["containerd"]["version"] == "v1.6.20"    # as `containerd --version` of the release prints it
    assert apps["containerd"]["purl"] == "pkg:golang/github.com/containerd/containerd@v1.6.20#cmd/containerd"
    assert apps["runc"]["version"] == manifest["runc_version"] and apps["runc"]["purl"].startswith(
        f"pkg:golang/github.com/opencontainers/runc@v{manifest['runc_version']}")
    for path, data in installed.items():
        name = path.rsplit("/", 1)[1]
        assert props[name]["imagebuild:path"] == path and data is not None
        assert apps[name]["hashes"] == [{"alg": "SHA-256", "content": hashlib.sha256(data).hexdigest()}]
    # No CNI plugins in the default spec: none installed, none listed.
    assert golden_spec.containerd.install.cni_plugins is None and cni_dir is None
    assert not [n for n, p in props.items() if p["imagebuild:kind"] == "cni"]
    # No lab content: no image in containerd's store, no file the lab made, none recorded.
    assert not [c for c in sbom["components"] if c["type"] == "container"]
    hashes = [h["content"] for c in sbom["components"] for h in c.get("hashes", [])]
    assert hashes and not [h for h in hashes if lab_ledger.lookup(h)]
    assert not [p for p in sbom["metadata"]["component"]["properties"] if p["name"] == "imagebuild:lab-content"]
    statement = json.loads((golden_image.parent / names["provenance"]).read_text())
    predicate = statement["predicate"]
    assert statement["subject"] == [{"name": golden_image.name, "digest": {"sha256": manifest["sha256"]}}]
    assert predicate["buildDefinition"]["externalParameters"]["spec"] == golden_spec.document
    internal = predicate["buildDefinition"]["internalParameters"]
    assert internal["inputs_hash"] == manifest["inputs_hash"] and internal["lab_content"] == []
    assert predicate["buildDefinition"]["resolvedDependencies"][0] == {
        "name": "base-image", "uri": manifest["base_image"]["source"],
        "digest": {"sha256": manifest["base_image"]["checksum"].split(":", 1)[1]}}
    tools = {d["name"]: d for d in predicate["runDetails"]["builder"]["builderDependencies"]}
    packer = subprocess.run(["packer", "version"], capture_output=True, text=True, check=True).stdout
    assert packer.startswith(f"Packer v{tools['packer']['annotations']['version']}\n")
    assert tools["SeaBIOS"]["annotations"]["firmware"] == "bios" and tools["SeaBIOS"]["digest"]["sha256"]
    assert {"name": names["sbom"], "digest": {"sha256": manifest["records"]["sbom"]["sha256"]}} in \
        predicate["runDetails"]["byproducts"]
    assert main(["diff", str(golden_image.parent), str(golden_image)]) == 0


# The golden's NoCloud boot: its checks are the EC2 verify's below (the same image, every check of a verify
# boot, plus EC2's), and make test's NoCloud boots are the Debian 13 golden's and the user-data path's; one
# boot less in make test's budget (~70-150 s). `make test-extra` runs it.
@pytest.mark.extra
def test_golden_image_verifies(golden_image, golden_spec, tmp_path):
    before = sha256_file(golden_image)
    report = verify_image(golden_image, golden_spec, log_dir=str(tmp_path))
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["passed"], failed
    _golden_checks(report)
    assert sha256_file(golden_image) == before, "verify must never write the image"
    written = json.loads((tmp_path / "verify.json").read_text())
    assert written["image_sha256"] == before and written["passed"]


def _golden_checks(report: dict) -> None:
    """What every verify boot of the Debian 12 golden must show, whatever the platform."""
    assert SEED_CHECKS | CRI_CHECKS | CRI_CONFIG_CHECKS | BAKED_CHECKS <= {c["check"] for c in report["checks"]}
    by_name = {c["check"]: c for c in report["checks"]}
    # No sandbox image baked in: the image holds no image at all, and the pod pulls it through the lab into
    # this boot's overlay, as kubelet's first pod pulls it from the registry.
    assert by_name["cri.images_at_boot"]["actual"] == [] and by_name["image.content_store"]["ok"]
    # Upstream's containerd, as its release prints itself (Debian's build said 1.6.20~ds1).
    assert by_name["version.server"]["actual"] == by_name["version.client"]["actual"] == "v1.6.20"
    assert by_name["cri.pod_sandbox"]["note"] == "pulled through the lab"
    assert by_name["cri.mirror.sandbox_image"]["expected"].endswith("(200)")
    assert by_name["cri.mirror.k8s.gcr.io"]["expected"].endswith(
        "/v2/google-containers/imagebuild/verify-2/manifests/1?ns=k8s.gcr.io (200)")
    assert by_name["cri.network_ready"]["actual"] is False  # the image ships no CNI network config
    # uefi-preferred (a hybrid image): OVMF booted it, as a UEFI-capable instance type would
    assert report["firmware"] == "uefi" and by_name["boot.firmware"]["actual"].startswith("uefi (64-bit")
    assert (by_name["boot.build_firmware"]["actual"], by_name["boot.build_firmware"]["ok"]) == ("bios", True)
    assert report["timings"]["containerd_active_s"] is not None
    assert report["timings"]["containerd_active_s"] < report["timings"]["check_done_s"]


# +~150 s, over make test's budget (the bake boots the golden under SeaBIOS already); `make test-extra`,
# where it also bakes the golden it needs (~4-6 min).
@pytest.mark.extra
def test_golden_image_verifies_under_seabios_too(golden_image, golden_spec, tmp_path):
    """The hybrid golden's BIOS path through a whole verify boot (`verify --firmware bios`): i386-pc GRUB
    from the BIOS boot partition, as a legacy-bios instance type boots the uefi-preferred AMI."""
    report = verify_image(golden_image, golden_spec, log_dir=str(tmp_path), firmware="bios")
    by_name = {c["check"]: c for c in report["checks"]}
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    assert report["firmware"] == "bios" and by_name["boot.firmware"]["actual"].startswith("bios (no ")
    assert SEED_CHECKS | CRI_CHECKS <= set(by_name)
    print(f"\nDebian 12 golden verify under SeaBIOS: {report['timings']}")


# make test-extra (~30 s): make test's budget. The boot's own timeout (the message, the serial log's last lines,
# no QEMU left) is tests/e2e/test_qemu_boots.py's test_boot_timeout_is_clear_and_kills_qemu, in make test.
@pytest.mark.extra
def test_verify_times_out_on_a_guest_that_never_boots(tmp_path, golden_spec):
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "1G"], check=True)
    short = with_changes(golden_spec, verify__timeout=30)
    with pytest.raises(ImagebuildError) as raised:
        verify_image(blank, short, log_dir=str(tmp_path))
    message = str(raised.value)
    assert "30" in message and "serial" in message.lower()
    assert (tmp_path / "blank.verify.serial.log").exists()
    # QEMU runs on an overlay in verify's scratch dir: it holds blank.qcow2 open (the backing file)
    # and names the serial log in tmp_path; the detector sees both (tests/test_leftovers.py).
    assert qemu_processes_using(tmp_path) == {}, "no QEMU process may outlive a timed-out verify"


# What the EC2 boot proves on top of the seed checks.
EC2_CHECKS = {
    "ec2.datasource", "ec2.instance_id", "ec2.public_key", "ec2.imds_v2_only", "network.dhcp",
    "disk.rootfs_grown", "hygiene.hostname", "time.sync", "apt.daily_timers", "platform.console",
    "platform.driver.ena", "platform.driver.nvme",
}


def test_golden_image_verifies_as_ec2(golden_image, golden_spec, tmp_path):
    """The same image booted as EC2 presents an instance: SMBIOS identity, IMDSv2 only, a new NIC in
    another slot, a larger disk, no NoCloud seed."""
    before = sha256_file(golden_image)
    report = verify_image(golden_image, golden_spec, log_dir=str(tmp_path), platform="ec2")
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    _golden_checks(report)
    names = {c["check"] for c in report["checks"]}
    assert SEED_CHECKS | EC2_CHECKS | CRI_CHECKS | {"hygiene.network_config"} <= names
    by_name = {c["check"]: c for c in report["checks"]}
    assert by_name["network.dhcp"]["actual"].startswith("ens5:"), by_name["network.dhcp"]
    assert report["platform"] == "ec2" and report["imds_requests"] > 10
    assert report["firmware"] == "uefi" and by_name["boot.firmware"]["ok"]        # uefi-preferred
    imds_lines = (tmp_path / "containerd-golden.verify-ec2.imds.log").read_text().splitlines()
    imds_log = [json.loads(line) for line in imds_lines]
    assert imds_log[0]["method"] == "PUT" and imds_log[0]["status"] == 200
    assert any(r["path"].endswith("/user-data") and r["status"] == 200 for r in imds_log)
    written = json.loads((tmp_path / "verify-ec2.json").read_text())
    assert written["passed"] and written["platform"] == "ec2" and written["image_sha256"] == before
    assert sha256_file(golden_image) == before


def _without_ec2(image, tmp_path):
    """A copy of *image* (raw) whose cloud-init datasource_list leaves Ec2 out, written with debugfs
    into the root filesystem (no mounts; it starts where the ESP ends): the base image as it was before
    Ec2 was listed."""
    raw = tmp_path / "no-ec2.raw"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(image), str(raw)], check=True)
    cfg = tmp_path / "99-no-ec2.cfg"
    cfg.write_text("datasource_list: [ NoCloud, ConfigDrive, None ]\n")
    fs = f"{raw}?offset={base_disk.ESP_END}"
    done = subprocess.run(["debugfs", "-w", "-R", f"write {cfg} /etc/cloud/cloud.cfg.d/99-no-ec2.cfg", fs],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shown = subprocess.run(["debugfs", "-R", "cat /etc/cloud/cloud.cfg.d/99-no-ec2.cfg", fs],
                           capture_output=True, text=True).stdout
    assert "ConfigDrive" in shown, shown
    return raw


def test_an_image_whose_datasources_exclude_ec2_fails_the_ec2_verify(base_image, golden_spec, tmp_path):
    """Can the EC2 verify fail? An image without Ec2 in its datasource_list boots with cloud-init off;
    the verify says so as soon as the login prompt shows, instead of waiting out its timeout. The copy
    is no built-in base and has no manifest: it boots as an amd64 image of unknown layout does, under
    SeaBIOS (the hybrid base's BIOS path)."""
    image = _without_ec2(base_image, tmp_path)
    report = verify_image(image, golden_spec, log_dir=str(tmp_path), platform="ec2")
    assert report["firmware"] == "bios"
    assert not report["passed"]
    assert report["failed"] == ["ec2.cloud_init_ran"]
    assert "datasource_list include Ec2" in report["reason"] and "no request to the IMDS" in report["reason"]
    assert report["timings"]["check_done_s"] < golden_spec.verify.timeout / 2
    assert json.loads((tmp_path / "verify-ec2.json").read_text())["passed"] is False
    image.unlink()   # a sparse 3 GiB raw: not kept in pytest's temp directories


# A spec written the way people write YAML: numbers for limits, a list and dotted keys under config.overrides, a
# multi-line check, a merge key. The one user-data boot of make test: containerd 1.7 from its release files with
# the CNI plugins (the pod network), the worker profile's apt, behind a proxy. (Not verify.on_boot: its check.py
# and expected.json, about 8.7 KB gzipped, take this spec's user-data past EC2's 16 KB, and the product refuses it;
# tests/e2e/test_check_on_boot.py boots that.)
NATURAL = """\
name: natural-yaml
containerd:
  version: 1.7.24
  install: {{cni_plugins: {{}}}}
proxy:
  http: "{proxy}"
  https: "{proxy}"
unit:
  limit_nofile: 1048576
  tasks_max: 4096
  restart: always
config:
  overrides:
    disabled_plugins: [io.containerd.internal.v1.tracing]
    grpc.max_recv_message_size: 33554432
    plugins.io.containerd.grpc.v1.cri.enable_unprivileged_ports: true
verify:
  checks:
    - <<: {{name: config-in-guest}}
      run: |
        set -eu
        dump="$(containerd config dump)"
        grep -qx 'disabled_plugins = \\["io.containerd.internal.v1.tracing"\\]' <<<"$dump"
        grep -q 'max_recv_message_size = 33554432' <<<"$dump"
        test "$(systemctl show -p LimitNOFILE --value containerd)" = 1048576
        test "$(systemctl show -p TasksMax --value containerd)" = 4096
"""


def test_a_natural_spec_by_user_data_verifies_on_ec2_with_the_proxy_its_only_way_out(mirror, base_image, tmp_path):
    """The rendered user-data of a spec written as people write YAML (NATURAL), gzipped as EC2 hands it over,
    through the IMDS to the plain base image, in a network whose only way out is the spec's proxy (egress proxy:
    QEMU's restrict=on, the lab's tinyproxy the one forward besides the IMDS). The install's downloads (a host
    only the proxy reaches), the worker profile's apt and containerd's pulls all pass through it: its own log
    says so. The same boot proves the spec as read (merge key, numbers, dotted overrides) in the guest, and a
    1.7 tarball install with the CNI plugins giving a pod its network (cri.pod_network)."""
    lab_proxy = egress.proxy_url(cri_lab.LAB_IP["ec2"])
    spec = mirror(parse(NATURAL.format(proxy=lab_proxy), "natural spec"), "1.7", guest_host=egress.HOST_NAME)
    assert [c.name for c in spec.verify.checks] == ["config-in-guest"]  # the merge key
    report = verify_user_data(spec, base=str(base_image), log_dir=str(tmp_path), platform="ec2", egress="proxy")
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    assert EC2_CHECKS | CRI_CHECKS | EGRESS_CHECKS <= {c["check"] for c in report["checks"]}
    assert report["timings"]["containerd_active_s"] is not None
    assert report["user_data_bytes"] == len(render.user_data(spec)) <= 16384
    by_name = {c["check"]: c for c in report["checks"]}
    # The spec as written, in the guest: its own check, overrides and unit.
    assert by_name["extra.config-in-guest"]["ok"]
    assert by_name["config.overrides.disabled_plugins"]["actual"] == ["io.containerd.internal.v1.tracing"]
    assert by_name["config.overrides.grpc.max_recv_message_size"]["actual"] == 33554432
    assert by_name["unit.LimitNOFILE"]["actual"] == "1048576"
    # The CNI plugins where the rendered config looks for them: a pod of its own network gets an address.
    assert by_name["cni.bin_dir"]["ok"] and by_name["cri.pod_network"]["ok"], by_name.get("cri.pod_network")
    # cloud-init wrote its logs on this first boot (0640, 0644); the install made them root-only
    assert {by_name[f"secret.private.{log}"]["actual"] for log in (
        "/var/log/cloud-init.log", "/var/log/cloud-init-output.log", "/var/lib/cloud/instance/user-data.txt")} == {
        "root 0600"}
    # No router in this network: DHCP configured the NIC, and the guest has no default route to leave by.
    assert by_name["network.dhcp"]["expected"].endswith(": no default route, configured by DHCP")
    assert "default route via <none>" in by_name["network.dhcp"]["actual"]
    saved = json.loads((tmp_path / "verify-user-data-ec2.json").read_text())
    assert (saved["platform"], saved["egress"]) == ("ec2", "proxy")
    # The proxy's own log: every release file, the Debian archive (the worker profile's packages), every registry.
    asked = re.findall(r"Request \(file descriptor \d+\): (\S+ \S+)",
                       (tmp_path / "user-data.verify-ec2.proxy.log").read_text())
    install = spec.containerd.install
    for art in (install.tarball, install.runc, install.cni_plugins):
        assert f"GET {art.resolved_url}" in asked, asked
    assert by_name["egress.proxy.download.cni_plugins"]["ok"]
    assert [a for a in asked if re.match(r"GET http://\S+/pool/\S+/(conntrack|socat|ebtables)_\S+\.deb$", a)], asked
    for mirror_host in ("docker", "gcr", "quay"):
        assert f"CONNECT {mirror_host}.mirrors.ustc.edu.cn:443" in asked, asked


# make test-extra (~80 s): make test's budget. The CRI checks fail on a dead CRI plugin on real daemons of every
# family in make test (tests/test_cri_checks.py, tests/test_cri_client.py); this is the same through a boot.
@pytest.mark.extra
def test_a_containerd_whose_cri_plugin_is_off_fails_verify(mirror, base_image, tmp_path):
    """Can the CRI checks fail a boot? A spec that disables the CRI plugin gives a containerd that runs,
    answers ctr and holds every rendered file, yet kubelet could not use it: verify must fail, on the
    cri.* checks and the CRI plugin's config.* keys, and only there (NoCloud user-data path). Under the
    default kubernetes-worker profile such a spec is refused (tests/test_bad_specs.py); with profile none
    it renders, with a warning that verify, which always asks CRI, fails it (and the boot is shorter:
    no profile packages)."""
    from imagebuild.spec import load

    spec = mirror(with_changes(load(), config__overrides={"disabled_plugins": ["io.containerd.grpc.v1.cri"]},
                               system__profile="none"), "1.6")
    report = verify_user_data(spec, base=str(base_image), log_dir=str(tmp_path))
    assert not report["passed"]
    failed = set(report["failed"])
    assert "cri.runtime_ready" in failed, report["failed"]
    # `config dump` leaves a disabled plugin's settings out: the config.* checks of CRI keys fail too.
    expected = json.loads(render.guest_files(spec)["expected.json"].content)
    cri_keys = {c["name"] for c in expected["config"] if c["path"][:2] == ["plugins", "io.containerd.grpc.v1.cri"]}
    assert "config.sandbox_image" in cri_keys and cri_keys <= failed, report["failed"]
    assert all(name.startswith("cri.") or name in cri_keys for name in failed), report["failed"]
    passed = {c["check"] for c in report["checks"] if c["ok"]}
    assert {"service.active", "container.run", "file./etc/containerd/config.toml"} <= passed
