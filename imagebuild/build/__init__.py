"""The build stage: the base image, and the bake that turns a spec into a VM image.

- :mod:`.baseimage`   Debian base images built locally (flavors, recipe hash, cache); :mod:`.base_disk` their
  GPT disk and GRUB, :mod:`.base_files` the files their tree gets
- :mod:`.base_source` which base image a spec builds on, and the firmware it boots under
- :mod:`.aptsources`  the one reader of apt's sources (the host's Debian mirror)
- :mod:`.bake`        Packer (qemu) builds the image from the rendered files; writes manifest.json
- :mod:`.oci_archive` a sandbox image from an OCI archive, digest-checked
- :mod:`.lab_ledger`  what the developer tools fabricated, so publish can refuse lab content
- :mod:`.inventory`, :mod:`.sbom`, :mod:`.provenance`, :mod:`.records`  what a bake leaves beside its image:
  the in-build inventory (guest/inventory.py), a CycloneDX SBOM, an in-toto/SLSA provenance record
- :mod:`.image_diff`  what changed between two images (`imagebuild diff`)
"""
