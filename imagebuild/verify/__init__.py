"""The verify stage: boot an image (or the user-data on a base image) in QEMU and check it from inside.

- :mod:`.boot`      one verify boot: the seed, the lab, the guest's report, the table
- :mod:`.cri_lab`   the boot's registry lab: mirrors and the sandbox image served to its throwaway overlay only
- :mod:`.egress`    the lab's proxy-only network: the guest's one way out an HTTP proxy (tinyproxy)
- :mod:`.registry`  a real registry (Debian's docker-registry) as a process on 127.0.0.1
- :mod:`.imds`      an EC2 instance metadata service (IMDSv2) for EC2-style boots
- :mod:`.testimage` the test image the container checks run (never in a baked image)

The in-guest code itself lives in :mod:`imagebuild.guest` (stdlib only; the bake's build VM runs it too).
"""
