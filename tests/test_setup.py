"""Set-up that fits the job (issue 11, items 8, 9 and 10): the lock every install uses, a demo install without test
tooling, `jit elements`/`jit call` without the serving-only API key, and the demo key kept on loopback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from jitcore.cli import PUBLISHED_API_KEYS, is_loopback

ROOT = Path(__file__).resolve().parent.parent
JIT = str(Path(sys.executable).parent / "jit")
SANDBOX = str(Path(sys.executable).parent / "jit-sandbox")
DEMO_KEY = "jitpay-demo-key-local-only"


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def without_api_key() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "JITPAY_API_KEY"}


def pip_lines(dry_run: str) -> list[str]:
    return [line for line in dry_run.splitlines() if " -m pip install " in line]


# -- the lock -----------------------------------------------------------------------------------------------------------
def lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", line
            pins[requirement.name.lower()] = Version(specifier.version)
    return pins


def test_the_lock_pins_every_dependency_within_the_ranges_of_the_pyproject_files() -> None:
    pins = lock()
    projects = [ROOT / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]
    for path in projects:
        project = tomllib.loads(path.read_text())["project"]
        requirements = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        for text in requirements:
            requirement = Requirement(text)
            name = requirement.name.lower()
            if name in ("jitpay", "jitpay-sandbox") or name.startswith("jitpay-"):
                continue  # the repository's own distributions: installed editable, never pinned
            assert name in pins, f"{path.relative_to(ROOT)}: {name} is not in constraints.txt (make lock)"
            assert requirement.specifier.contains(pins[name], prereleases=True), (path, text, pins[name])
    # no editable or local line: pip cannot constrain those
    assert not re.search(r"^\s*(-e|\.|/)", (ROOT / "constraints.txt").read_text(), re.MULTILINE)


VULNERABLE = [("h11", "0.15.0"), ("starlette", "0.47.1"), ("starlette", "1.3.0"), ("certifi", "2024.6.2"),
              ("jinja2", "3.1.5"), ("cryptography", "49.0.0"), ("xmltodict", "0.14.2")]


def test_floors_exclude_the_known_vulnerable_releases() -> None:
    dependencies = {Requirement(text).name.lower(): Requirement(text).specifier
                    for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, vulnerable in VULNERABLE:
        assert not dependencies[name].contains(vulnerable), (name, vulnerable)
    # the plugins shipped beside JitPay do not name a lower floor of their own
    for path in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        for text in tomllib.loads(path.read_text())["project"].get("dependencies", []):
            requirement = Requirement(text)
            for name, vulnerable in VULNERABLE:
                assert requirement.name.lower() != name or not requirement.specifier.contains(vulnerable), (path, text)
    assert "psycopg" not in dependencies  # SQLite is the default: PostgreSQL's driver is the postgres extra
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(Requirement(text).name == "psycopg" for text in extras["postgres"])


# -- the Makefile ---------------------------------------------------------------------------------------------------------
def test_make_run_installs_the_demo_only_and_from_the_lock(tmp_path: Path) -> None:
    venv = tmp_path / "venv"  # a venv that does not exist: make -n shows every step a fresh clone runs
    result = make("-n", "run", f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    installs = pip_lines(result.stdout)
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert not any("[test" in line or "postgres" in line or "acme" in line for line in installs), installs
    assert any(re.search(r" -e \. ", line) and "-e plugins/jitpay-sandbox" in line for line in installs)


def test_make_venv_installs_the_tests_with_postgres_and_the_acme_plugin_from_the_lock(tmp_path: Path) -> None:
    result = make("-n", "venv", f"VENV={tmp_path / 'venv'}")
    assert result.returncode == 0, result.stderr
    installs = pip_lines(result.stdout)
    assert all("-c constraints.txt" in line for line in installs)
    assert any("-e '.[test,postgres]'" in line for line in installs), installs
    # the test plugins, as real distributions (not editable), as a user installs a third-party plugin
    assert any(re.search(r"-c constraints.txt( tests/plugins/[\w-]+)+$", line.rstrip())
               and "tests/plugins/acme-elements" in line for line in installs), installs
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test" in (ROOT / "README.md").read_text()


def test_make_run_refuses_the_demo_key_on_a_host_other_machines_reach(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    refused = make("run", "HOST=0.0.0.0", f"VENV={venv}", env=without_api_key())
    assert refused.returncode != 0
    assert "HOST=0.0.0.0 is reachable from other machines" in refused.stderr and "JITPAY_API_KEY" in refused.stderr
    assert not venv.exists()  # refused before any set-up
    for host in ("127.0.0.1", "localhost", "::1"):
        assert make("run-check", f"HOST={host}", env=without_api_key()).returncode == 0
    assert make("run-check", "HOST=0.0.0.0", env={**without_api_key(), "JITPAY_API_KEY": "x" * 32}).returncode == 0


# -- jit serve and the API keys -----------------------------------------------------------------------------------------
def example_copy(tmp_path: Path) -> Path:
    """app.example.yaml copied out of the repository, set up as its comments say: the sandbox keys written by
    jit-sandbox init, the demo/ folder beside it."""
    shutil.copy(ROOT / "app.example.yaml", tmp_path / "app.yaml")
    shutil.copytree(ROOT / "demo", tmp_path / "demo", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([SANDBOX, "init", str(tmp_path / ".sandbox")], check=True, capture_output=True, timeout=60)
    return tmp_path / "app.yaml"


def jit(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else without_api_key())


def test_the_example_says_what_it_needs() -> None:
    comments = "\n".join(line for line in (ROOT / "app.example.yaml").read_text().splitlines()
                         if line.lstrip().startswith("#"))
    assert "jit-sandbox init .sandbox" in comments and "demo.shop" in comments and "JITPAY_API_KEY" in comments


def test_jit_elements_and_call_work_without_the_serving_only_api_key(tmp_path: Path) -> None:
    example_copy(tmp_path)
    listed = jit("elements", "app.yaml", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "pays.services.PaySvc" in listed.stdout
    created = jit("call", "app.yaml", "pays.services.PaySvc.create", "subject=VIP", "amount=9.99", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert '"status": "pending"' in created.stdout
    # the plugins: line dropped, as the comments offer: it loads without the demo folder
    bare = tmp_path / "bare"
    bare.mkdir()
    text = (tmp_path / "app.yaml").read_text().replace("  - demo.shop ", "  # - demo.shop ")
    (bare / "app.yaml").write_text(text.replace("plugins:\n", "plugins: []\n"))
    shutil.copytree(tmp_path / ".sandbox", bare / ".sandbox")
    assert jit("elements", "app.yaml", cwd=bare).returncode == 0


def test_jit_serve_needs_every_api_key(tmp_path: Path) -> None:
    example_copy(tmp_path)
    refused = jit("serve", "app.yaml", "--port", "1", cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "apiKeys[0]: environment variable JITPAY_API_KEY is not set" in refused.stderr


def test_jit_serve_refuses_the_published_demo_key_on_a_non_loopback_host(tmp_path: Path) -> None:
    example_copy(tmp_path)
    env = {**without_api_key(), "JITPAY_API_KEY": DEMO_KEY}
    for host in ("0.0.0.0", "::", "192.0.2.7", "shop.example"):
        refused = jit("serve", "app.yaml", "--host", host, "--port", "1", "--workers", "2", cwd=tmp_path, env=env)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert f"refusing to serve on {host}" in refused.stderr and "published key" in refused.stderr
    # on loopback the demo key is fine
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen([JIT, "serve", "app.yaml", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=tmp_path, env=env, stdout=output, stderr=output)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert health.status_code == 200
        created = httpx.post(f"http://127.0.0.1:{port}/api/shop/pays/services/PaySvc/create",
                             json={"subject": "VIP", "amount": "1.00"},
                             headers={"Authorization": f"Bearer {DEMO_KEY}"}, timeout=10)
        assert created.status_code == 200, created.text
    finally:
        server.terminate()
        server.wait(timeout=20)
    # and the database file it created is its owner's only
    assert (tmp_path / "shop.db").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("10.0.0.1", False), ("example.com", False), ("", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_makefile_key_is_the_published_one() -> None:
    assert DEMO_KEY in (ROOT / "Makefile").read_text() and DEMO_KEY in PUBLISHED_API_KEYS
