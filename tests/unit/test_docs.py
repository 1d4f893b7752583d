"""The README and docs/: no broken link or anchor, a README that fits on a page, the seed's
commands and every make target documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devtools import check_links
from devtools.stack import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
SEED_WIDGET_ID = "31f37378-54f4-11e5-ad75-3c970e65f731"
SEED_COMMANDS = [
    "venv/bin/python widget_maker.py",
    "venv/bin/python widget_consumer.py --region=ap-southeast-2",
    "venv/bin/python widget_producer.py --region=ap-southeast-2",
    "venv/bin/python widget_producer.py --region=ap-southeast-2 --widget-id=" + SEED_WIDGET_ID,
    "venv/bin/python widget_producer.py --region=ap-southeast-2 --widget-id=this_is_not_a_valid_widget_id",
]


def test_readme_and_docs_have_no_broken_links() -> None:
    problems = check_links.check([README, DOCS])
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


def test_the_readme_fits_on_a_page() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move some to docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    pages = sorted(DOCS.glob("*.md"))
    assert pages
    assert [page.name for page in pages if f"(docs/{page.name})" not in readme] == []


def test_the_seeds_commands_are_in_the_readme() -> None:
    readme = README.read_text(encoding="utf-8")
    assert [command for command in SEED_COMMANDS if command not in readme] == []


def test_every_make_target_is_in_the_make_targets_table() -> None:
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert phony
    operating = (DOCS / "operating.md").read_text(encoding="utf-8")
    table = operating[operating.index("\nMake targets\n") :]
    first_column = " ".join(line.split("|")[1] for line in table.splitlines() if line.startswith("| `make"))
    documented = set(re.findall(r"make(?: ([a-z]+))?", first_column))
    targets = {"" if target == "all" else target for target in phony.group(1).split()}
    assert sorted(targets - documented) == []
