"""The project as a package: its wheel installed in a fresh virtualenv, run from outside the checkout."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from devtools.stack import PYTHON, ROOT, Process, free_port, start_sqs, wait_http

SCRIPTS = ("widget_producer", "widget_consumer", "widget_maker", "widget_queues")


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


@pytest.mark.e2e
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = [PYTHON, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    subprocess.run([*build, str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    fresh = tmp_path / "fresh"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(fresh)], check=True)  # type: ignore[attr-defined]
    site = Path(sysconfig.get_path("purelib", vars={"base": str(fresh), "platbase": str(fresh)}))
    # The dependencies come from this virtualenv (no download); the project only from its wheel.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    [wheel] = wheels.glob("*.whl")
    install = [
        PYTHON,
        "-m",
        "pip",
        "--python",
        str(fresh / "bin" / "python"),
        "install",
        "--quiet",
        "--no-deps",
    ]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, cwd=tmp_path)
    where = subprocess.run(
        [str(fresh / "bin" / "python"), "-c", "import widgets, widget_consumer; print(widgets.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.startswith(str(site))
    bin_ = fresh / "bin"
    for name in SCRIPTS:
        command = bin_ / name.replace("_", "-")
        helped = subprocess.run([str(command), "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert helped.returncode == 0 and helped.stdout.startswith(f"Usage: {command.name} "), helped.stderr

    sqs, endpoint = start_sqs()
    port = free_port()
    maker = Process(
        "maker",
        [str(bin_ / "widget-maker"), "--port", str(port), "--db", str(tmp_path / "w.db")],
        cwd=tmp_path,
    )
    maker_url = f"http://127.0.0.1:{port}/add"
    consumer = Process(
        "consumer",
        [
            str(bin_ / "widget-consumer"),
            "--endpoint-url",
            endpoint,
            "--maker-url",
            maker_url,
            "--wait-time",
            "1",
        ],
        cwd=tmp_path,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process=maker)
        consumer.wait_for("consuming ")
        produce = [str(bin_ / "widget-producer"), "--endpoint-url", endpoint, "--count", "3", "--wait"]
        produced = subprocess.run(produce, capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert produced.returncode == 0, produced.stdout + produced.stderr
        assert [line.split()[0] for line in produced.stdout.splitlines()[3:]] == ["OK"] * 3
    finally:
        for process in (consumer, maker, sqs):
            process.stop()
