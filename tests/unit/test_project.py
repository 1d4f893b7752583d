"""The project's declaration (pyproject.toml): every imported package declared, the console scripts."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib

from devtools.stack import ROOT

SCRIPTS = ("widget_producer", "widget_consumer", "widget_maker", "widget_queues", "sqs_relay")


def project() -> dict[str, object]:
    """Return pyproject.toml's [project] table."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        table: dict[str, object] = tomllib.load(file)["project"]
    return table


def third_party_imports() -> set[str]:
    """Return the top-level names the package and the scripts import that are neither stdlib nor ours."""
    sources = [ROOT / f"{name}.py" for name in SCRIPTS] + sorted((ROOT / "widgets").rglob("*.py"))
    names: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    ours = {"widgets", *SCRIPTS}
    return {n for n in names if n not in sys.stdlib_module_names and n not in ours and n != "__future__"}


def test_every_package_the_code_imports_is_a_declared_dependency() -> None:
    declared = {normal(str(d).split("[")[0].split("=")[0]) for d in project()["dependencies"]}  # type: ignore[attr-defined]
    distributions = importlib.metadata.packages_distributions()
    for name in sorted(third_party_imports() - {"mypy_boto3_sqs"}):  # types only, under TYPE_CHECKING
        assert {normal(d) for d in distributions[name]} & declared, f"{name} is imported but not a dependency"


def normal(name: str) -> str:
    """Return a distribution's name as PEP 503 compares them."""
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_console_scripts_are_the_command_lines() -> None:
    scripts = project()["scripts"]
    assert scripts == {name.replace("_", "-"): f"{name}:main" for name in SCRIPTS}
