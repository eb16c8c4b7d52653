"""The rendered template's amazon-ebs source, read and validated by Packer 1.6.6 (the builds against moto:
tests/e2e/test_packer_amazon.py)."""
from __future__ import annotations

import re

from tests.aws.fixtures import CANONICAL, CANONICAL_AMIS
from tests.support import run_cli, write_spec

HOME, COPY = "us-east-1", "us-west-2"
ACCOUNT = "111122223333"
DOC = {
    "name": "plumbing-check",
    "image": {"aws": {
        "region": HOME, "copy_regions": [COPY], "share_with_accounts": [ACCOUNT], "encrypt_boot": False,
        "source_ami_name": CANONICAL_AMIS, "source_ami_owners": [CANONICAL],
        "tags": {"team": "platform"},
    }},
}


def _render(tmp_path, doc=DOC):
    out = tmp_path / "render"
    proc = run_cli("packer", str(write_spec(tmp_path, doc)), "-o", str(out))
    assert proc.returncode == 0, proc.stderr.decode()
    return out / "packer"


# --------------------------------------------------------------------------------- the build VM's settings


def test_amazon_ebs_clears_the_temporary_key_and_shares_snapshots_where_packer_1_6_validates(tmp_path):
    """ssh_clear_authorized_keys and snapshot_users (beside ami_users) are in the amazon-ebs source only, and
    Packer 1.6.6 knows them: it accepts the template and refuses a misspelt one (so acceptance means known)."""
    from tests.support import packer_validate

    packer_dir = _render(tmp_path)
    path = packer_dir / "imagebuild.pkr.hcl"
    template = path.read_text()
    qemu, ebs = template.split('source "amazon-ebs" "golden"')
    assert "ssh_clear_authorized_keys = true" in ebs and "ssh_clear_authorized_keys" not in qemu
    assert f'ami_users     = ["{ACCOUNT}"]' in ebs and f'snapshot_users = ["{ACCOUNT}"]' in ebs
    assert packer_validate(packer_dir).returncode == 0
    for setting in ("ssh_clear_authorized_keys", "snapshot_users"):
        path.write_text(template.replace(f"  {setting} ", f"  {setting}_x "))
        proc = packer_validate(packer_dir)
        assert proc.returncode != 0 and f'"{setting}_x" is not expected here' in proc.stdout + proc.stderr


def _build_block_provisioners(template: str) -> list[str]:
    """The provisioner blocks of the build block, in order (their text up to the next block)."""
    build = template[template.index("\nbuild {"):]
    starts = [m.start() for m in re.finditer(r"\n  (provisioner|post-processor) \"", build)]
    blocks = [build[a:b] for a, b in zip(starts, starts[1:] + [len(build)], strict=True)]
    return [b for b in blocks if b.startswith("\n  provisioner")]


def test_cloud_builds_end_with_the_in_guest_check(tmp_path):
    """Static: check.py --phase build is the last provisioner and applies to amazon-ebs.golden."""
    template = (_render(tmp_path) / "imagebuild.pkr.hcl").read_text()
    provisioners = _build_block_provisioners(template)
    assert len(provisioners) >= 3
    last = provisioners[-1]
    assert [p for p in provisioners if "check.py --phase build" in p] == [last]
    for block in provisioners:  # what each one applies to
        only = re.search(r"only\s*=\s*\[([^\]]*)\]", block)
        excepted = re.search(r"except\s*=\s*\[([^\]]*)\]", block)
        assert only is None or "amazon-ebs.golden" in only.group(1)
        assert excepted is None or "amazon-ebs.golden" not in excepted.group(1), block
    assert re.search(r"except\s*=\s*\[\s*\"amazon-ebs\.plumbing\"\s*\]", last)
    # and both real sources are in the build
    assert '"source.qemu.golden"' in template and '"source.amazon-ebs.golden"' in template


def test_kms_keys_reach_the_amazon_ebs_source_and_packer_accepts_them(tmp_path):
    from tests.support import packer_validate

    keys = {HOME: f"arn:aws:kms:{HOME}:123456789012:key/aaaa-1111",
            COPY: f"arn:aws:kms:{COPY}:123456789012:key/bbbb-2222"}
    doc = {**DOC, "image": {"aws": {**DOC["image"]["aws"], "encrypt_boot": True, "kms_keys": keys}}}
    packer_dir = _render(tmp_path, doc)
    template = (packer_dir / "imagebuild.pkr.hcl").read_text()
    assert f'kms_key_id    = "{keys[HOME]}"' in template
    assert f'region_kms_key_ids = {{ "{COPY}" = "{keys[COPY]}" }}' in template
    proc = packer_validate(packer_dir)
    assert proc.returncode == 0, proc.stdout
    (tmp_path / "plain").mkdir()
    plain = (_render(tmp_path / "plain")).joinpath("imagebuild.pkr.hcl").read_text()
    assert "kms_key_id" not in plain and "region_kms_key_ids" not in plain
