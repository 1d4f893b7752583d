"""The README and docs/: no broken link or anchor."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import check_links
from devtools.stack import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"


def test_readme_and_docs_have_no_broken_links() -> None:
    problems = check_links.check([README, *([DOCS] if DOCS.is_dir() else [])])
    assert not problems, "broken links:\n" + "\n".join(str(problem) for problem in problems)


def test_a_broken_link_and_a_broken_anchor_are_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("Other\n=====\n\n## A `code` heading: yes\n\ntext\n")
    (tmp_path / "code.py").write_text("")
    page = tmp_path / "page.md"
    page.write_text(
        "Page\n----\n\n"
        "[fine](other.md), [fine too](other.md#a-code-heading-yes), [here](#page), [code](code.py),\n"
        "[folder](.), [web](https://example.com/nowhere.md), [mail](mailto:a@example.com)\n"
        "[missing](missing.md) and [no heading](other.md#no-such-heading)\n"
        "[no heading here](#nowhere)\n"
        "`[in a code span](nope.md)`\n"
        "```\n[in a code block](nope.md)\n```\n"
    )

    problems = check_links.check([page])

    assert [(problem.link.line, problem.link.target) for problem in problems] == [
        (6, "missing.md"),
        (6, "other.md#no-such-heading"),
        (7, "#nowhere"),
    ]
    assert "no such file" in problems[0].reason
    assert "no heading with anchor #no-such-heading in other.md" in problems[1].reason


def test_the_command_line_lists_broken_links_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "page.md").write_text("[missing](missing.md)\n")
    assert check_links.main([str(tmp_path)]) == 1
    assert "page.md:1: missing.md: no such file or folder" in capsys.readouterr().err

    (tmp_path / "page.md").write_text("[itself](page.md)\n")
    assert check_links.main([str(tmp_path)]) == 0


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("When the maker is down: the circuit breaker", "when-the-maker-is-down-the-circuit-breaker"),
        ("`widget_producer.py`", "widget_producerpy"),
        ("The maker's metrics", "the-makers-metrics"),
        ('How "made once" holds across makers', "how-made-once-holds-across-makers"),
        ("The maker's store: SQLite and PostgreSQL", "the-makers-store-sqlite-and-postgresql"),
        ("A **bold** [link](x.md) and _emphasis_", "a-bold-link-and-emphasis"),
    ],
)
def test_slugs_are_githubs(heading: str, anchor: str) -> None:
    assert check_links.slug(heading) == anchor


def test_repeated_headings_and_setext_headings_get_anchors() -> None:
    text = (
        "Title\n=====\n\n## Notes\n\n## Notes\n\nSection\n-------\n\n"
        "| a |\n|---|\n\n- item\n---\n\n```\n# not a heading\n```\n"
    )
    assert check_links.anchors(text) == {"title", "notes", "notes-1", "section"}
