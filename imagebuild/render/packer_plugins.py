"""The Packer plugins a template from `image.packer_version` 1.7 on names in `required_plugins`, and the Packer
they were tested with. Each constraint accepts the tested release and its patch releases only (`~> X.Y.Z`):
`packer init` then never fetches a minor release nobody ran this template with.

The tests run exactly these releases (built from the Go module proxy by the developer tools): the amazon-ebs
build against a local EC2, `packer validate` of both sources."""
from __future__ import annotations

PACKER = "1.16.0"
# name in required_plugins -> (source, tested version)
PLUGINS: dict[str, tuple[str, str]] = {
    "qemu": ("github.com/hashicorp/qemu", "1.0.9"),  # the newest the Go module proxy serves whole (docs/aws.md)
    "amazon": ("github.com/hashicorp/amazon", "1.8.2"),
}


def required_plugins() -> dict[str, dict[str, str]]:
    """{name: {"version": "~> X.Y.Z", "source": ...}} for the template's `required_plugins` block."""
    return {name: {"version": f"~> {version}", "source": source} for name, (source, version) in PLUGINS.items()}
