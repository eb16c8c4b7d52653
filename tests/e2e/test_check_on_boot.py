"""verify.on_boot in a guest: the user-data runs the production check after its install, the results root-only
in the check log, the check's files gone with the staging (NoCloud user-data path).

make test-extra (about 3 minutes): make test's budget. make test proves the command the user-data runs, failing and
passing, on the host (tests/test_userdata.py), and check.py's build phase in every bake's build VM; its one
user-data boot (tests/e2e/test_bake_verify.py, EC2 with a proxy) cannot carry on_boot, whose files take that
spec's user-data past EC2's 16 KB."""
from __future__ import annotations

import pytest

from imagebuild.spec import parse
from imagebuild.verify.boot import verify_user_data

pytestmark = [pytest.mark.e2e, pytest.mark.extra]

# profile none: the worker profile's apt install in the guest (60-100 s under TCG) is proved in make test.
ON_BOOT = """\
system: {profile: none}
verify:
  on_boot: true
  checks:
    - name: checked-on-boot
      run: |
        set -eu
        test "$IMAGEBUILD_CHECK_PHASE" = boot || exit 0   # the verify boot's run reads the on-boot run's log
        test "$(stat -c '%a %U' /var/log/imagebuild-check.log)" = "600 root"
        grep -q '^IMAGEBUILD-DONE .*"failed": 0' /var/log/imagebuild-check.log
        test ! -e /var/lib/imagebuild/check.py
"""


def test_the_check_on_boot_runs_after_a_user_data_install(mirror, base_image, tmp_path):
    spec = mirror(parse(ON_BOOT, "on-boot spec"), "1.6")
    report = verify_user_data(spec, base=str(base_image), log_dir=str(tmp_path))
    assert report["passed"], [c for c in report["checks"] if not c["ok"]]
    by_name = {c["check"]: c for c in report["checks"]}
    assert by_name["extra.checked-on-boot"]["ok"]   # verify.on_boot's check ran after the install, and passed
