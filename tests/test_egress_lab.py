"""The verify lab's proxy-only network (imagebuild.verify.egress), on the host with its real parts: the lab's
registries, Debian's tinyproxy and the relay that resolves the lab's names for it. The boot itself is
tests/e2e/test_bake_verify.py::test_a_natural_spec_by_user_data_verifies_on_ec2_with_the_proxy_its_only_way_out."""
from __future__ import annotations

import subprocess

import pytest

from imagebuild.errors import ImagebuildError
from imagebuild.spec import load
from imagebuild.verify import cri_lab, egress
from imagebuild.verify.boot import _test_image
from tests.support import spec_of

LAB_PROXY = egress.proxy_url(cri_lab.LAB_IP["ec2"])


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code}", *args],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    work = tmp_path_factory.mktemp("egress-lab")
    spec = spec_of({"proxy": {"http": LAB_PROXY, "https": LAB_PROXY}})
    with cri_lab.start(spec, work, "ec2", _test_image("amd64"), egress="proxy", proxy_log=work / "proxy.log") as lab:
        yield lab


def test_the_guest_gets_only_the_proxy_and_the_network_is_restricted(lab, tmp_path):
    options = lab.netdev_options()
    assert options.startswith("restrict=on,") and options.count("guestfwd=") == 1
    assert options.split(",", 1)[1].startswith(f"guestfwd=tcp:{cri_lab.LAB_IP['ec2']}:{egress.PROXY_PORT}-cmd:")
    assert options.endswith(f"--relay {lab.proxy.port}")
    # The negative: the open lab forwards each registry port and does not restrict the guest.
    with cri_lab.start(load(), tmp_path, "ec2", _test_image("amd64")) as open_lab:
        assert "restrict" not in open_lab.netdev_options() and open_lab.proxy is None
        assert open_lab.netdev_options().count("guestfwd=") == len(open_lab.registries)


def test_the_proxy_reaches_the_labs_registries_by_name_and_the_checks_see_it(lab):
    """Through tinyproxy (as containerd would: CONNECT, then TLS with the lab's CA) a registry name reaches the
    lab's registry; the egress check of that mirror passes, those of the others still fail."""
    ca = str(lab.tls["ca"])
    got = _curl("--proxy", lab.proxy.url, "--cacert", ca, "https://quay.mirrors.ustc.edu.cn/v2/")
    assert got.stdout == "200", got.stderr
    checks = {c["check"]: c["ok"] for c in lab.host_checks() if c["check"].startswith("egress.")}
    assert checks["egress.proxy.registry.quay.io"] is True
    assert checks["egress.proxy.registry.docker.io"] is False and checks["egress.proxy.apt"] is False
    assert checks["egress.proxy.download.tarball"] is False
    assert "CONNECT quay.mirrors.ustc.edu.cn:443 HTTP/1.1" in lab.proxy.requests()


def test_the_relay_serves_only_the_labs_names(lab):
    """The relay is the proxy's way to the lab's names only: any other name gets 502 from it, never a
    connection (tinyproxy itself would look a name up and fail: .test resolves nowhere)."""
    relay = f"http://127.0.0.1:{lab.relay.port}"
    assert _curl("--proxy", relay, "http://elsewhere.imagebuild-lab.test/").stdout == "502"
    assert _curl("--proxy", relay, "-p", "https://elsewhere.imagebuild-lab.test/").stdout in ("000", "502")
    # a registry name on a port the lab does not serve
    assert _curl("--proxy", relay, "http://quay.mirrors.ustc.edu.cn:8443/v2/").stdout == "502"


def test_a_spec_proxy_other_than_the_labs_is_refused(tmp_path):
    spec = spec_of({"proxy": {"https": "http://10.0.0.1:3128"}})
    with pytest.raises(ImagebuildError, match=r"proxy\.https: 'http://10\.0\.0\.1:3128' is not the verify lab's "
                                              r"proxy.*http://169\.254\.20\.20:3128"):
        cri_lab.start(spec, tmp_path, "ec2", _test_image("amd64"), egress="proxy")
    with pytest.raises(ImagebuildError, match="unknown egress 'socks'"):
        cri_lab.start(spec, tmp_path / "b", "ec2", _test_image("amd64"), egress="socks")
