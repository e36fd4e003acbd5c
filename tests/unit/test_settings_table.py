"""README's settings table (section Deploy) names every field of ``Settings`` as the variable a
user sets, ``AIDIST_<NAME>``, with the field's default, and names nothing that is not a setting."""

from __future__ import annotations

import re

from aidist.config import Settings
from tests.conftest import REPO

ROW = re.compile(r"^\| `(AIDIST_[A-Z0-9_]+)` \| ([^|]*) \| ([^|]+) \|$")


def default_text(default: object) -> str:
    """How the table writes a default: as a user types it into the environment."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, list):
        return ",".join(default) or "empty"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def deploy_table() -> dict[str, tuple[str, str]]:
    """variable -> (default cell, meaning cell) of the table under '## Deploy'."""
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Deploy\n")
    end = text.find("\n## ", start + 1)
    rows = {}
    for line in text[start:end if end != -1 else None].splitlines():
        found = ROW.match(line)
        if found:
            assert found.group(1) not in rows, f"{found.group(1)} twice in the table"
            rows[found.group(1)] = (found.group(2).strip(), found.group(3).strip())
    return rows


def test_every_setting_is_in_the_deploy_table_with_its_default() -> None:
    rows = deploy_table()
    problems = []
    for name, field in Settings.model_fields.items():
        variable = f"AIDIST_{name.upper()}"
        default = field.get_default(call_default_factory=True, validated_data={})
        expected = default_text(default)
        if variable not in rows:
            problems.append(f"missing: | `{variable}` | {expected} | (what it means) |")
        elif not rows[variable][0].replace("`", "").startswith(expected):
            problems.append(f"{variable}: default cell {rows[variable][0]!r} should start "
                            f"with {expected!r}")
    assert problems == [], "README, Deploy, settings table:\n" + "\n".join(problems)


def test_the_deploy_table_names_only_settings() -> None:
    fields = {f"AIDIST_{name.upper()}" for name in Settings.model_fields}
    assert set(deploy_table()) - fields == set()
