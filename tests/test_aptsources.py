"""The one apt-sources reader (imagebuild/build/aptsources.py), used by the base image and the developer tools.

One test per way the two former readers differed, each through both users: baseimage.debian_sources
(the base image's mirror) and devtools' pick_debian_source (where Debian's containerd comes from).
"""
from pathlib import Path

import pytest

from devtools import debian_artifacts as da
from imagebuild.build import aptsources
from imagebuild.build.aptsources import Source
from imagebuild.errors import ImagebuildError

KEY_BLOCK = """\
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEZ0000000000000000000000000000000000000000000000000000000000000
 -----END PGP PUBLIC KEY BLOCK-----
"""


def _root(tmp_path: Path, files: dict[str, str], codename: str = "bookworm") -> Path:
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/os-release").write_text(f'ID=debian\nVERSION_CODENAME="{codename}"\n')
    for name, text in files.items():
        (tmp_path / "etc/apt" / name).write_text(text)
    return tmp_path


def test_one_line_and_deb822_read_alike():
    one = aptsources.parse("deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main contrib\n"
                           "deb-src http://m.invalid/debian bookworm main\n# deb http://x.invalid/ a b\n", deb822=False)
    deb822 = aptsources.parse("Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm\n"
                              "Components: main contrib\nSigned-By: /k.gpg\n\n"
                              "Types: deb-src\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\n",
                              deb822=True)
    assert one == deb822 == [
        Source(("deb",), ("http://m.invalid/debian",), ("bookworm",), ("main", "contrib"), "/k.gpg"),
        Source(("deb-src",), ("http://m.invalid/debian",), ("bookworm",), ("main",)),
    ]
    assert [s.binary for s in one] == [True, False]


# ----------------------------------------------------------------- difference 1: Enabled is an apt boolean


@pytest.mark.parametrize("value", ["no", "No", "false", "FALSE", "0", "off", "disable", "without"])
def test_enabled_false_in_any_spelling_disables(tmp_path, value):
    text = f"Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: {value}\n"
    (entry,) = aptsources.parse(text, deb822=True)
    assert not entry.enabled and not entry.binary
    root = _root(tmp_path, {"sources.list.d/debian.sources": text})
    with pytest.raises(ImagebuildError, match="cannot find a Debian mirror"):
        aptsources.debian_sources(root)
    with pytest.raises(ImagebuildError, match="no Debian archive"):
        da.pick_debian_source(aptsources.read(root), "bookworm")


@pytest.mark.parametrize("value", ["yes", "true", "1", "Yes"])
def test_enabled_true_keeps_the_entry(tmp_path, value):
    text = f"Types: deb\nURIs: http://on.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: {value}\n"
    root = _root(tmp_path, {"sources.list.d/debian.sources": text})
    assert aptsources.debian_sources(root)[0] == "deb http://on.invalid/debian bookworm main"
    assert da.pick_debian_source(aptsources.read(root), "bookworm").uris == ("http://on.invalid/debian",)


# ----------------------------------------------------------------- difference 2: options and Signed-By are kept


def test_one_line_options_are_kept_not_dropped():
    (entry,) = aptsources.parse("deb [ signed-by=/usr/share/keyrings/d.gpg Arch=amd64 ] "
                                "http://m.invalid/debian bookworm main\n", deb822=False)
    assert entry.uris == ("http://m.invalid/debian",) and entry.suites == ("bookworm",)
    assert entry.signed_by == "/usr/share/keyrings/d.gpg"
    (bare,) = aptsources.parse("deb http://m.invalid/debian bookworm main\n", deb822=False)
    assert bare.signed_by == ""


def test_an_embedded_key_block_is_kept_verbatim(tmp_path, monkeypatch):
    text = "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm\nComponents: main\n" + KEY_BLOCK
    (entry,) = aptsources.parse(text, deb822=True)
    assert entry.signed_by.splitlines() == [line.strip() for line in KEY_BLOCK.splitlines()[1:]]
    # the private apt configuration of the developer tools writes it back as apt reads it
    monkeypatch.setenv("IMAGEBUILD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(da, "system_debian_source", lambda: entry)
    da._apt_options("bookworm")
    written = (tmp_path / "cache/apt/bookworm/sources.list.d/imagebuild.sources").read_text()
    assert written.endswith(KEY_BLOCK)
    (again,) = aptsources.parse(written, deb822=True)
    assert again.signed_by == entry.signed_by and again.suites == ("bookworm",)


# ----------------------------------------------------------------- difference 3: field case, several values


def test_field_names_are_case_insensitive_and_every_uri_and_suite_counts(tmp_path):
    text = ("types: deb deb-src\nURIS: http://a.invalid/debian\n  http://b.invalid/debian\n"
            "SUITES: bookworm bookworm-updates\ncomponents: main\n")
    (entry,) = aptsources.parse(text, deb822=True)
    assert entry.types == ("deb", "deb-src") and entry.binary
    assert entry.uris == ("http://a.invalid/debian", "http://b.invalid/debian")
    root = _root(tmp_path, {"sources.list.d/debian.sources": text})
    assert aptsources.debian_sources(root) == [
        "deb http://a.invalid/debian bookworm main", "deb http://a.invalid/debian bookworm-updates main",
        "deb http://b.invalid/debian bookworm main", "deb http://b.invalid/debian bookworm-updates main",
    ]
    assert da.pick_debian_source(aptsources.read(root), "bookworm").uris == entry.uris


# ----------------------------------------------------------------- which files


def test_files_are_read_in_apts_order(tmp_path):
    root = _root(tmp_path, {
        "sources.list": "deb http://first.invalid/debian bookworm main\n",
        "sources.list.d/b.sources": "Types: deb\nURIs: http://third.invalid/debian\nSuites: bookworm\n"
                                    "Components: main\n",
        "sources.list.d/a.list": "deb http://second.invalid/debian bookworm main\n",
        "sources.list.d/c.disabled": "deb http://ignored.invalid/debian bookworm main\n",
    })
    assert [p.name for p in aptsources.source_files(root)] == ["sources.list", "a.list", "b.sources"]
    assert [e.uris[0] for e in aptsources.read(root)] == [
        "http://first.invalid/debian", "http://second.invalid/debian", "http://third.invalid/debian"]


def test_the_systems_files_come_from_apts_configuration():
    files = aptsources.source_files()
    assert files and all(p.is_file() for p in files)
    assert da.system_debian_source().binary   # this machine's archive entry (the tests fetch from it)
