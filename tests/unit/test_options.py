from datetime import timedelta

import pytest

from queuetopia_py import ConfigurationError, Performer, Queuetopia


class P(Performer):
    def perform(self, job):  # type: ignore[no-untyped-def]
        return None


def test_class_keywords_set_options_and_constructor_keywords_win(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"

    class MailQueue(Queuetopia, repo=url, performer=P, poll_interval=5):
        pass

    assert MailQueue().options.poll_interval == 5
    assert MailQueue(poll_interval=timedelta(seconds=2)).options.poll_interval == 2
    assert MailQueue().options.performer is P


def test_scope_defaults_to_the_subclass_qualified_name(tmp_path) -> None:
    class MailQueue(Queuetopia, repo=f"sqlite:///{tmp_path / 'q.db'}"):
        pass

    assert (
        MailQueue().scope == f"{__name__}.test_scope_defaults_to_the_subclass_qualified_name"
        ".<locals>.MailQueue"
    )


def test_queuetopia_itself_keeps_its_default_scope(tmp_path) -> None:
    # Jobs created by a plain Queuetopia(...) before its module became private stay seen.
    queue = Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}")
    assert queue.scope == "queuetopia_py.queuetopia.Queuetopia"


def test_subclass_of_a_subclass_inherits_and_overrides_options(tmp_path) -> None:
    class Base(Queuetopia, repo=f"sqlite:///{tmp_path / 'q.db'}", max_concurrency=3):
        pass

    class Child(Base, max_concurrency=7):
        pass

    assert Base().options.max_concurrency == 3
    assert Child().options.max_concurrency == 7


def test_each_instance_gets_its_own_node_name(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert Queuetopia(repo=url).node != Queuetopia(repo=url).node


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "repo"),
        ({"repo": "not a url"}, "repo"),
        ({"repo": "sqlite://"}, "in-memory"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": None}, "poll_interval"),
        ({"repo": "foo://x"}, "unsupported database"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"executor": "fiber"}, "executor"),
        ({"performer": object()}, "performer"),
        ({"scope": ""}, "scope"),
        ({"table_prefix": "bad-prefix;"}, "table_prefix"),
        ({"colour": "blue"}, "unknown option"),
        ({"max_params_bytes": 0}, "max_params_bytes: must be an int from 1 to 67,108,864"),
        ({"max_params_bytes": 64 * 1024 * 1024 + 1}, "max_params_bytes"),
        ({"max_params_bytes": 1.5}, "max_params_bytes"),
        ({"max_params_bytes": True}, "max_params_bytes"),
    ],
)
def test_bad_options_raise_a_configuration_error_naming_the_option(
    tmp_path, options: dict, message: str
) -> None:
    options = (
        {"repo": f"sqlite:///{tmp_path / 'q.db'}", **options}
        if "repo" not in options and options
        else options
    )
    with pytest.raises(ConfigurationError, match=message):
        Queuetopia(**options)


def test_start_without_a_performer_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="performer"):
        Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}").start()


def test_disabled_scheduler_does_not_start(tmp_path) -> None:
    queue = Queuetopia(repo=f"sqlite:///{tmp_path / 'q.db'}", performer=P, disabled=True)
    queue.start()
    assert not queue.running
