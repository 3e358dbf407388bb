"""The marker a managed group carries in its description: its link's policy, readable by people."""

from __future__ import annotations

import pytest

from kvlink_core.marker import (
    MarkerError,
    TooLongError,
    group_policy,
    marked_group,
    parse,
    read,
    render,
    unmarked_group,
    with_marker,
    without_marker,
)
from kvlink_core.model import Policy

# The limit kvlink keeps to: Azure DevOps documents none (see kvlink_core/marker.py); the stand-in's is 1024.
DESCRIPTION_LIMIT = 1024
EVERYTHING = Policy(
    include=("app-*", "db-[ab]*"),
    exclude=("*-old",),
    tags=(("env", "prod"), ("team", None), ("x y", "a:b,c]")),
    keep_expired=False,
    mode="mirror",
)


class TestFormat:
    def test_the_default_policy_reads_as_written(self):
        assert render(Policy()) == "[kvlink v1 mode=merge include=* expired=keep]"

    def test_every_field_round_trips(self):
        """Brackets, commas, colons and spaces in values are percent-encoded, so they never end the marker."""
        marker = render(EVERYTHING)
        assert marker == (
            "[kvlink v1 mode=mirror include=app-*,db-%5Bab%5D* exclude=*-old "
            "tags=env:prod,team,x%20y:a%3Ab%2Cc%5D expired=drop]"
        )
        assert parse(marker) == EVERYTHING

    def test_an_empty_tag_value_is_not_any_value(self):
        policy = Policy(tags=(("env", ""), ("team", None)))
        assert "tags=env:,team " in render(policy)
        assert parse(render(policy)) == policy

    @pytest.mark.parametrize(
        ("marker", "why"),
        [
            ("[kvlink v2 mode=merge include=* expired=keep]", "version v2 is not one this kvlink reads"),
            ("[kvlink mode=merge include=* expired=keep]", "no version"),
            ("[kvlink v1 mode=fast include=* expired=keep]", "mode=fast is not merge or mirror"),
            ("[kvlink v1 mode=merge include=* expired=soon]", "expired=soon is not keep or drop"),
            ("[kvlink v1 mode=merge expired=keep]", "lacks include="),
            ("[kvlink v1 mode=merge include= expired=keep]", "include= names no pattern"),
            ("[kvlink v1 mode=merge include=* include=a expired=keep]", "include= appears twice"),
            ("[kvlink v1 mode=merge include=* expired=keep color=red]", "'color=red' is not one of"),
            ("[kvlink v1 mode=merge include=a/b expired=keep]", "pattern 'a/b' is not valid"),
            ("[kvlink v1 mode=merge include=a%ZZ expired=keep]", "must be percent-encoded"),
            ("[kvlink v1 mode=merge include=a%FF expired=keep]", "not percent-encoded UTF-8"),
            ("[kvlink v1 mode=merge include=* tags=env:a,env:b expired=keep]", "tag 'env' appears twice"),
            ("[KVLINK v1 mode=merge include=* expired=keep]", "not 'kvlink'"),
        ],
    )
    def test_unreadable_markers_say_why(self, marker, why):
        with pytest.raises(MarkerError, match=why):
            read(f"Owned by payments.\n{marker}")

    def test_raw_brackets_from_a_hand_edit_are_not_read_as_a_pattern(self):
        """kvlink encodes '[': a raw one means a person edited the marker, and it is not guessed at."""
        with pytest.raises(MarkerError):
            read("[kvlink v1 mode=merge include=app-[ab]* expired=keep]")

    def test_an_unclosed_marker_is_unreadable(self):
        with pytest.raises(MarkerError, match="not closed"):
            read("[kvlink v1 mode=merge include=* expired=keep\nsecond line]")

    def test_two_markers_are_unreadable(self):
        twice = f"{render(Policy())}\n{render(Policy(mode='mirror'))}"
        with pytest.raises(MarkerError, match="2 kvlink markers"):
            read(twice)

    def test_no_marker_is_none(self):
        assert read("Secrets of the payments team [see wiki]") is None
        assert read("") is None and read(None) is None


class TestPeoplesText:
    def test_appended_on_a_line_of_its_own(self):
        assert with_marker("Owned by payments.", Policy()) == f"Owned by payments.\n{render(Policy())}"
        assert with_marker("", Policy()) == render(Policy())

    def test_replaced_where_it_stands_never_duplicated(self):
        before = f"Owned by payments.\n{render(Policy())}\nOn call: #payments-oncall"
        after = with_marker(before, EVERYTHING)
        assert after == f"Owned by payments.\n{render(EVERYTHING)}\nOn call: #payments-oncall"
        assert with_marker(after, EVERYTHING) == after
        assert after.count("[kvlink") == 1

    def test_an_unreadable_marker_is_replaced_and_a_copy_removed(self):
        broken = "Team A\n[kvlink v1 mode=fast]\nnotes\n[kvlink v9 whatever]"
        assert with_marker(broken, Policy()) == f"Team A\n{render(Policy())}\nnotes"

    def test_without_marker_leaves_the_rest(self):
        assert without_marker(f"Owned by payments.\n{render(Policy())}") == "Owned by payments."
        assert without_marker(f"{render(Policy())}\nOn call: #x") == "On call: #x"
        assert without_marker("no marker here") == "no marker here"


class TestLimits:
    def test_a_policy_too_long_for_the_marker(self):
        # 50 patterns of 20 characters: about 1,050 characters of marker, over the 512 kvlink allows.
        policy = Policy(include=tuple(f"team-{n:03d}-secrets-*" for n in range(50)))
        with pytest.raises(TooLongError, match="kvlink allows 512"):
            render(policy)

    def test_a_description_with_no_room_left(self):
        people = "x" * (DESCRIPTION_LIMIT - len(render(Policy())))  # the line break does not fit
        with pytest.raises(TooLongError, match="shorten the description"):
            with_marker(people, Policy())
        assert with_marker(people[:-1], Policy()).endswith(render(Policy()))

    def test_characters_outside_the_bmp_count_twice(self):
        """Azure DevOps counts UTF-16 units ("Naming restrictions and conventions", General considerations)."""
        room = DESCRIPTION_LIMIT - len(render(Policy())) - 1
        with pytest.raises(TooLongError):
            with_marker("\N{GRINNING FACE}" * (room // 2 + 1), Policy())
        assert with_marker("\N{GRINNING FACE}" * (room // 2), Policy())


class TestGroups:
    def group(self, description: str, *refs: str) -> dict:
        return {
            "name": "payments-kv",
            "description": description,
            "variableGroupProjectReferences": [
                {"name": "payments-kv", "description": ref, "projectReference": {"id": f"p{n}", "name": f"P{n}"}}
                for n, ref in enumerate(refs)
            ],
        }

    def test_marked_in_the_description_and_every_project_reference(self):
        group = marked_group(self.group("Team A", "", "Shared with B"), EVERYTHING)
        assert group is not None
        assert group["description"] == f"Team A\n{render(EVERYTHING)}"
        refs = [r["description"] for r in group["variableGroupProjectReferences"]]
        assert refs == [render(EVERYTHING), f"Shared with B\n{render(EVERYTHING)}"]
        assert group_policy(group) == EVERYTHING
        assert marked_group(group, EVERYTHING) is None  # in step: nothing to write

    def test_read_from_the_references_when_the_description_has_none(self):
        assert group_policy(self.group("", render(EVERYTHING))) == EVERYTHING
        with pytest.raises(MarkerError, match="different"):
            group_policy(self.group("", render(EVERYTHING), render(Policy())))

    def test_unmarked(self):
        group = marked_group(self.group("Team A", "B"), Policy())
        assert group is not None
        plain = unmarked_group(group)
        assert plain is not None
        assert plain["description"] == "Team A"
        assert [r["description"] for r in plain["variableGroupProjectReferences"]] == ["B"]
        assert unmarked_group(plain) is None
