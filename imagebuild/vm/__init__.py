"""Virtual machines in QEMU, one concern per module (this package imports none of them):

- :mod:`.accel`   the accelerator: KVM only when a probe boot proves it works, else TCG
- :mod:`.disks`   qemu-img (info, overlays, conversion with a progress bar) and ISO seeds
- :mod:`.channel` the results channel: a virtio-serial port, marked lines, tailing a log file
- :mod:`.ec2`     how an EC2 instance looks to its guest (SMBIOS identity, IMDS network, MAC)
- :mod:`.guest`   one watched QEMU guest (:class:`~.guest.Guest`) and :func:`~.guest.boot`

:mod:`imagebuild.qemu` re-exports their public names for the callers of the old module.
"""
