import inspect

import queuetopia_py

EXPECTED = {
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "Event",
    "EventKind",
    "Intervention",
    "InvalidJobError",
    "Job",
    "JobAbortedError",
    "JobCancelledError",
    "JobDeadLetteredError",
    "JobFailedError",
    "JobGivenUpError",
    "JobInProgressError",
    "JobNotFoundError",
    "JobState",
    "JobStateError",
    "JobSummary",
    "Lock",
    "MoveTo",
    "OnFailure",
    "Options",
    "Page",
    "Performer",
    "Progress",
    "QueueStatus",
    "Queuetopia",
    "QueuetopiaError",
    "RowSource",
    "RunningAttempt",
    "Schedule",
    "ScheduleStatus",
    "SchemaMissingError",
    "Status",
    "Subscription",
    "Suspension",
    "WaitTimeoutError",
    "backfill_source",
    "install_source",
    "migrate",
    "report_progress",
    "uninstall_source",
}


def test_public_api_is_exactly_the_documented_names() -> None:
    assert set(queuetopia_py.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(queuetopia_py, name).__doc__, f"{name} has no docstring"


def test_every_library_error_derives_from_one_base() -> None:
    for name in EXPECTED:
        obj = getattr(queuetopia_py, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, queuetopia_py.QueuetopiaError)


def test_package_ships_its_type_marker() -> None:
    assert inspect.getfile(queuetopia_py).rsplit("/", 1)[0] + "/py.typed"
    from importlib.resources import files

    assert files("queuetopia_py").joinpath("py.typed").is_file()
