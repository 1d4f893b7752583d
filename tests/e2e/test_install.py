"""The project as a package: its wheel installed in a fresh virtualenv, run from outside the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from devtools.stack import PYTHON, ROOT, Process, free_port, start_sqs, wait_http

SCRIPTS = ("widget_producer", "widget_consumer", "widget_maker", "widget_queues", "sqs_relay")


@pytest.mark.e2e
def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = [PYTHON, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    # Built from a copy: setuptools writes its build/ and egg-info into the tree it builds.
    source = tmp_path / "source"
    junk = ("venv", "node_modules", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "widgets.db*")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*junk))
    subprocess.run([*build, str(source)], check=True, capture_output=True, cwd=tmp_path)
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
