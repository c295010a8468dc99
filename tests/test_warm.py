"""What tests/warm.py trains before the xdist workers start, and when (no model is trained here)."""

from pathlib import Path

from tests import warm

HERE = Path(__file__).parent


def test_every_consumer_named_is_a_test_file():
    """A renamed test file would otherwise silently stop its models from being trained first."""
    files = {p.stem for p in HERE.glob("test_*.py")}
    for job, needs in warm.JOBS:
        assert needs <= files, (job.__name__, needs - files)


def test_a_job_runs_only_when_two_of_its_consumers_are_in_the_run():
    run = warm.files_in_run([f"{HERE / 'test_lessons.py'}::test_the_gap_is_compared_as_printed",
                             str(HERE / "test_pipeline.py")], HERE)
    assert run == {"test_lessons", "test_pipeline"}
    assert [job.__name__ for job in warm.jobs_for(run)] == ["minilm_bbc"]  # bbc_ws and its class:sport retrain
    assert warm.jobs_for({"test_lessons"}) == [] and warm.jobs_for({"test_core", "test_data"}) == []
    everything = warm.files_in_run([], HERE)  # no argument: the tests folder
    assert "test_warm" in everything and [job for job, _ in warm.JOBS] == warm.jobs_for(everything)


def test_a_failing_job_is_reported_and_left_to_the_tests():
    def broken():
        raise RuntimeError("no data here")

    name, seconds, error = warm._run(broken)
    assert name == "broken" and seconds >= 0 and error == "RuntimeError: no data here"
    assert warm.warm([], 2) == []
