"""The spec, declared once: a typed, frozen, versioned pydantic model, from `Spec` down.

Every key is declared with its type, default, limits and a one-line description (the value types in
:mod:`.fields`, the containerd sections in :mod:`.containerd`). From this one declaration come
validation and defaults (:mod:`.load` reads the YAML, :mod:`.problems` formats pydantic's errors),
`imagebuild schema`, `imagebuild init` and the publish target of the aws package. Rules that span
keys live in :mod:`.rules`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    model_validator,
)

from imagebuild.spec.aws_rules import section_problems
from imagebuild.spec.containerd import Config, Containerd, Proxy, Sha256, Unit
from imagebuild.spec.fields import (
    API_VERSION,
    API_VERSIONS,
    AWS_ACCOUNT,
    AWS_REGION,
    CHECK_NAME,
    KMS_KEY_ARN,
    MODULE,
    NAME,
    ORG_ARN,
    OU_ARN,
    RESERVED_TAG_PREFIXES,
    SSM_NAME,
    SYSCTL,
    TAG_KEY,
    TAG_VALUE,
    UNIQUE,
    UNIQUE_SCHEMA,
    ApiVersion,
    Bool,
    Int,
    Key,
    Name,
    Region,
    Section,
    SysctlValue,
    Text,
    _error,
    keys_schema,
    show,
)

#: What a Kubernetes worker needs besides containerd: sysctl -> (value, reason), packages -> reason.
#: The spec's own system.sysctls are applied after (and win over) the profile's.
# A profile: sysctls {key: (value, why)} and packages {name: (why, probe command)}.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "kubernetes-worker": {
        "sysctls": {
            "net.ipv6.conf.all.forwarding": ("1", "pods' IPv6 traffic is routed through the node; "
                                             "bridge filtering alone does not forward it"),
            "kernel.panic": ("10", "kubelet's protectKernelDefaults requires it: reboot 10 s after a panic"),
            "kernel.panic_on_oops": ("1", "kubelet's protectKernelDefaults requires it: an oops panics "
                                          "(and reboots) instead of running on in an unknown state"),
            "vm.overcommit_memory": ("1", "kubelet's protectKernelDefaults requires it: kubelet evicts "
                                          "pods itself, the kernel must not refuse allocations"),
        },
        # name: (why, a command that proves the tool runs: the in-guest check runs it)
        "packages": {
            "conntrack": ("kube-proxy deletes stale conntrack entries (UDP services) with it",
                          ("conntrack", "--version")),
            "socat": ("kubelet's port forwarding (kubectl port-forward) and kubeadm's preflight need it",
                      ("socat", "-V")),
            "ebtables": ("kubelet's network plugins and kubeadm's preflight need it", ("ebtables", "--version")),
        },
    },
    "none": {"sysctls": {}, "packages": {}},
}


SEED_SYSCTLS: dict[str, str | int] = {"net.bridge.bridge-nf-call-iptables": 1,
                                      "net.bridge.bridge-nf-call-ip6tables": 1, "net.ipv4.ip_forward": 1}


class System(Section):
    """kernel set-up containerd and Kubernetes need"""

    profile: Literal["kubernetes-worker", "none"] = Field(
        "kubernetes-worker", description="kubernetes-worker: what a kubelet node expects besides containerd "
        "(sysctls, tools: docs/spec.md lists them); none: only what this section lists")
    modules: Annotated[tuple[Annotated[str, Text(MODULE, "a module name")], ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        ("overlay", "br_netfilter"), description="kernel modules loaded at boot (modules-load.d)")
    sysctls: Annotated[dict[Annotated[str, Key(SYSCTL, "dotted sysctl names")], SysctlValue],
                       keys_schema(SYSCTL)] = Field(
        default_factory=lambda: dict(SEED_SYSCTLS), json_schema_extra={"default": dict(SEED_SYSCTLS)},
        description="sysctls applied at boot (sysctl.d); in the built model the profile's come first, as text")

    @property
    def packages(self) -> tuple[str, ...]:
        """Debian packages the profile installs (tarball and package installs alike)."""
        return tuple(PROFILES[self.profile]["packages"])

    @property
    def package_probes(self) -> dict[str, tuple[str, ...]]:
        """Each profile package's command that proves its tool runs."""
        return {name: probe for name, (_, probe) in PROFILES[self.profile]["packages"].items()}


# --- the image ---------------------------------------------------------------------------------------

#: What each image.os is: its Debian suite, the containerd families imagebuild installs there (a
#: Debian 13 guest has no containerd 1.6: Debian dropped it, and its runc needs glibc 2.38, trixie's;
#: 2.0 and 2.2-2.4 are upstream's static builds, so tarball installs only, see package_families),
#: and the containerd version its own package is (None: no rule, as before image.os existed).
OS_RELEASES: dict[str, dict[str, Any]] = {
    "debian-12": {"suite": "bookworm", "families": ("1.6", "1.7", "2.0", "2.1", "2.2", "2.3", "2.4"),
                  "package_version": None},
    "debian-13": {"suite": "trixie", "families": ("1.7", "2.0", "2.1", "2.2", "2.3", "2.4"),
                  "package_version": "1.7.24"},
}


class BaseImage(Section):
    """base image for the qemu build; null uses `imagebuild base-image`"""

    source: Annotated[str, Text(r"^[A-Za-z0-9._~%/:+@=-]+$", "a URL or path without spaces or quotes")] = Field(
        description="URL or path of a qcow2 cloud image; an http:// URL needs insecure: true")
    checksum: Annotated[str, Text(r"^sha256:[0-9a-f]{64}$", "sha256: followed by 64 hex digits")] = Field(
        description="sha256:<hex> of the base image")
    boot_mode: Literal["legacy-bios", "uefi", "uefi-preferred"] | None = Field(
        None, description="firmware the base image boots under (uefi-preferred: BIOS and UEFI); it decides the "
        "verify boot's firmware and the AMI's boot mode; null: legacy-bios on amd64, uefi on arm64")
    insecure: Bool = Field(
        False, description="allow an http:// source (a lab mirror); false: an http:// source is a spec error "
        "(the checksum still pins the image)")


class SandboxArchive(Section):
    """an OCI image archive (`ctr images export`, `skopeo copy ... oci-archive:`) holding the sandbox image"""

    url: Annotated[str, Text(r"^(https://|file:///|/)[A-Za-z0-9._~%/:+@=-]+$",
                             "an https:// or file:// URL, or an absolute path on the build host, without "
                             "spaces, quotes or shell characters")] = Field(
        description="where the bake reads it")
    sha256: Sha256 = Field(description="sha256 of the archive file: checked before anything is read from it")


class Sandbox(Section):
    """where the bake gets the sandbox image (config.sandbox_image) it puts into the image, pinned"""

    source: Literal["registry", "archive", "none"] = Field(
        "registry", description="registry: the build VM pulls config.sandbox_image through CRI, from its "
        "registry through config.registry's mirrors; archive: imported from sandbox.archive, whose image must "
        "carry that name; none: not baked (kubelet pulls it for the first pod)")
    archive: SandboxArchive | None = Field(None, description=SandboxArchive.__doc__)


Account = Annotated[str, Text(AWS_ACCOUNT, "a 12-digit account id")]
TagKey = Annotated[str, Key(TAG_KEY, "tag keys of 1-127 letters, digits and  _.:/=+@-")]
TagValue = Annotated[str, Text(TAG_VALUE, "tag text of at most 255 letters, digits and  _.:/=+@-")]
KmsKeyArn = Annotated[str, Text(KMS_KEY_ARN, "a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>)")]
OuArn = Annotated[str, Text(OU_ARN, "arn:aws:organizations::<account>:ou/o-.../ou-...")]


class Aws(Section):
    """amazon-ebs build, publishing and retention"""

    region: Region = Field("us-east-1", description="home region")
    copy_regions: Annotated[tuple[Region, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="regions the AMI is copied to")
    share_with_accounts: Annotated[tuple[Account, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="account ids given launch permission")
    ssm_parameter: Annotated[str, Text(SSM_NAME, "an SSM parameter path")] | None = Field(
        None, description="SSM parameter that holds the newest AMI id; default /imagebuild/<name>/latest")
    keep: Annotated[int, Int(1, 1000)] = Field(3, description="AMIs of this family kept per region by prune")
    tags: Annotated[dict[TagKey, TagValue], keys_schema(TAG_KEY)] = Field(
        default_factory=dict, description="extra tags on AMIs and snapshots (EBS StartSnapshot's limits: keys up "
        "to 127, values up to 255 characters; keys starting with aws: or imagebuild: are reserved)")
    source_ami_name: Annotated[str, Text(r"^[A-Za-z0-9 _.*?/()-]+$", "an AMI name filter")] | None = Field(
        None, description="source_ami_filter name for the amazon-ebs build; null: Debian's own AMIs of image.os "
        "and image.architecture (debian-12-amd64-*, debian-13-arm64-*, ...)")
    source_ami_owners: tuple[Annotated[str, Text(r"^([0-9]{12}|self|amazon|aws-marketplace)$",
                                  "an account id, self, amazon")], ...] = Field(
        ("136693071363",), description="owners of the source AMI")
    instance_type: Annotated[str, Text(r"^[a-z0-9]+\.[a-z0-9]+$", "an instance type like t3.small")] | None = Field(
        None, description="build instance type, of image.architecture (arm64: a Graviton type); null: "
        "t3.small (amd64), t4g.small (arm64)")
    volume_size_gb: Annotated[int, Int(2, 16384)] = Field(8, description="gp3 root volume size in GiB")
    encrypt_boot: Bool = Field(False, description="encrypt the AMI's root snapshot")
    kms_keys: Annotated[dict[Annotated[str, Key(AWS_REGION, "region names")], KmsKeyArn],
                        keys_schema(AWS_REGION)] = Field(
        default_factory=dict, description="KMS key ARN per region for encrypt_boot (home and every copy region); "
        "empty uses the account's default EBS key")
    share_with_organizations: Annotated[tuple[Annotated[str, Text(
        ORG_ARN, "arn:aws:organizations::<account>:organization/o-...")], ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="organization ARNs given launch permission")
    share_with_ous: Annotated[tuple[OuArn, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="organizational unit ARNs given launch permission")
    ssm_all_regions: Bool = Field(
        False, description="also set ssm_parameter in every copy region (to that region's AMI)")
    deprecate_after_days: Annotated[int, Int(1, 36500)] | None = Field(
        None, description="publish marks the AMI deprecated this many days after its build "
        "(EnableImageDeprecation); null: never")
    lock_table: Annotated[str, Text(r"^[A-Za-z0-9_.-]{3,255}$", "a DynamoDB table name")] | None = Field(
        None, description="DynamoDB table in the home region (string partition key `lock`) whose lease makes "
        "publish and prune of this family one at a time across machines; null: one at a time on each machine only")

    @model_validator(mode="after")
    def _rules(self) -> Aws:
        """Rules between the keys of this section (the spec's image.aws and a publish target alike)."""
        found: list[tuple[str, str]] = []
        if self.region in self.copy_regions:
            found.append(("copy_regions", f"got {self.region!r}, the home region; list only the regions the AMI "
                          "is copied to"))
        if len(self.tags) > 41:
            found.append(("tags", f"got {len(self.tags)} tags, expected at most 41 (AWS takes 50 a resource; "
                          "imagebuild adds 9 of its own)"))
        for key in self.tags:
            if key.lower().startswith(RESERVED_TAG_PREFIXES):
                found.append((f"tags.{key}", "keys starting with aws: or imagebuild: are reserved, in any case "
                              "(AWS reserves aws:, and imagebuild: keys are set by imagebuild)"))
        if self.encrypt_boot and self.share_with_accounts and not self.kms_keys:
            found.append(("share_with_accounts", f"got {show(list(self.share_with_accounts))} with encrypt_boot: "
                          "true, but an AMI encrypted with the default KMS key cannot be shared (Packer refuses "
                          "it); set kms_keys to customer managed keys, or share it unencrypted"))
        if self.kms_keys:
            if not self.encrypt_boot:
                found.append(("kms_keys", "set with encrypt_boot: false; the keys would be ignored, expected "
                              "encrypt_boot: true"))
            for region in self.regions:
                if region not in self.kms_keys:
                    found.append((f"kms_keys.{region}", "missing: a KMS key is region-bound, expected a key ARN "
                                  "for the home region and every copy region"))
            for region, arn in self.kms_keys.items():
                if f":kms:{region}:" not in arn:
                    found.append((f"kms_keys.{region}", f"got {show(arn)}, expected a key of region {region}"))
        found += section_problems(self)
        if found:
            raise _error("; ".join(message for _, message in found), problems=found)
        return self

    @property
    def regions(self) -> list[str]:
        return [self.region, *self.copy_regions]

    def kms_key(self, region: str) -> str | None:
        """The KMS key for *region* (None: the account's default EBS key, or no encryption)."""
        return self.kms_keys.get(region) if self.encrypt_boot else None


class Image(Section):
    """the image Packer bakes"""

    os: Literal["debian-12", "debian-13"] = Field(
        "debian-12", description="distribution release of the image: the base image recipe (Debian 12 bookworm "
        "or Debian 13 trixie) and the suite of package installs; on debian-13, containerd 1.7 or 2.x (package "
        "installs: 1.7.24, what trixie ships). The default stays debian-12 under apiVersion imagebuild/v1: the "
        "default containerd is the seed's 1.6, which Debian 13 does not ship, and a spec that leaves image.os "
        "out keeps meaning the image it meant (docs/platforms.md: why the default stays debian-12)")
    architecture: Literal["amd64", "arm64"] = Field(
        "amd64", description="CPU architecture of the image: amd64 images boot under BIOS and UEFI "
        "(uefi-preferred AMIs), arm64 (Graviton) under UEFI only")
    base: BaseImage | None = Field(None, description=BaseImage.__doc__)
    disk_size_gb: Annotated[int, Int(2, 2048)] = Field(4, description="disk size of the baked image in GiB")
    accelerator: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="QEMU accelerator; auto uses KVM only when a probe shows it works")
    hygiene: Bool = Field(
        True, description="clean the image before capture: cloud-init state, machine-id, SSH host keys, "
        "apt lists, logs, fstrim")
    sandbox: Sandbox = Field(default_factory=Sandbox, description=Sandbox.__doc__)
    packer_version: Annotated[str, Text(r"^[0-9]+\.[0-9]+$", "a version like 1.6")] = Field(
        "1.6", description="Packer version the template targets; from 1.7: required_plugins (the tested qemu "
        "and amazon plugin releases) and an IMDSv2-only amazon-ebs build")
    aws: Aws = Field(default_factory=Aws, description=Aws.__doc__)

    @property
    def ec2_architecture(self) -> str:
        """image.architecture as EC2 names it (x86_64, arm64)."""
        return EC2_ARCHITECTURES[self.architecture]

    @property
    def source_ami_name(self) -> str:
        """The amazon-ebs build's source AMI name filter: image.aws.source_ami_name or Debian's of os and arch."""
        return self.aws.source_ami_name or f"{self.os}-{self.architecture}-*"

    @property
    def instance_type(self) -> str:
        """The amazon-ebs build's instance type: image.aws.instance_type or the architecture's default."""
        return self.aws.instance_type or BUILD_INSTANCE_TYPES[self.architecture]


#: image.architecture -> EC2's Architecture, and the default amazon-ebs build instance type (Graviton for arm64).
EC2_ARCHITECTURES = {"amd64": "x86_64", "arm64": "arm64"}
BUILD_INSTANCE_TYPES = {"amd64": "t3.small", "arm64": "t4g.small"}


class Check(Section):
    """a check"""

    name: Annotated[str, Text(CHECK_NAME, "lowercase letters, digits, ._-")] = Field(description="check name")
    run: Annotated[str, Text(multiline=True)] = Field(
        description="shell command (bash script, several lines allowed) run as root in the guest")


class Verify(Section):
    """the in-guest check that proves an image"""

    timeout: Annotated[int, Int(30, 7200)] = Field(
        900, description="seconds from QEMU start until the check must have reported")
    checks: tuple[Check, ...] = Field((), description="extra checks: a shell command run in the guest; "
                                      "exit 0 passes; IMAGEBUILD_CHECK_PHASE says where: build (the bake's build "
                                      "VM, or verify.on_boot) or boot (a verify boot)")
    on_boot: Bool = Field(
        False, description="also run the in-guest check (what the bake's build VM checks: versions, config, "
        "files, unit, system, and verify.checks) once after the install on every machine given this user-data: "
        "check.py and expected.json (about 23 KB) then go into the user-data, the results into "
        "/var/log/imagebuild-check.log (root, 0600), and cloud-init's final stage fails when a check fails")


#: The spec sections a variant may set (a partial spec, merged over the base spec): not apiVersion (one spec
#: version), not name (a variant's family is derived: <name>-<variant>), not variants or matrix (no nesting).
VARIANT_SECTIONS = ("containerd", "config", "unit", "proxy", "system", "image", "verify")
_PARTIAL = "a partial spec section, merged over the base spec's (a mapping key by key; a list or a value replaces)"


class Variant(Section):
    """a named variant: sections of a partial spec merged over this spec; its family is <name>-<variant>"""

    containerd: dict[str, Any] | None = Field(None, description=f"containerd: {_PARTIAL}")
    config: dict[str, Any] | None = Field(None, description=f"config: {_PARTIAL}")
    unit: dict[str, Any] | None = Field(None, description=f"unit: {_PARTIAL}")
    proxy: dict[str, Any] | None = Field(None, description=f"proxy: {_PARTIAL}")
    system: dict[str, Any] | None = Field(None, description=f"system: {_PARTIAL}")
    image: dict[str, Any] | None = Field(None, description=f"image: {_PARTIAL}")
    verify: dict[str, Any] | None = Field(None, description=f"verify: {_PARTIAL}")


RunnerLabel = Annotated[str, Text(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", "a runner label: letters, digits, ._-")]


class GithubRunners(Section):
    """the GitHub Actions runner label (runs-on) of each image.architecture"""

    amd64: RunnerLabel = Field("ubuntu-24.04", description="runs-on of amd64 variants")
    arm64: RunnerLabel = Field("ubuntu-24.04-arm", description="runs-on of arm64 variants (GitHub's hosted arm64 "
                               "runner; a self-hosted runner's label works too)")


class GitlabTags(Section):
    """the GitLab CI runner tags of each image.architecture"""

    amd64: Annotated[tuple[RunnerLabel, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        (), description="tags of amd64 jobs (none: the instance's default runners)")
    arm64: Annotated[tuple[RunnerLabel, ...], UNIQUE, UNIQUE_SCHEMA] = Field(
        ("saas-linux-small-arm64",), description="tags of arm64 jobs (GitLab.com's hosted arm64 runner)")


class Matrix(Section):
    """how `imagebuild matrix --format` runs the variants on a CI engine"""

    github_runners: GithubRunners = Field(default_factory=GithubRunners, description=GithubRunners.__doc__)
    gitlab_tags: GitlabTags = Field(default_factory=GitlabTags, description=GitlabTags.__doc__)
    setup: tuple[Annotated[str, Text(multiline=True)], ...] = Field(
        (), description="shell commands every job runs first (install imagebuild, QEMU, Packer); none: the "
        "runner has them")
    work_dir: Annotated[str, Text(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", "a relative path")] = Field(
        "imagebuild-work", description="each job's work directory is <work_dir>/<variant>")


VariantName = Annotated[str, Key(NAME, "lowercase letters, digits and -, at most 63 (a DNS label)")]


class Spec(Section):
    """imagebuild spec: one file -> containerd config, user-data, Packer template, verified image"""

    apiVersion: ApiVersion = Field(
        API_VERSION, description=f"spec version ({', '.join(API_VERSIONS)}); a spec without it is read as "
        f"{API_VERSIONS[0]}")
    name: Name = Field(
        "containerd-golden", description="image family name: output file names, AMI names and tags")
    containerd: Containerd = Field(default_factory=Containerd, description=Containerd.__doc__)
    config: Config = Field(default_factory=Config, description=Config.__doc__)
    unit: Unit = Field(default_factory=Unit, description=Unit.__doc__)
    proxy: Proxy = Field(default_factory=Proxy, description=Proxy.__doc__)
    system: System = Field(default_factory=System, description=System.__doc__)
    image: Image = Field(default_factory=Image, description=Image.__doc__)
    verify: Verify = Field(default_factory=Verify, description=Verify.__doc__)
    variants: Annotated[dict[VariantName, Variant], keys_schema(NAME)] = Field(
        default_factory=dict, description="named variants of this spec (`imagebuild matrix`): each a partial spec "
        "merged over this one and validated as a whole spec; its family (name) is <name>-<variant>")
    matrix: Matrix = Field(default_factory=Matrix, description=Matrix.__doc__)

    _warnings: tuple[str, ...] = PrivateAttr(())
    _notices: tuple[str, ...] = PrivateAttr(())
    _document: dict = PrivateAttr(default_factory=dict)
    _expanded: dict = PrivateAttr(default_factory=dict)  # variant -> its whole Spec (load sets it)

    @model_validator(mode="after")
    def _download_arch(self) -> Spec:
        # {arch} in the download URLs is image.architecture (set on the model only, like the tarball's version).
        install = self.containerd.install
        for art in (install.tarball, install.runc, install.cni_plugins):
            if art is not None:
                art._arch = self.image.architecture
        return self

    def __eq__(self, other: object) -> bool:
        """Specs are equal when their settings are: how they were read (warnings, notices, the
        document's layout) does not count."""
        if not isinstance(other, Spec):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # it holds mappings

    @property
    def warnings(self) -> tuple[str, ...]:
        """What is legal but questionable in the spec (the CLI prints each)."""
        return self._warnings

    @property
    def notices(self) -> tuple[str, ...]:
        """How the spec was read (an older spec version): worth a line on stderr, not a warning."""
        return self._notices

    @property
    def document(self) -> dict:
        """The effective spec: the document with defaults filled in (spec.json); it loads back as is."""
        return self._document

    def variant(self, name: str) -> Spec:
        """The variant *name* as a whole spec (merged over this one and validated when it was loaded)."""
        if name not in self._expanded:
            known = ", ".join(sorted(self._expanded)) or "none: the spec has no variants"
            raise KeyError(f"got {name!r}, expected a variant of the spec ({known})")
        return self._expanded[name]

    @property
    def expanded(self) -> dict[str, Spec]:
        """variant -> the variant as a whole spec, in the spec's order."""
        return dict(self._expanded)

    @property
    def spec_hash(self) -> str:
        """sha256 of the normalised spec: equal specs hash equal, whatever their YAML layout."""
        canonical = json.dumps(self.document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
