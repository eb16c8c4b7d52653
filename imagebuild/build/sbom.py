"""The SBOM of a baked image: a CycloneDX 1.5 JSON document made from the image's inventory (build/inventory.py).

It lists, each with a package URL (purl):
- every Debian package dpkg holds installed (`pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`);
- containerd's, runc's and the CNI plugins' binaries, with the version each prints and its sha256
  (`pkg:golang/MODULE@VERSION#SUBPATH` from the Go build information in the binary, else `pkg:generic/NAME@VERSION`);
- every image in containerd's store, in every namespace, by digest (`pkg:oci/NAME@sha256%3A...?repository_url=...`);
- the files imagebuild installed (config.toml, hosts.toml, unit, drop-ins...), by sha256.
The image itself is the document's subject (metadata.component), with its sha256. The document is a pure
function of the inventory and the image's record: the same image gives the same bytes.
"""
from __future__ import annotations

import hashlib
import urllib.parse
import uuid
from typing import Any

from imagebuild import __version__

FORMAT = "CycloneDX 1.5"
#: uuid5 namespace of the document's serial number (urn:uuid), derived from the image's sha256.
SERIAL_NAMESPACE = uuid.UUID("5f8e1d3a-6c1b-4f5e-9a51-0d7a4c2b8e61")


def _enc(text: str, safe: str = "") -> str:
    """One purl component, percent-encoded: only letters, digits, `.-_~` and *safe* stay as they are."""
    return urllib.parse.quote(text, safe=".-_~" + safe)


def purl(kind: str, name: str, version: str | None = None, namespace: str | None = None,
         qualifiers: dict[str, str | None] | None = None, subpath: str | None = None) -> str:
    """A package URL (the purl specification): pkg:TYPE/NAMESPACE/NAME@VERSION?QUALIFIERS#SUBPATH, each
    segment percent-encoded, qualifiers sorted by key, empty ones left out."""
    text = f"pkg:{kind}/"
    if namespace:
        text += "/".join(_enc(part) for part in namespace.split("/")) + "/"
    text += _enc(name)
    if version:
        text += "@" + _enc(version)
    pairs = sorted((k, v) for k, v in (qualifiers or {}).items() if v)
    if pairs:
        text += "?" + "&".join(f"{k}={_enc(v, '/:')}" for k, v in pairs)   # as the spec's repository_url=docker.io/...
    if subpath:
        text += "#" + "/".join(_enc(part) for part in subpath.strip("/").split("/") if part not in ("", ".", ".."))
    return text


def distro(inventory: dict) -> str:
    """The purl distro qualifier of the image's OS: debian-12, debian-13 (its codename when it has no version)."""
    osr = inventory.get("os") or {}
    return f"{osr.get('id', 'debian')}-{osr.get('version_id') or osr.get('version_codename') or 'unknown'}"


def deb_component(package: dict, distro_name: str) -> dict:
    name, version, arch = package["name"], package["version"], package["architecture"]
    upstream = package.get("source") if package.get("source") not in (None, "", name) else ""
    return {
        "type": "library", "bom-ref": f"deb:{name}:{arch}", "name": name, "version": version,
        "purl": purl("deb", name, version, "debian", {"arch": arch, "distro": distro_name, "upstream": upstream}),
    }


def go_purl(binary: dict) -> str | None:
    """pkg:golang/MODULE@VERSION#SUBPATH of a Go binary whose build information names a released main
    module (not `(devel)`); the subpath is its main package within the module."""
    go = binary.get("go") or {}
    main = go.get("main") or {}
    if not main.get("path") or main.get("version") in (None, "", "(devel)"):
        return None
    module, package = main["path"], go.get("path") or main["path"]
    subpath = package[len(module):].strip("/") if package.startswith(module) else None
    namespace, _, name = module.rpartition("/")
    return purl("golang", name, main["version"], namespace or None, subpath=subpath or None)


def binary_component(binary: dict) -> dict:
    version = binary.get("version") or (((binary.get("go") or {}).get("main") or {}).get("version"))
    properties = [("imagebuild:path", binary["path"]), ("imagebuild:kind", binary["kind"])]
    go = binary.get("go") or {}
    if go.get("go"):
        properties.append(("imagebuild:go-version", go["go"]))
    if binary.get("package"):
        properties.append(("imagebuild:dpkg-package", binary["package"]))
    return {
        "type": "application", "bom-ref": f"bin:{binary['path']}", "name": binary["name"],
        **({"version": version} if version else {}),
        "hashes": [{"alg": "SHA-256", "content": binary["sha256"]}],
        "purl": go_purl(binary) or purl("generic", binary["name"], version),
        "properties": [{"name": k, "value": v} for k, v in properties],
    }


def split_reference(name: str) -> tuple[str, str | None]:
    """(repository, tag) of an image reference: `docker.io/library/pause:3.9` -> (docker.io/library/pause, 3.9);
    a reference by digest has no tag."""
    repository = name.split("@", 1)[0]
    last = repository.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = repository.rsplit(":", 1)
        return repository, tag
    return repository, None


def image_component(image: dict) -> dict:
    repository, tag = split_reference(image["name"])
    digest = image["digest"]
    algorithm, _, hexdigest = digest.partition(":")
    properties = [("imagebuild:namespace", image["namespace"]), ("imagebuild:reference", image["name"]),
                  ("imagebuild:pinned", "true" if image.get("pinned") else "false")]
    if image.get("media_type"):
        properties.append(("imagebuild:media-type", image["media_type"]))
    return {
        "type": "container", "bom-ref": f"oci:{image['namespace']}:{image['name']}", "name": image["name"],
        "version": digest,
        **({"hashes": [{"alg": "SHA-256", "content": hexdigest}]} if algorithm == "sha256" else {}),
        "purl": purl("oci", repository.rsplit("/", 1)[-1].lower(), digest,
                     qualifiers={"repository_url": repository, "tag": tag or ""}),
        "properties": [{"name": k, "value": v} for k, v in properties],
    }


def file_component(entry: dict) -> dict | None:
    if not entry.get("sha256"):
        return None
    return {"type": "file", "bom-ref": f"file:{entry['path']}", "name": entry["path"],
            "hashes": [{"alg": "SHA-256", "content": entry["sha256"]}],
            "properties": [{"name": "imagebuild:installed-by", "value": "imagebuild"}]
            + ([{"name": "imagebuild:mode", "value": entry["mode"]}] if entry.get("mode") else [])}


def document(inventory: dict, image: dict) -> dict[str, Any]:
    """The CycloneDX 1.5 document of the image described by *image* (the bake's manifest: image, sha256,
    family, build_time, architecture, spec_hash, inputs_hash, lab_content) holding *inventory*'s content."""
    distro_name = distro(inventory)
    components = [deb_component(p, distro_name) for p in inventory["dpkg"]["packages"]]
    components += [binary_component(b) for b in inventory["binaries"]]
    components += [image_component(i) for i in inventory["containerd"]["images"]]
    components += [c for c in (file_component(f) for f in inventory["imagebuild_files"]) if c is not None]
    osr = inventory.get("os") or {}
    if osr.get("id"):
        components.insert(0, {"type": "operating-system", "bom-ref": "os", "name": osr["id"],
                              **({"version": osr["version_id"]} if osr.get("version_id") else {}),
                              **({"description": osr["pretty_name"]} if osr.get("pretty_name") else {})})
    root = f"image:{image['image']}"
    properties = [("imagebuild:family", image.get("family", "")),
                  ("imagebuild:architecture", image.get("architecture", "")),
                  ("imagebuild:spec-hash", image.get("spec_hash", "")),
                  ("imagebuild:inputs-hash", image.get("inputs_hash", "")),
                  ("imagebuild:kernel", inventory["kernel"]["release"]),
                  ("imagebuild:containerd-config-sha256", _sha256_text(inventory["containerd"]["config_dump"]))]
    properties += [("imagebuild:lab-content", what) for what in image.get("lab_content") or []]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(SERIAL_NAMESPACE, image['sha256'])}",
        "version": 1,
        "metadata": {
            "timestamp": image["build_time"],
            "tools": {"components": [{"type": "application", "name": "imagebuild", "version": __version__}]},
            "component": {"type": "file", "bom-ref": root, "name": image["image"],
                          "hashes": [{"alg": "SHA-256", "content": image["sha256"]}],
                          "properties": [{"name": k, "value": v} for k, v in properties if v]},
        },
        "components": components,
        "dependencies": [{"ref": root, "dependsOn": [c["bom-ref"] for c in components]}],
    }


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def subject_sha256(sbom: dict) -> str | None:
    """The sha256 of the image an SBOM of this module describes (its metadata.component)."""
    for entry in ((sbom.get("metadata") or {}).get("component") or {}).get("hashes") or []:
        if entry.get("alg") == "SHA-256":
            return entry.get("content")
    return None
