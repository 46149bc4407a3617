"""The house, checked by reading the code: arrows one way, `shared/` small and server-free,
arq behind its two seams, status names in one place, and a client that loads no server."""

from __future__ import annotations

import ast
import difflib
import itertools
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from shared import schemas

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "worker", "shared", "promptbatch")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names, at any depth in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _imports_any(path: Path, roots: tuple[str, ...]) -> set[str]:
    return {name for name in _imports(path) if name.split(".")[0] in roots}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("shared", ("api", "worker", "promptbatch", "fastapi", "starlette")),
        ("api", ("worker", "promptbatch")),
        ("worker", ("api", "promptbatch", "fastapi")),
        ("promptbatch", ("api", "worker", "fastapi", "arq")),
    ],
)
def test_imports_run_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    crossing = {
        str(path.relative_to(ROOT)): sorted(_imports_any(path, forbidden))
        for path in _modules(package)
        if _imports_any(path, forbidden)
    }
    assert crossing == {}


def test_shared_does_not_import_arqs_worker_side() -> None:
    users = [
        str(path.relative_to(ROOT))
        for path in _modules("shared")
        if any(name == "arq.worker" or name.startswith("arq.worker.") for name in _imports(path))
    ]
    assert users == []


def test_arq_is_imported_in_two_modules_only() -> None:
    users = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in _modules(package)
        if _imports_any(path, ("arq",))
    )
    assert users == ["shared/jobs.py", "worker/main.py"]


def test_no_shared_module_is_longer_than_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _modules("shared")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}


def test_no_two_module_names_are_nearly_the_same() -> None:
    """Names say what a thing is: `limits` and `limiter` were two unrelated things. The same
    name in two rooms (`api/routes/batches.py` and `shared/batches.py`) is one concept."""
    stems = sorted(
        {path.stem.lstrip("_") for package in PACKAGES for path in _modules(package)} - {"__init__"}
    )
    close = [
        (a, b)
        for a, b in itertools.combinations(stems, 2)
        if difflib.SequenceMatcher(None, a, b).ratio() >= 0.75
    ]
    assert close == []


def test_lua_scripts_spell_no_status_name() -> None:
    """Lua reads status names from the generated tables (`STATUS`, `ITEM_FINAL`), never as
    literals."""
    names = "|".join({*schemas.BATCH_STATUSES, *get_args(schemas.ItemStatus)})
    literal = re.compile(rf"""['"]({names})['"]""")
    spelt = {
        str(path.relative_to(ROOT)): literal.findall(path.read_text(encoding="utf-8"))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.lua"))
    }
    assert len(spelt) >= 5  # the scripts were found
    assert {path: found for path, found in spelt.items() if found} == {}


def test_importing_the_client_loads_no_server_module() -> None:
    probe = (
        "import sys, promptbatch\n"
        "from promptbatch import AsyncClient, Client\n"
        "roots = {'api', 'worker', 'arq', 'fastapi', 'starlette', 'uvicorn', 'langchain_core'}\n"
        "server = [m for m in sys.modules if m.split('.')[0] in roots or m == 'shared.settings']\n"
        "loaded = sorted(server)\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""


#: A key built in the script: `redis.call('GET', ARGV[1] .. id)`, or `CLAIM_PREFIX .. id`.
#: (A script may name a key from a template only through a check that it was given: the
#: scheduler's `given`; `tests/store/test_script_keys.py` watches every script run.)
_BUILT_KEY = re.compile(r"redis\.call\('\w+', [^,)]*\.\.|\b[A-Z]+_(?:BEFORE|PREFIX)\s*\.\.")


def test_no_lua_script_builds_a_key_it_touches() -> None:
    scripts = sorted(ROOT.glob("*/lua/*.lua"))
    assert len(scripts) > 20
    building = {p.name for p in scripts if _BUILT_KEY.search(p.read_text(encoding="utf-8"))}
    assert building == set()
