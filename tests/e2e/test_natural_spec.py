"""A spec written the way people write YAML (numbers for limits, a list and dotted keys under
config.overrides, a multi-line check, merge keys), proved in a guest by the user-data path; the same
boot proves a 1.7 tarball install with the CNI plugins gives a pod its network (cri.pod_network)."""
from __future__ import annotations

import pytest

from imagebuild.spec import parse
from imagebuild.verify.boot import verify_user_data

pytestmark = pytest.mark.e2e

# profile none: the worker profile's apt install in the guest (60-100 s under TCG) is proved by the
# golden bake and the EC2 user-data boot; this boot is about how the spec file is read.
NATURAL = """\
name: natural-yaml
containerd:   # this boot is also make test's containerd 1.7 on Debian 12, and its pod network
  version: 1.7.24
  install: {cni_plugins: {}}
system: {profile: none}
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
  on_boot: true       # the production check on boot: the user-data runs it after the install
  checks:
    - name: checked-on-boot
      run: |
        set -eu
        test "$IMAGEBUILD_CHECK_PHASE" = boot || exit 0   # the verify boot's run reads the on-boot run's log
        test "$(stat -c '%a %U' /var/log/imagebuild-check.log)" = "600 root"
        grep -q '^IMAGEBUILD-DONE .*"failed": 0' /var/log/imagebuild-check.log
        test ! -e /var/lib/imagebuild/check.py
    - <<: {name: config-in-guest}
      run: |
        set -eu
        dump="$(containerd config dump)"
        grep -qx 'disabled_plugins = \\["io.containerd.internal.v1.tracing"\\]' <<<"$dump"
        grep -q 'max_recv_message_size = 33554432' <<<"$dump"
        test "$(systemctl show -p LimitNOFILE --value containerd)" = 1048576
        test "$(systemctl show -p TasksMax --value containerd)" = 4096
"""


def test_a_natural_yaml_spec_verifies_in_a_guest(mirror, base_image, tmp_path):
    spec = mirror(parse(NATURAL, "natural spec"), "1.7")
    assert [c.name for c in spec.verify.checks] == ["checked-on-boot", "config-in-guest"]  # the merge key
    report = verify_user_data(spec, base=str(base_image), log_dir=str(tmp_path))
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    by_name = {c["check"]: c for c in report["checks"]}
    assert by_name["extra.config-in-guest"]["ok"]
    assert by_name["extra.checked-on-boot"]["ok"]   # verify.on_boot's check ran after the install, and passed
    assert by_name["config.overrides.disabled_plugins"]["actual"] == ["io.containerd.internal.v1.tracing"]
    assert by_name["config.overrides.grpc.max_recv_message_size"]["actual"] == 33554432
    assert by_name["unit.LimitNOFILE"]["actual"] == "1048576"
    # The CNI plugins where the rendered config looks for them: a pod of its own network gets an address.
    assert by_name["cni.bin_dir"]["ok"] and by_name["cri.pod_network"]["ok"], by_name.get("cri.pod_network")
