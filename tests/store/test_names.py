"""store/names.py: the one grammar of object names every backend enforces."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from casbackup.store.names import FOLDERS, PACK_RULE, is_folder, is_temp_name, rule_for

SHAPE = re.compile(
    r"config|(keys|index|snapshots|verifications|checkstate)/[0-9a-f]{64}|locks/[0-9a-f]{32}"
    r"|data/([0-9a-f]{2})/\2[0-9a-f]{62}"
)
pieces = st.sampled_from(["config", "data", "keys", "locks", "index", "snapshots", "ab", "..",
                          ".", "", "/", "a" * 64, "ab" * 16, "AB" * 32, ".tmp-", "0" * 12,
                          "ab" * 32, "upload"])  # fmt: skip


@given(st.lists(pieces, max_size=6).map("/".join) | st.text(max_size=80))
def test_rule_for_accepts_exactly_the_format_shapes(name: str) -> None:
    rule = rule_for(name)
    assert (rule is not None) == bool(SHAPE.fullmatch(name)), name
    if rule is not None:
        assert ".." not in name.split("/") and not name.startswith("/")


def test_each_kind_has_its_cap_and_folder() -> None:
    assert rule_for("data/ab/" + "ab" * 32) is PACK_RULE
    for folder, rule in FOLDERS.items():
        leaf = "a" * (32 if folder == "locks" else 64)
        assert rule_for(f"{folder}/{leaf}") is rule and rule.cap <= 65 * 1024 * 1024
    assert is_folder("data/0f") and not is_folder("data/0g") and not is_folder("data/0f/x")
    assert is_temp_name("data/" + "upload.tmp-" + "0" * 12)
    assert is_temp_name("config.tmp-" + "a" * 12)
    assert not is_temp_name("config.tmp-" + "a" * 11)
    assert not is_temp_name("elsewhere/config.tmp-" + "a" * 12)
    assert not is_temp_name("data/au/" + "ab" * 32 + ".tmp-" + "a" * 12)
