"""publish against what AWS documents and moto does not model: eventual consistency right after
RegisterImage and CopyImage, a snapshot slower than the wait, a RegisterImage answer lost on the way,
and StartSnapshot's client token after a kill.

AWS's answers are given in the shapes of botocore's model through `before-send`/`after-call` on the
code's session; every request the code sends is still model-checked and recorded (conftest)."""
from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from imagebuild.aws import PublishTarget
from imagebuild.aws.publish import publish
from imagebuild.errors import ImagebuildError
from tests.aws.fixtures import ec2_answer

HOME = "eu-west-1"
COPY = "us-west-2"


def target(**changes) -> PublishTarget:
    values = dict(region=HOME, copy_regions=[COPY], share_with_accounts=[], ssm_parameter="/imagebuild/golden/latest",
                  keep=2, tags={}, family="containerd-golden")
    values.update(changes)
    return PublishTarget(**values)


def record_of(image_dir):
    return json.loads((image_dir / "publish.json").read_text())


def form(request) -> dict[str, str]:
    body = request.body.decode() if isinstance(request.body, bytes) else str(request.body or "")
    return {k: v[0] for k, v in parse_qs(body).items()}


def not_found(image_id: str):
    return ec2_answer(400, "<Response><Errors><Error><Code>InvalidAMIID.NotFound</Code><Message>The image id "
                           f"'[{image_id}]' does not exist</Message></Error></Errors><RequestID>r</RequestID>"
                           "</Response>")


class NotYetVisible:
    """AWS's eventual consistency: after RegisterImage or CopyImage answered, DescribeImages naming
    the new AMI answers InvalidAMIID.NotFound for its first *n* asks (moto knows the AMI at once)."""

    def __init__(self, session, n: int):
        self.n, self.left, self.answered = n, {}, 0
        for operation in ("RegisterImage", "CopyImage"):
            session.events.register(f"after-call.ec2.{operation}", self.created)
        session.events.register_first("before-send.ec2.DescribeImages", self.describe)

    def created(self, parsed, **_):
        self.left[parsed["ImageId"]] = self.n

    def describe(self, request, **_):
        for key, image_id in form(request).items():
            if key.startswith("ImageId.") and self.left.get(image_id, 0) > 0:
                self.left[image_id] -= 1
                self.answered += 1
                return not_found(image_id)
        return None


def test_an_ami_not_yet_visible_after_register_and_copy_is_waited_for(aws, boto_session, make_image,
                                                                     recording_clients):
    image_dir, _ = make_image()
    unseen = NotYetVisible(boto_session, 3)
    record = publish(image_dir, target(), progress=lambda p: None, clients=recording_clients(), poll_interval=0.01)
    assert record["complete"] is True and set(record["images"]) == {HOME, COPY}
    assert unseen.answered == 6  # three NotFound answers for each new AMI, and then it was there
    assert not any("disappeared" in note or "no longer exists" in note for note in record["notes"])
    assert all(entry["state"] == "available" for entry in record["images"].values())


def test_an_ami_that_never_shows_up_is_still_reported_gone(aws, boto_session, make_image, recording_clients,
                                                           monkeypatch):
    """Negative: the wait is bounded by AWS's consistency window (shortened here)."""
    from imagebuild.aws import recover

    monkeypatch.setattr(recover, "CONSISTENCY_WINDOW_S", 0.5)
    image_dir, _ = make_image()
    NotYetVisible(boto_session, 10**9)
    with pytest.raises(ImagebuildError, match="disappeared before it became available"):
        publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=recording_clients(),
                poll_interval=0.01)
    assert record_of(image_dir)["images"] == {}


def test_a_rerun_right_after_a_kill_waits_for_the_recorded_ami(aws, boto_session, make_image, recording_clients):
    """Killed right after RegisterImage was recorded; the rerun at once gets NotFound for that AMI and
    waits, rather than dropping it from the record (and registering or adopting it again)."""
    image_dir, _ = make_image()
    unseen = NotYetVisible(boto_session, 0)

    def killed(request, **_):
        if any(unseen.left.get(v) is not None for k, v in form(request).items() if k.startswith("ImageId.")):
            raise KeyboardInterrupt

    boto_session.events.register_first("before-send.ec2.DescribeImages", killed, unique_id="kill")
    with pytest.raises(KeyboardInterrupt):
        publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=recording_clients(),
                poll_interval=0.01)
    boto_session.events.unregister("before-send.ec2.DescribeImages", unique_id="kill")
    (image_id,) = unseen.left
    assert record_of(image_dir)["images"][HOME]["id"] == image_id

    unseen.left[image_id] = 3
    rerun = recording_clients()
    record = publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=rerun, poll_interval=0.01)
    assert unseen.answered == 3 and record["complete"] is True
    assert record["images"][HOME]["id"] == image_id and record["images"][HOME]["source"] == "register"
    assert rerun.count("register_image") == 0
    assert not any("no longer exists" in note for note in record["notes"])


class SlowSnapshot:
    """A snapshot AWS takes longer to finish than the wait: DescribeSnapshots says `pending` (moto
    completes a snapshot at once) while `slow` is set. The answer stays in botocore's parsed shape."""

    def __init__(self, session):
        self.slow = True
        session.events.register("after-call.ec2.DescribeSnapshots", self.answer)

    def answer(self, parsed, **_):
        if self.slow:
            for snapshot in parsed.get("Snapshots", []):
                if snapshot.get("State") == "completed":
                    snapshot["State"] = "pending"


def test_a_snapshot_slower_than_the_wait_is_kept_for_the_rerun(aws, boto, boto_session, make_image,
                                                               recording_clients):
    image_dir, _ = make_image()
    slow = SlowSnapshot(boto_session)
    with pytest.raises(ImagebuildError, match=r"snapshot snap-\w+ is still pending after 0 s; it is kept"):
        publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=recording_clients(),
                wait_timeout=0.05, poll_interval=0.01)
    first = record_of(image_dir)["snapshot"]
    assert first["state"] == "completing" and first["id"]
    assert boto("ec2").describe_snapshots(SnapshotIds=[first["id"]])["Snapshots"]  # not deleted

    again = recording_clients()  # a rerun while AWS is still at it: waits again, deletes nothing
    with pytest.raises(ImagebuildError, match="is still pending"):
        publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=again, wait_timeout=0.05,
                poll_interval=0.01)
    assert again.count("start_snapshot") == 0 and again.count("delete_snapshot") == 0
    assert record_of(image_dir)["snapshot"]["id"] == first["id"]

    slow.slow = False  # AWS finished it
    done = recording_clients()
    record = publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=done, poll_interval=0.01)
    assert record["complete"] is True and record["snapshot"]["id"] == first["id"]
    assert first["id"] in record["images"][HOME]["snapshots"]  # (moto adds a snapshot of its own)
    assert done.count("start_snapshot") == 0 and done.count("put_snapshot_block") == 0


def test_a_snapshot_that_ends_in_error_is_still_deleted(aws, boto, boto_session, make_image, recording_clients):
    """Negative: only a snapshot AWS is still completing is kept; one in state error is useless."""
    image_dir, _ = make_image()

    def error(parsed, **_):
        for snapshot in parsed.get("Snapshots", []):
            snapshot["State"] = "error"

    boto_session.events.register("after-call.ec2.DescribeSnapshots", error)
    with pytest.raises(ImagebuildError, match="ended in state 'error' instead of completed; it was deleted"):
        publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=recording_clients(),
                poll_interval=0.01)
    assert record_of(image_dir)["snapshot"] is None
    assert boto("ec2").describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def duplicate(name: str, image_id: str):
    return ec2_answer(400, "<Response><Errors><Error><Code>InvalidAMIName.Duplicate</Code><Message>AMI name "
                           f"{name} is already in use by AMI {image_id}</Message></Error></Errors>"
                           "<RequestID>r</RequestID></Response>")


class LostAnswer:
    """The first RegisterImage reaches AWS, which makes the AMI, but its answer is lost (a read
    timeout); botocore sends it again, and AWS answers InvalidAMIName.Duplicate (RegisterImage takes
    no client token). moto would register a second AMI of the name: the retry is answered as AWS
    does. *foreign*: instead, someone else's AMI of that name appeared first."""

    def __init__(self, session, boto, foreign: bool = False):
        self.sends, self.made, self.boto, self.foreign = 0, None, boto, foreign
        session.events.register_first("before-send.ec2.RegisterImage", self.send)

    def send(self, request, **_):
        import re

        from botocore.exceptions import ReadTimeoutError
        from botocore.httpsession import URLLib3Session

        self.sends += 1
        name = form(request)["Name"]
        if self.sends == 1:
            if self.foreign:
                self.made = self.boto("ec2", HOME).register_image(
                    Name=name, RootDeviceName="/dev/xvda", VirtualizationType="hvm",
                    BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 1}}])["ImageId"]
            else:
                answer = URLLib3Session().send(request)  # AWS gets the request and makes the AMI ...
                self.made = re.search(r"<imageId>(ami-\w+)</imageId>", answer.content.decode()).group(1)
            raise ReadTimeoutError(endpoint_url=request.url)  # ... and its answer is lost
        if self.sends == 2:
            return duplicate(name, self.made)
        return None


def test_a_lost_register_answer_is_adopted_on_the_spot(aws, boto, boto_session, make_image, recording_clients):
    image_dir, _ = make_image()
    lost = LostAnswer(boto_session, boto)
    clients = recording_clients()
    record = publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=clients,
                     poll_interval=0.01)
    assert lost.sends == 2 and clients.count("register_image") == 1  # one call, botocore sent it twice
    assert record["complete"] is True and record["images"][HOME]["id"] == lost.made
    assert record["images"][HOME]["source"] == "adopted"
    assert any("InvalidAMIName.Duplicate" in note for note in record["notes"])
    named = boto("ec2").describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [record["name"]]}])
    assert [i["ImageId"] for i in named["Images"]] == [lost.made]


def test_a_duplicate_name_of_another_image_is_not_adopted(aws, boto, boto_session, make_image, recording_clients):
    """Negative: the AMI that holds the name was not made from this image: refused, not taken over."""
    image_dir, _ = make_image()
    lost = LostAnswer(boto_session, boto, foreign=True)
    with pytest.raises(ImagebuildError, match=r"an AMI named containerd-golden-\w+ already exists \(ami-\w+\) "
                                              "and was not made from this image"):
        publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=recording_clients(),
                poll_interval=0.01)
    assert record_of(image_dir)["images"] == {} and lost.sends == 2


class HonoursClientToken:
    """StartSnapshot as AWS answers it: a ClientToken seen before gets the same snapshot back, in the
    shape of botocore's ebs model (moto makes a new snapshot for every call)."""

    def __init__(self, session):
        self.by_token: dict[str, str] = {}
        self.replayed = 0
        session.events.register_first("before-send.ebs.StartSnapshot", self.send)
        session.events.register_first("before-parameter-build.ebs.StartSnapshot", self.asked)
        session.events.register_first("after-call.ebs.StartSnapshot", self.started)

    @staticmethod
    def asked(params, context, **_):
        context["client_token"] = params.get("ClientToken")

    def started(self, parsed, context, **_):
        self.by_token.setdefault(context["client_token"], parsed["SnapshotId"])

    def send(self, request, **_):
        from botocore.awsrequest import AWSResponse

        from tests.aws.fixtures import _Body

        token = json.loads(request.body)["ClientToken"]
        if token not in self.by_token:
            return None
        self.replayed += 1
        body = {"SnapshotId": self.by_token[token], "OwnerId": "123456789012", "Status": "pending",
                "VolumeSize": 1, "BlockSize": 524288}
        return AWSResponse(request.url, 201, {"Content-Type": "application/json"}, _Body(json.dumps(body).encode()))


def test_one_rerun_recovers_from_a_kill_between_start_snapshot_and_the_record(aws, boto, boto_session, make_image,
                                                                              recording_clients):
    image_dir, _ = make_image()
    tokens = HonoursClientToken(boto_session)

    def killed(**_):
        raise KeyboardInterrupt

    boto_session.events.register("after-call.ebs.StartSnapshot", killed, unique_id="kill")
    with pytest.raises(KeyboardInterrupt):
        publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=recording_clients(),
                poll_interval=0.01)
    boto_session.events.unregister("after-call.ebs.StartSnapshot", unique_id="kill")
    assert record_of(image_dir)["snapshot"]["state"] == "starting"
    (started,) = tokens.by_token.values()  # AWS made it; no record holds it

    rerun = recording_clients()
    record = publish(image_dir, target(copy_regions=[]), progress=lambda p: None, clients=rerun, poll_interval=0.01)
    assert tokens.replayed == 1 and record["complete"] is True
    assert record["snapshot"]["id"] == started and started in record["images"][HOME]["snapshots"]
    assert rerun.count("delete_snapshot") == 0  # the sweep did not take the snapshot the token gives back
    assert boto("ec2").describe_snapshots(SnapshotIds=[started])["Snapshots"][0]["State"] == "completed"
