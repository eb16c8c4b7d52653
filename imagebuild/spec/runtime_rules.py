"""The rules of config.runtimes' files: a shim config needs the path containerd hands the shim, and no two
downloaded binaries may land on one path (the later would silently replace the earlier)."""
from __future__ import annotations

from imagebuild.spec.fields import Problem, show

#: What a containerd tarball install puts into /usr/local/bin (a runtime file there would replace it).
TARBALL_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "containerd-stress")


def check_runtimes(doc: dict) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for name, rt in doc["config"]["runtimes"].items():
        key = f"config.runtimes.{name}"
        if rt.get("config") is not None and not rt.get("config_path"):
            problems.append(Problem(f"{key}.config", "a shim config needs a path to be written to: set "
                                    f"{key}.config_path (e.g. /etc/containerd/runsc.toml)"))
        for index, file in enumerate(rt.get("install") or ()):
            base = file["url"].rsplit("/", 1)[-1]
            where = f"{key}.install[{index}].url"
            if base in TARBALL_BINARIES:
                problems.append(Problem(where, f"got {show(file['url'])}: it would install /usr/local/bin/{base}, "
                                        "containerd's own binary; expected a runtime's binary"))
            elif base in seen:
                problems.append(Problem(where, f"got {show(file['url'])}: /usr/local/bin/{base} is already "
                                        f"installed by {seen[base]}; expected one download per file name"))
            seen.setdefault(base, where)
    return problems
