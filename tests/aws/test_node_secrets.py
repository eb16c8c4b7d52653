"""Header values given by reference, read on the node: the real install.sh (as root, into a scratch root) runs the
guest resolver, which takes a session token and role credentials from the lab IMDS (imagebuild.verify.imds) and
reads an SSM SecureString and a Secrets Manager secret from a local moto server with authentication on: the
signature is checked and the role may do only what docs/iam/node-registry-secrets.json allows."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import tomllib
import urllib.request
from pathlib import Path

import pytest

from imagebuild.guest import resolve_secrets
from imagebuild.verify import imds
from tests.aws.fixtures import IAM_DIR, moto_process
from tests.support import run_main, write_spec

REGION = "eu-west-1"
TOKEN = "n0de-t0ken-5ec2e7-ssm-8f7e6d"
SM_TOKEN = "sm-t0ken-a1b2c3d4e5f6-secret"
HOSTILE = 'q"uote\\back\nnew\tline\x01ctl\'s "]\n[host."x"]'
HOSTS = "etc/containerd/certs.d/{}/hosts.toml"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")


def _auth(url: str, count: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=count.encode(), method="POST",
                                     headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


@pytest.fixture(scope="module")
def aws_node():
    """A moto server holding the parameters and secret, two roles (one with the documented node policy, one with
    nothing) and their assumed-role credentials; authentication turned on once all is made."""
    pytest.importorskip("boto3")
    import boto3

    with moto_process() as url:
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=REGION)
        iam, sts = session.client("iam", endpoint_url=url), session.client("sts", endpoint_url=url)
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"Service": "ec2.amazonaws.com"}}]}
        documented = json.loads((IAM_DIR / "node-registry-secrets.json").read_text())
        # moto authorizes SSM and Secrets Manager calls by action against the resource "*": the documented
        # actions, on every resource
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
            s["Action"] for s in documented["Statement"]]}]}
        creds = {}
        for role, allowed in (("imagebuild-node", True), ("no-permissions", False)):
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
            if allowed:
                iam.put_role_policy(RoleName=role, PolicyName="registry-secrets", PolicyDocument=json.dumps(policy))
            arn = f"arn:aws:iam::123456789012:role/{role}"
            c = sts.assume_role(RoleArn=arn, RoleSessionName="i-0abc")["Credentials"]
            creds[role] = (c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
        ssm = session.client("ssm", endpoint_url=url)
        ssm.put_parameter(Name="/team/registry-token", Value=TOKEN, Type="SecureString")
        ssm.put_parameter(Name="/team/hostile", Value=HOSTILE, Type="SecureString")
        session.client("secretsmanager", endpoint_url=url).create_secret(Name="team/registry-token-b",
                                                                         SecretString=SM_TOKEN)
        _auth(url, "0")
        yield url, creds


@pytest.fixture
def node(aws_node):
    """start(role=..., credentials=...) -> the environment install.sh runs in: the lab IMDS (with that role's
    credentials) and the moto server, as an SDK on EC2 would be pointed at them."""
    url, creds = aws_node
    servers = []

    def start(role: str | None = "imagebuild-node", credentials: tuple[str, str, str] | None = None):
        instance = imds.Instance(instance_id="i-0abc1234def567890", mac="52:54:00:ab:cd:ef",
                                 local_ipv4="169.254.10.15", public_key="ssh-ed25519 AAAA test", region=REGION,
                                 availability_zone=f"{REGION}a", role=role,
                                 role_credentials=credentials or creds.get(role or "", ("", "", "")))
        server = imds.ImdsServer(instance).__enter__()
        servers.append(server)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return server, env | {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{server.port}",
                              "AWS_ENDPOINT_URL": url}
    yield start
    for server in servers:
        server.__exit__(None, None, None)


def _doc(release: dict, headers: dict[str, dict]) -> dict:
    url = release["url"]
    ctd, runc = Path(release["containerd"]["path"]).name, Path(release["runc"]["path"]).name
    return {"containerd": {"version": release["containerd"]["version"], "install": {
        "tarball": {"url": f"{url}/{ctd}", "sha256": release["containerd"]["sha256"], "insecure": True},
        "runc": {"version": release["runc"]["version"], "url": f"{url}/{runc}", "sha256": release["runc"]["sha256"],
                 "insecure": True}}},
        "config": {"registry": {"mirrors": [{"host": host, "endpoints": [{"url": f"https://{host}.mirror.example",
                                                                          "headers": {"Authorization": ref}}]}
                                            for host, ref in headers.items()]
                                + [{"host": "gcr.io", "endpoints": [{"url": "https://gcr.mirror.example"}]}]}}}


def _render(tmp_path: Path, doc: dict) -> Path:
    out = tmp_path / "render"
    code, _, err = run_main(["user-data", str(write_spec(tmp_path, doc)), "-o", str(tmp_path / "user-data")])
    assert code == 0, err  # a reference read on the node is no literal secret: no flag needed
    code, _, err = run_main(["render", str(write_spec(tmp_path, doc)), "-o", str(out)])
    assert code == 0, err
    return out


def _install(out: Path, scratch: Path, env: dict) -> subprocess.CompletedProcess:
    scratch.mkdir(exist_ok=True)
    return subprocess.run(["bash", str(out / "install.sh"), str(out / "payload")], capture_output=True, text=True,
                          env=env | {"IMAGEBUILD_ROOT": str(scratch)}, timeout=300)


def _header(scratch: Path, host: str) -> list[str]:
    return tomllib.loads((scratch / HOSTS.format(host)).read_text())["host"][f"https://{host}.mirror.example"][
        "header"]["Authorization"]


def _holding(root: Path, needle: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle.encode() in
                  p.read_bytes())


@needs_root
def test_install_writes_each_hosts_toml_from_ssm_and_secrets_manager_root_only(tmp_path, release_16, node):
    server, env = node()
    out = _render(tmp_path, _doc(release_16, {
        "docker.io": {"ssm": "/team/registry-token", "prefix": "Bearer "},
        "quay.io": {"secretsmanager": "team/registry-token-b", "prefix": "Basic "}}))
    for token in (TOKEN, SM_TOKEN):  # no output holds a value: not the render, not the user-data
        assert _holding(tmp_path, token) == []
    scratch = tmp_path / "scratch"
    proc = _install(out, scratch, env)
    assert proc.returncode == 0, proc.stderr
    assert _header(scratch, "docker.io") == [f"Bearer {TOKEN}"]
    assert _header(scratch, "quay.io") == [f"Basic {SM_TOKEN}"]
    for host in ("docker.io", "quay.io"):
        assert stat.S_IMODE((scratch / HOSTS.format(host)).stat().st_mode) == 0o600
    assert stat.S_IMODE((scratch / HOSTS.format("gcr.io")).stat().st_mode) == 0o644
    assert _holding(scratch, TOKEN) == [HOSTS.format("docker.io")]
    assert TOKEN not in proc.stdout + proc.stderr and SM_TOKEN not in proc.stdout + proc.stderr
    assert imds.token_violations(server.log) == []  # IMDSv2 only, as on EC2
    # the stale-file sweep of a second run keeps them, and nothing changes
    again = _install(out, scratch, env)
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stderr and _header(scratch, "docker.io") == [f"Bearer {TOKEN}"]


@needs_root
def test_a_missing_parameter_fails_the_install_clearly_and_leaves_the_rest_in_place(tmp_path, release_16, node):
    _, env = node()
    out = _render(tmp_path, _doc(release_16, {"docker.io": {"ssm": "/team/missing", "prefix": "Bearer "}}))
    scratch = tmp_path / "scratch"
    proc = _install(out, scratch, env)
    assert proc.returncode == 1
    assert ("config.registry.mirrors[0].endpoints[0].headers.Authorization: SSM parameter /team/missing: "
            "ParameterNotFound") in proc.stderr
    assert "the rest of the configuration is installed" in proc.stderr
    assert not (scratch / HOSTS.format("docker.io")).exists()
    for path in ("etc/containerd/config.toml", HOSTS.format("gcr.io"), "usr/local/bin/containerd"):
        assert (scratch / path).is_file(), path


@needs_root
@pytest.mark.parametrize("role, reason", [
    (None, "gives no role credentials (iam/security-credentials/ is empty: the instance has no instance profile)"),
    ("no-permissions", "AccessDenied"),
])
def test_no_credentials_or_no_permission_fail_clearly(tmp_path, release_16, node, role, reason):
    _, env = node(role)
    out = _render(tmp_path, _doc(release_16, {"docker.io": {"ssm": "/team/registry-token"}}))
    proc = _install(out, tmp_path / "scratch", env)
    assert proc.returncode == 1 and "SSM parameter /team/registry-token: " in proc.stderr
    assert reason in proc.stderr and TOKEN not in proc.stderr, proc.stderr


def test_a_wrong_signature_is_refused_by_the_server(tmp_path, aws_node, node):
    """The signature is checked: the right key id with a wrong secret key is refused (the check can fail)."""
    key, _, token = aws_node[1]["imagebuild-node"]
    _, env = node("imagebuild-node", (key, "wrong" * 8, token))
    document = tmp_path / "docker.io.json"
    document.write_text(json.dumps({"path": "/hosts.toml", "mode": "0600", "template": 'a = ["\\u0000x"]\n',
                                    "values": [{"key": "k", "placeholder": '"\\u0000x"', "source": "ssm",
                                                "name": "/team/registry-token", "prefix": ""}]}))
    assert resolve_secrets.main(["--root", str(tmp_path), str(document)], env) == 1
    assert not (tmp_path / "hosts.toml").exists()


def test_a_hostile_value_is_written_as_one_toml_string(tmp_path, node, capsys):
    _, env = node()
    document = tmp_path / "docker.io.json"
    document.write_text(json.dumps({"path": "/etc/certs.d/x/hosts.toml", "mode": "0600",
                                    "template": 'server = "s"\n[host."h".header]\nAuthorization = ["\\u0000x"]\n',
                                    "values": [{"key": "k", "placeholder": '"\\u0000x"', "source": "ssm",
                                                "name": "/team/hostile", "prefix": "Bearer "}]}))
    assert resolve_secrets.main(["--root", str(tmp_path), str(document)], env) == 0, capsys.readouterr().err
    written = tmp_path / "etc/certs.d/x/hosts.toml"
    assert tomllib.loads(written.read_text()) == {"server": "s", "host": {"h": {"header": {
        "Authorization": ["Bearer " + HOSTILE]}}}}
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert capsys.readouterr().out == "/etc/certs.d/x/hosts.toml\n"
    assert resolve_secrets.main(["--root", str(tmp_path), str(document)], env) == 0  # already so: left alone
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("value", ["", "plain", 'q"', "b\\", "n\nl", "\r\t\b\f", "\x00\x1f\x7f", "ü 字 🙂",
                                   '"""', "'''", '\\u0041', "\\\\\""])
def test_toml_string_round_trips_through_a_toml_reader(value):
    assert tomllib.loads(f"v = {resolve_secrets.toml_string(value)}\n")["v"] == value


def test_the_resolver_makes_only_calls_the_documented_node_policy_allows():
    documented = {s["Action"] for s in json.loads((IAM_DIR / "node-registry-secrets.json").read_text())["Statement"]}
    made = {f"{signing}:{target.split('.')[1]}" for signing, target, *_ in resolve_secrets.CALLS.values()}
    assert made == {"ssm:GetParameter", "secretsmanager:GetSecretValue"} and made <= documented
