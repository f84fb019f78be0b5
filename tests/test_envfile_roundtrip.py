"""Every value muzo_ops writes reads back the same in python-dotenv, in Next.js and in dotenvx."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from muzo_ops.env.envfile import encode_value, format_line
from muzo_ops.errors import UnrepresentableValueError

NODE_DIR = Path(__file__).parent / "node"

# The characters the issue names, plus ordinary text and unicode.
SPECIAL = st.sampled_from([*list("#'\"$=\\ \t\n\r`{}:/@%!"), "é", "日本", "🙂", "\xa0", "\u2028"])
VALUES = st.lists(st.one_of(SPECIAL, st.text(min_size=1, max_size=4)), max_size=12).map("".join)
# No surrogates (not UTF-8), no NUL (neither loader keeps it).
VALUES = VALUES.filter(lambda v: "\x00" not in v and not any(0xD800 <= ord(c) < 0xE000 for c in v))


def next_env_read(folder: Path, prefix: str) -> dict[str, str]:
    proc = subprocess.run(
        ["node", str(NODE_DIR / "read_env.js"), str(folder), prefix],
        capture_output=True, text=True, check=True, timeout=60,
    )
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def dotenvx_read(folder: Path, prefix: str) -> dict[str, str]:
    """The values dotenvx's own loader (`dotenvx get`, which expands $VAR and runs $(…)) reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOTENV_", prefix))}
    proc = subprocess.run([str(NODE_DIR / "node_modules" / ".bin" / "dotenvx"), "get", "-f", ".env", "--strict"],
                          cwd=folder, capture_output=True, text=True, check=True, timeout=60, env=env)
    return {k: v for k, v in json.loads(proc.stdout).items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def node_loader() -> None:
    if not (NODE_DIR / "node_modules" / "@next" / "env").is_dir() or \
            not (NODE_DIR / "node_modules" / ".bin" / "dotenvx").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                       check=True, capture_output=True, timeout=300)


def encodable(values: list[str]) -> dict[str, str]:
    kept = {}
    for i, value in enumerate(values):
        try:
            encode_value("X", value)
        except UnrepresentableValueError:
            continue
        kept[f"RT_{i}"] = value
    return kept


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(VALUES, min_size=1, max_size=15))
@example(values=["a#b", "it's", 'say "hi"', "$", "a$", "a=b=c", " pad ", "back\\slash",
                 "\\$", "line1\nline2", "cr\rlf", "日本 🙂", "${}", "`tick`", "#start", "x #y",
                 "$(touch PWNED)", "a$(b)c", "say \"$(x)\""])
def test_every_loader_reads_back_what_was_written(tmp_path_factory: pytest.TempPathFactory,
                                                 node_loader: None, values: list[str]) -> None:
    wanted = encodable(values)
    text = "".join(format_line(k, v) for k, v in wanted.items())
    folder = tmp_path_factory.mktemp("rt")
    (folder / ".env").write_text(text, encoding="utf-8", newline="")
    assert dict(dotenv_values(stream=io.StringIO(text))) == wanted
    got = next_env_read(folder, "RT_")
    assert got == wanted
    assert dotenvx_read(folder, "RT_") == wanted
    assert not (folder / "PWNED").exists() and not (Path.cwd() / "PWNED").exists()


@given(VALUES)
def test_only_dollar_names_and_mixed_quoting_are_refused(value: str) -> None:
    try:
        encode_value("X", value)
    except UnrepresentableValueError:
        has_dollar_name = any(value[i] == "$" and value[i + 1 : i + 2].isascii()
                              and (value[i + 1 : i + 2].isalnum() or value[i + 1 : i + 2] in "{_")
                              and value[i + 1 : i + 2] != "" for i in range(len(value)))
        assert has_dollar_name or ("'" in value or "\\" in value or "\r" in value)


@pytest.mark.parametrize("value", ["$HOME", "a${B}", "x$_y"])
def test_dollar_before_a_name_is_refused_with_the_fix(value: str) -> None:
    with pytest.raises(UnrepresentableValueError) as info:
        encode_value("EMAIL_SERVER_PASSWORD", value)
    assert value not in str(info.value)
    assert "%24" in str(info.value)


@pytest.mark.parametrize("value", ["$(touch PWNED)", "a$(touch PWNED)b", 'x "$(y)"', "multi\n$(line)"])
def test_command_substitution_is_single_quoted_so_dotenvx_never_runs_it(value: str) -> None:
    assert format_line("RT", value) == f"RT='{value}'\n"
    assert dict(dotenv_values(stream=io.StringIO(format_line("RT", value)))) == {"RT": value}


@pytest.mark.parametrize("value", ["it's $(x)", "a\\$(x)", "$(x)\r"])
def test_command_substitution_that_single_quotes_cannot_carry_is_refused(value: str) -> None:
    with pytest.raises(UnrepresentableValueError) as info:
        encode_value("EMAIL_SERVER_PASSWORD", value)
    assert "dotenvx" in str(info.value) and value not in str(info.value)
