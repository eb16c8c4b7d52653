"""prune() against a real moto server: newest N kept, used AMIs protected, the rest deleted."""
from __future__ import annotations

import time
from datetime import UTC
from urllib.parse import parse_qs

import pytest

from imagebuild.aws import PublishTarget
from imagebuild.aws.prune import format_table, newest_first_key, prune
from imagebuild.aws.publish import publish
from tests.aws.fixtures import ec2_answer

HOME = "eu-west-1"
COPY = "us-west-2"
FAMILY = "containerd-golden"
PARAM = "/imagebuild/containerd-golden/latest"


def target(**changes) -> PublishTarget:
    values = dict(region=HOME, copy_regions=[COPY], share_with_accounts=[], ssm_parameter=PARAM, keep=2,
                  tags={}, family=FAMILY)
    values.update(changes)
    return PublishTarget(**values)


def seed(ec2, region, name, build_time, family=FAMILY):
    """An AMI of *family* like publish makes, plus a snapshot tagged as its upload."""
    image_id = ec2.register_image(
        Name=name, RootDeviceName="/dev/xvda", Architecture="x86_64", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 1}}],
    )["ImageId"]
    ec2.create_tags(Resources=[image_id], Tags=[
        {"Key": "imagebuild:family", "Value": family},
        {"Key": "imagebuild:build-time", "Value": build_time},
    ])
    volume = ec2.create_volume(Size=1, AvailabilityZone=f"{region}a")["VolumeId"]
    upload = ec2.create_snapshot(VolumeId=volume, TagSpecifications=[{
        "ResourceType": "snapshot",
        "Tags": [{"Key": "imagebuild:image-id", "Value": image_id}, {"Key": "imagebuild:family", "Value": family}],
    }])["SnapshotId"]
    ec2.delete_volume(VolumeId=volume)
    (image,) = ec2.describe_images(ImageIds=[image_id])["Images"]
    mapped = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    return image_id, {upload, *mapped}


def own_images(ec2):
    return {i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]}


def own_snapshots(ec2):
    return {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}


@pytest.fixture
def seeded(aws, boto):
    home, copy = boto("ec2", HOME), boto("ec2", COPY)
    ami, snaps = {}, {}
    for n in range(8):
        ami[f"a{n}"], snaps[f"a{n}"] = seed(home, HOME, f"{FAMILY}-2026010{n + 1}T000000Z",
                                            f"2026-01-0{n + 1}T00:00:00Z")
    for n in range(4):
        ami[f"b{n}"], snaps[f"b{n}"] = seed(copy, COPY, f"{FAMILY}-2026020{n + 1}T000000Z",
                                            f"2026-02-0{n + 1}T00:00:00Z")
    ami["other"], snaps["other"] = seed(home, HOME, "another-family-1", "2025-01-01T00:00:00Z", family="other")

    # instances: a4 running, a0 stopped, a5 only by a terminated one
    def run(ec2, image_id):
        started = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t3.micro")
        return started["Instances"][0]["InstanceId"]
    run(home, ami["a4"])
    home.stop_instances(InstanceIds=[run(home, ami["a0"])])
    home.terminate_instances(InstanceIds=[run(home, ami["a5"])])

    # launch template: v1 a2 (old), v2 a3 (default), v3 a7 (latest)
    template = home.create_launch_template(LaunchTemplateName="nodes", LaunchTemplateData={"ImageId": ami["a2"]})
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    home.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": ami["a3"]})
    home.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion="2")
    home.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": ami["a7"]})

    # SSM parameter of the target names a1; in the copy region a template resolves b0 through SSM
    boto("ssm", HOME).put_parameter(Name=PARAM, Value=ami["a1"], Type="String", DataType="aws:ec2:image")
    boto("ssm", COPY).put_parameter(Name="/nodes/ami", Value=ami["b0"], Type="String", DataType="aws:ec2:image")
    copy.create_launch_template(LaunchTemplateName="nodes", LaunchTemplateData={"ImageId": "resolve:ssm:/nodes/ami"})
    return ami, snaps


EXPECTED = {
    "a7": "keep", "a6": "keep", "a5": "delete", "a4": "keep", "a3": "keep", "a2": "keep",
    "a1": "keep", "a0": "keep",
    "b3": "keep", "b2": "keep", "b1": "delete", "b0": "keep",
}


def test_dry_run_decides_and_changes_nothing(seeded, boto, clients):
    ami, _ = seeded
    home, copy = boto("ec2", HOME), boto("ec2", COPY)
    before = (own_images(home), own_images(copy), own_snapshots(home), own_snapshots(copy))
    decisions = prune(target(), clients=clients)
    assert (own_images(home), own_images(copy), own_snapshots(home), own_snapshots(copy)) == before

    by_id = {d.ami_id: d for d in decisions}
    names = {v: k for k, v in ami.items()}
    assert {names[d.ami_id]: d.action for d in decisions} == EXPECTED
    assert ami["other"] not in by_id
    # newest first per region, home first
    assert [names[d.ami_id] for d in decisions] == ["a7", "a6", "a5", "a4", "a3", "a2", "a1", "a0",
                                                    "b3", "b2", "b1", "b0"]
    assert "newest 2" in by_id[ami["a7"]].reason
    assert "running instance" in by_id[ami["a4"]].reason
    assert "stopped instance" in by_id[ami["a0"]].reason
    assert "default version 2 of launch template nodes" in by_id[ami["a3"]].reason
    assert "version 1 of launch template nodes" in by_id[ami["a2"]].reason  # neither $Default nor $Latest
    assert "SSM parameter" in by_id[ami["a1"]].reason
    assert "via /nodes/ami" in by_id[ami["b0"]].reason
    assert all(d.result == "" for d in decisions)

    table = format_table(decisions)
    assert table.splitlines()[0].split() == ["REGION", "AMI", "NAME", "BUILT", "ACTION", "REASON"]
    assert ami["a5"] in table and "12 AMIs: 10 kept, 2 to delete" in table


def test_apply_deletes_the_rest_with_their_snapshots(seeded, boto, clients):
    ami, snaps = seeded
    home, copy = boto("ec2", HOME), boto("ec2", COPY)
    decisions = prune(target(), clients=clients, apply=True)
    deleted = {k for k, action in EXPECTED.items() if action == "delete"}
    kept = set(EXPECTED) - deleted
    assert {d.ami_id for d in decisions if d.result == "deleted"} == {ami[k] for k in deleted}

    images = own_images(home) | own_images(copy)
    snapshots = own_snapshots(home) | own_snapshots(copy)
    for key in deleted:
        assert ami[key] not in images
        assert not (snaps[key] & snapshots), f"snapshots of {key} left behind"
    for key in kept | {"other"}:
        assert ami[key] in images
        assert snaps[key] <= snapshots

    # a second run finds nothing more to delete
    again = prune(target(), clients=clients, apply=True)
    assert all(d.action == "keep" for d in again) and len(again) == len(kept)


def test_regions_argument_limits_the_scope(seeded, boto, clients):
    decisions = prune(target(), clients=clients, regions=[COPY])
    assert {d.region for d in decisions} == {COPY}


def test_prune_after_real_publishes(aws, boto, make_image, clients):
    """Two published builds, keep 1: the older AMI and the snapshot publish uploaded for it go."""
    publish_target = target(copy_regions=[], keep=1)
    old_dir, _ = make_image(build_time="2026-03-01T10:00:00Z")
    new_dir, _ = make_image(build_time="2026-03-02T10:00:00Z")
    old = publish(old_dir, publish_target, progress=lambda p: None, poll_interval=0.01, clients=clients)
    new = publish(new_dir, publish_target, progress=lambda p: None, poll_interval=0.01, clients=clients)
    ec2 = boto("ec2", HOME)
    assert boto("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == new["images"][HOME]["id"]

    decisions = prune(publish_target, apply=True, clients=clients)
    assert [(d.ami_id, d.action, d.result) for d in decisions] == [
        (new["images"][HOME]["id"], "keep", ""),
        (old["images"][HOME]["id"], "delete", "deleted"),
    ]
    assert own_images(ec2) == {new["images"][HOME]["id"]}
    snapshots = own_snapshots(ec2)
    assert old["snapshot"]["id"] not in snapshots
    assert new["snapshot"]["id"] in snapshots


def test_sort_falls_back_to_creation_date():
    tagged = {"ImageId": "ami-1", "Tags": [{"Key": "imagebuild:build-time", "Value": "2026-01-01T00:00:00Z"}],
              "CreationDate": "2020-01-01T00:00:00.000Z"}
    untagged = {"ImageId": "ami-2", "CreationDate": "2026-06-01T00:00:00.000Z"}
    broken = {"ImageId": "ami-3", "Tags": [{"Key": "imagebuild:build-time", "Value": "yesterday"}]}
    ordered = sorted([tagged, broken, untagged], key=newest_first_key)
    assert [i["ImageId"] for i in ordered] == ["ami-2", "ami-1", "ami-3"]


# --------------------------------------------------------------------------- what else uses an AMI



def _fresh(home, count=5):
    return [seed(home, HOME, f"{FAMILY}-2026030{n + 1}T000000Z", f"2026-03-0{n + 1}T00:00:00Z")[0]
            for n in range(count)]


def test_auto_scaling_groups_pinned_versions_and_launch_configurations_protect(aws, boto, clients):
    home = boto("ec2", HOME)
    n0, n1, n2, n3, n4 = _fresh(home)
    template = home.create_launch_template(LaunchTemplateName="pinned", LaunchTemplateData={"ImageId": n1})
    template_id = template["LaunchTemplate"]["LaunchTemplateId"]
    home.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": n2})
    home.modify_launch_template(LaunchTemplateId=template_id, DefaultVersion="2")
    home.create_launch_template_version(LaunchTemplateId=template_id, LaunchTemplateData={"ImageId": n4})
    autoscaling = boto("autoscaling", HOME)
    autoscaling.create_auto_scaling_group(AutoScalingGroupName="old-nodes", MinSize=0, MaxSize=0,
                                          AvailabilityZones=[f"{HOME}a"],
                                          LaunchTemplate={"LaunchTemplateId": template_id, "Version": "1"})
    autoscaling.create_launch_configuration(LaunchConfigurationName="legacy", ImageId=n0, InstanceType="t3.micro")
    decisions = {d.ami_id: d for d in prune(target(copy_regions=[], keep=1), clients=clients)}
    assert {k: decisions[v].action for k, v in dict(n0=n0, n1=n1, n2=n2, n3=n3, n4=n4).items()} == {
        "n0": "keep", "n1": "keep", "n2": "keep", "n3": "delete", "n4": "keep"}
    assert "Auto Scaling group old-nodes (launch template pinned version 1)" in decisions[n1].reason
    assert "launch configuration legacy" in decisions[n0].reason
    assert "default version 2 of launch template pinned" in decisions[n2].reason


def test_describe_image_references_is_used_where_aws_offers_it(aws, boto, boto_session, clients, api_calls):
    """moto 5.2.5 lacks DescribeImageReferences (HTTP 500): AWS's answer, in the shape of botocore's
    model, is given here; the request the code sends is model-checked like every other."""
    home = boto("ec2", HOME)
    images = _fresh(home, 14)
    arn = f"arn:aws:imagebuilder:{HOME}:123456789012:image-recipe/nodes/1.0.0"

    def references(request, **_):
        return ec2_answer(200, "<DescribeImageReferencesResponse><imageReferenceSet><item>"
                               f"<imageId>{images[0]}</imageId><resourceType>imagebuilder:ImageRecipe</resourceType>"
                               f"<arn>{arn}</arn></item></imageReferenceSet></DescribeImageReferencesResponse>")

    boto_session.events.register_first("before-send.ec2.DescribeImageReferences", references)
    decisions = {d.ami_id: d for d in prune(target(copy_regions=[], keep=2), clients=clients)}
    assert decisions[images[0]].action == "keep" and arn in decisions[images[0]].reason
    assert decisions[images[1]].action == "delete"
    sent = api_calls.params("ec2:DescribeImageReferences")
    assert [len(p["ImageIds"]) for p in sent] == [10, 2]  # the model allows 10 ids a request
    assert all(p["IncludeAllResourceTypes"] is True for p in sent)


def test_without_describe_image_references_the_scans_still_decide(aws, boto, clients, api_calls):
    home = boto("ec2", HOME)
    images = _fresh(home, 3)
    home.run_instances(ImageId=images[0], MinCount=1, MaxCount=1, InstanceType="t3.micro")
    decisions = {d.ami_id: d for d in prune(target(copy_regions=[], keep=1), clients=clients)}
    assert "ec2:DescribeImageReferences" in api_calls.actions()  # asked, answered InvalidAction
    assert decisions[images[0]].action == "keep" and "running instance" in decisions[images[0]].reason
    assert decisions[images[1]].action == "delete"


def test_deregistration_protection_keeps_an_ami(aws, boto, boto_session, clients):
    """moto 5.2.5 does not report DeregistrationProtection; AWS's field is added to its answer."""
    home = boto("ec2", HOME)
    images = _fresh(home, 3)

    def protect(parsed, **_):
        for image in parsed.get("Images", []):
            if image["ImageId"] == images[0]:
                image["DeregistrationProtection"] = "enabled-with-cooldown"

    boto_session.events.register("after-call.ec2.DescribeImages", protect)
    decisions = {d.ami_id: d for d in prune(target(copy_regions=[], keep=1), clients=clients, apply=True)}
    assert decisions[images[0]].action == "keep"
    assert "deregistration protection is enabled-with-cooldown" in decisions[images[0]].reason
    assert decisions[images[1]].result == "deleted"


def _last_launched(image_id, when):
    return ec2_answer(200, f"<DescribeImageAttributeResponse><imageId>{image_id}</imageId><lastLaunchedTime>"
                           f"<value>{when}</value></lastLaunchedTime></DescribeImageAttributeResponse>")


@pytest.mark.parametrize("last_launch, action", [(None, "keep"), ("recent", "keep"), ("old", "delete")])
def test_shared_amis_stay_while_other_accounts_may_use_them(aws, boto, boto_session, clients, last_launch, action):
    """Where image usage reports are not available, lastLaunchedTime (any account's launch)
    decides. moto 5.2.5 lacks that attribute: without an answer it cannot be read."""
    from datetime import datetime, timedelta

    home = boto("ec2", HOME)
    images = _fresh(home, 2)
    home.modify_image_attribute(ImageId=images[0], LaunchPermission={"Add": [{"UserId": "111122223333"}]})
    if last_launch:
        days = 3 if last_launch == "recent" else 90
        when = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")

        def answer(request, **_):
            body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
            return _last_launched(images[0], when) if "lastLaunchedTime" in body else None

        boto_session.events.register_first("before-send.ec2.DescribeImageAttribute", answer)
    (decision,) = [d for d in prune(target(copy_regions=[], keep=1), clients=clients) if d.ami_id == images[0]]
    assert decision.action == action, decision.reason
    # moto lacks image usage reports (InvalidAction): the plan says the last-launch rule decided
    assert "image usage reports not available here (InvalidAction)" in decision.reason


def test_deregister_deletes_associated_snapshots_and_orphans_are_swept(aws, boto, clients, api_calls):
    home = boto("ec2", HOME)
    images = [seed(home, HOME, f"{FAMILY}-2026040{n + 1}T000000Z", f"2026-04-0{n + 1}T00:00:00Z") for n in range(3)]
    (gone, gone_snaps) = images[0]
    # publish tags every snapshot of its AMIs with the family and the AMI id (finish_image)
    home.create_tags(Resources=sorted(gone_snaps), Tags=[{"Key": "imagebuild:family", "Value": FAMILY},
                                                         {"Key": "imagebuild:image-id", "Value": gone}])
    home.deregister_image(ImageId=gone)  # as if prune's snapshot delete had failed after this
    decisions = prune(target(copy_regions=[], keep=1), clients=clients, apply=True)
    orphans = [d for d in decisions if d.kind == "snapshot"]
    assert orphans and all(d.ami_id == gone and d.result == "deleted" for d in orphans)
    assert not (gone_snaps & own_snapshots(home))
    assert all(p["DeleteAssociatedSnapshots"] is True for p in api_calls.params("ec2:DeregisterImage"))
    assert [p["ImageId"] for p in api_calls.params("ec2:DeregisterImage")] == [images[1][0]]
    assert "snapshots of AMIs that no longer exist" in format_table(decisions)
    # the snapshots of the AMIs that exist are not touched
    assert images[2][1] <= own_snapshots(home)


# --------------------------------------------------------------------------- image usage reports

SHARED_WITH = "111122223333"


class UsageReports:
    """AWS's image usage report APIs, which moto 5.2.5 lacks, answered in the shapes of botocore's
    ec2 model through `before-send` (the requests are model-checked and recorded as usual).

    *used*: image id -> [(account, resource type, count)]; *state*: what DescribeImageUsageReports
    says of every report."""

    def __init__(self, session, used=None, state="available", reason=""):
        self.used, self.state, self.reason = used or {}, state, reason
        self.reports: dict[str, str] = {}  # report id -> image id
        self.polls = 0
        for operation in ("CreateImageUsageReport", "DescribeImageUsageReports", "DescribeImageUsageReportEntries"):
            session.events.register_first(f"before-send.ec2.{operation}", getattr(self, operation.lower()))

    @staticmethod
    def _form(request):
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        return {k: v[0] for k, v in parse_qs(body).items()}

    def _asked(self, form):
        """The report ids a Describe request names (ReportId.N), each one this account created."""
        return [self.reports[v] and v for k, v in form.items() if k.startswith("ReportId.")]

    def createimageusagereport(self, request, **_):
        report_id = f"amiur-{len(self.reports):017x}"
        self.reports[report_id] = self._form(request)["ImageId"]
        return ec2_answer(200, f"<CreateImageUsageReportResponse><reportId>{report_id}</reportId>"
                               "</CreateImageUsageReportResponse>")

    def describeimageusagereports(self, request, **_):
        self.polls += 1
        items = "".join(
            f"<item><reportId>{r}</reportId><imageId>{self.reports[r]}</imageId><state>{self.state}</state>"
            + (f"<stateReason>{self.reason}</stateReason>" if self.reason else "") + "</item>"
            for r in self._asked(self._form(request)))
        return ec2_answer(200, f"<DescribeImageUsageReportsResponse><imageUsageReportSet>{items}"
                               "</imageUsageReportSet></DescribeImageUsageReportsResponse>")

    def describeimageusagereportentries(self, request, **_):
        items = "".join(
            f"<item><resourceType>{kind}</resourceType><reportId>{r}</reportId><usageCount>{count}</usageCount>"
            f"<accountId>{account}</accountId><imageId>{self.reports[r]}</imageId></item>"
            for r in self._asked(self._form(request)) for account, kind, count in self.used.get(self.reports[r], []))
        return ec2_answer(200, f"<DescribeImageUsageReportEntriesResponse><imageUsageReportEntrySet>{items}"
                               "</imageUsageReportEntrySet></DescribeImageUsageReportEntriesResponse>")


def _shared_images(boto, count=3):
    home = boto("ec2", HOME)
    images = _fresh(home, count)
    for image_id in images[:-1]:
        home.modify_image_attribute(ImageId=image_id, LaunchPermission={"Add": [{"UserId": SHARED_WITH}]})
    return images


def test_usage_report_keeps_a_shared_ami_an_account_uses_and_deletes_an_unused_one(
        aws, boto, boto_session, clients, api_calls):
    used, unused, newest = _shared_images(boto)
    reports = UsageReports(boto_session, used={used: [(SHARED_WITH, "ec2:LaunchTemplate", 2)]})
    decisions = {d.ami_id: d for d in prune(target(copy_regions=[], keep=1), clients=clients, apply=True,
                                            poll_interval=0.01)}
    assert decisions[newest].action == "keep"
    assert decisions[used].action == "keep"
    assert f"used by account {SHARED_WITH}: 2 ec2:LaunchTemplate" in decisions[used].reason
    assert decisions[unused].action == "delete" and decisions[unused].result == "deleted"
    assert "image usage report" in decisions[unused].reason and "shows no use" in decisions[unused].reason
    assert own_images(boto("ec2", HOME)) == {used, newest}
    sent = api_calls.params("ec2:CreateImageUsageReport")
    assert sorted(p["ImageId"] for p in sent) == sorted([used, unused])  # only the shared candidates
    assert all(p["AccountIds"] == [SHARED_WITH] for p in sent)
    assert all([t["ResourceType"] for t in p["ResourceTypes"]] == ["ec2:Instance", "ec2:LaunchTemplate"]
               for p in sent)
    assert sorted(reports.reports.values()) == sorted([used, unused])
    # no lastLaunchedTime fallback ran
    assert not [p for p in api_calls.params("ec2:DescribeImageAttribute") if p["Attribute"] == "lastLaunchedTime"]


@pytest.mark.parametrize("state, reason, expected", [
    ("pending", "", "was still pending after 0 s; kept to be safe"),
    ("failed", "internal error", "failed: internal error; kept to be safe"),
])
def test_a_usage_report_that_never_becomes_available_keeps_the_ami(
        aws, boto, boto_session, clients, api_calls, capsys, state, reason, expected):
    stale, _, _ = _shared_images(boto)
    reports = UsageReports(boto_session, state=state, reason=reason)
    started = time.monotonic()
    decisions = {d.ami_id: d for d in prune(target(copy_regions=[], keep=1), clients=clients, apply=True,
                                            usage_report_wait=0.3, poll_interval=0.05)}
    assert time.monotonic() - started < 10  # the wait is bounded
    assert decisions[stale].action == "keep" and expected in decisions[stale].reason, decisions[stale].reason
    assert stale in own_images(boto("ec2", HOME))
    assert not api_calls.params("ec2:DescribeImageUsageReportEntries")
    if state == "pending":
        assert reports.polls > 1
        assert "waiting for 2 of 2 image usage reports" in capsys.readouterr().err
    else:
        assert reports.polls == 1


def test_without_usage_reports_the_last_launch_rule_decides_and_the_plan_says_so(aws, boto, clients, api_calls):
    """moto answers the usage-report APIs InvalidAction (conftest MOTO_GAPS): the fallback runs."""
    stale, _, _ = _shared_images(boto)
    decisions = {d.ami_id: d for d in prune(target(copy_regions=[], keep=1), clients=clients)}
    assert "ec2:CreateImageUsageReport" in api_calls.actions()
    assert "ec2:DescribeImageUsageReports" not in api_calls.actions()
    # lastLaunchedTime cannot be read on moto: kept, and the reason names both facts
    assert decisions[stale].action == "keep"
    assert "last launch time cannot be read (image usage reports not available here (InvalidAction))" \
        in decisions[stale].reason
