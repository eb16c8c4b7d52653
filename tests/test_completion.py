"""`imagebuild completion bash|zsh`: the scripts come from the parser, and the real shells complete with them
(bash through its completion function, zsh through its completion system on a pseudo-terminal)."""
from __future__ import annotations

import re
import subprocess
import textwrap

import pytest

from imagebuild.cli import completion
from imagebuild.cli.parser import parser
from tests.support import run_cli, run_main


@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """Each shell's script, as `imagebuild completion SHELL` prints it, in a file."""
    where = tmp_path_factory.mktemp("completion")
    out = {}
    for shell in ("bash", "zsh"):
        proc = run_cli("completion", shell)
        assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
        out[shell] = where / f"imagebuild.{shell}"
        out[shell].write_bytes(proc.stdout)
    return out


def test_the_scripts_are_the_parsers(scripts):
    for shell, generate in completion.SCRIPTS.items():
        assert scripts[shell].read_text() == generate(parser())
    top, commands = completion.model(parser())
    names = [c.name for c in commands]
    assert {"validate", "render", "user-data", "doctor", "completion", "pipeline"} <= set(names)
    for name in names:  # every subcommand is in both scripts
        assert f"        {name})" in scripts["bash"].read_text()
        assert re.search(rf"^ +{re.escape(name)}\) _arguments", scripts["zsh"].read_text(), re.M)


def test_both_scripts_parse(scripts):
    for shell in ("bash", "zsh"):
        proc = subprocess.run([shell, "-n", str(scripts[shell])], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def bash_complete(script, *words: str) -> list[str]:
    """What bash's completion function offers for the command line *words* (the last one being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    program = textwrap.dedent(f"""\
        source {script}
        COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}
        _imagebuild
        printf '%s\\n' "${{COMPREPLY[@]}}"
        """)
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return sorted(filter(None, proc.stdout.splitlines()))


def test_bash_completes_commands_options_and_choices(scripts, tmp_path):
    script = scripts["bash"]
    assert bash_complete(script, "imagebuild", "re") == ["render"]
    assert bash_complete(script, "imagebuild", "-v", "val") == ["validate"]  # an option before the command
    assert bash_complete(script, "imagebuild", "render", "--o") == ["--output"]
    assert bash_complete(script, "imagebuild", "user-data", "--format", "") == ["cloud-config", "mime"]
    assert bash_complete(script, "imagebuild", "doctor", "--stage", "b") == ["bake"]
    assert bash_complete(script, "imagebuild", "completion", "") == ["bash", "zsh"]
    assert bash_complete(script, "imagebuild", "user-data", "--r") == ["--raw"]
    (tmp_path / "spec-a.yaml").write_text("")
    (tmp_path / "spec-b.yaml").write_text("")
    assert bash_complete(script, "imagebuild", "render", f"{tmp_path}/spec-") == \
        [f"{tmp_path}/spec-a.yaml", f"{tmp_path}/spec-b.yaml"]
    # a command's own positional choices come only at their place: after `bash`, files again
    assert bash_complete(script, "imagebuild", "completion", "bash", f"{tmp_path}/spec-a") == \
        [f"{tmp_path}/spec-a.yaml"]
    assert bash_complete(script, "imagebuild", "frobnicate", "--x") == []


ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1='> '; autoload -U compinit; compinit -u -D; source {script}; unsetopt beep"
# zsh handles keys in order: once the marker command has printed, the completion before it has drawn
# everything. (The marker is typed split, so the echo of what is typed never matches it.)
drained() {{
    local chunk out= waited=0
    zpty -w z 'print -r -- __DO""NE__'
    while (( waited < 1200 )); do
        if zpty -r -t z chunk; then
            out+=$chunk
            [[ $out == *__DONE__$'\r'* ]] && break
        else
            sleep 0.05; (( waited++ ))
        fi
    done
    print -rn -- $out
}}
drained >/dev/null
for line in {lines}; do
    zpty -w -n z "$line"$'\t'
    zpty -w -n z $'\C-u'
    print -r -- "<<<$line>>>"
    drained
    print
done
zpty -d z
"""


def zsh_complete(script, lines: list[str]) -> dict[str, str]:
    """What zsh shows after TAB on each of *lines*: the terminal's text, escape sequences taken out."""
    quoted = " ".join("'" + line.replace("'", "'\\''") + "'" for line in lines)
    proc = subprocess.run(["zsh", "-f", "-c", ZSH_DRIVER.format(script=script, lines=quoted)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f]", "", proc.stdout)
    parts = re.split(r"<<<(.*?)>>>", text)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_zsh_completes_commands_options_and_choices(scripts):
    shown = zsh_complete(scripts["zsh"], ["imagebuild ren", "imagebuild user-data --format ",
                                          "imagebuild doctor --stage ", "imagebuild completion ",
                                          "imagebuild frobni"])
    assert "imagebuild render" in shown["imagebuild ren"]
    assert "cloud-config" in shown["imagebuild user-data --format "] and \
        "mime" in shown["imagebuild user-data --format "]
    assert all(stage in shown["imagebuild doctor --stage "] for stage in ("render", "bake", "verify", "publish"))
    assert "bash" in shown["imagebuild completion "] and "zsh" in shown["imagebuild completion "]
    assert "frobnicate" not in shown["imagebuild frobni"]  # no such command: nothing is made up


def test_completion_needs_a_known_shell():
    code, _, err = run_main(["completion", "fish"])
    assert code == 2 and "invalid choice: 'fish'" in err
