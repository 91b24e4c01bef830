"""Messages: the console as before, and RUN/log.txt once the run has written something."""

from __future__ import annotations

from nastk.logs import LOG_FILE, logger, record, run_log, start_log_file


def test_a_run_log_holds_messages_until_the_run_starts_and_keeps_file_only_records_off_the_console(
    tmp_path, capsys
):
    run = tmp_path / "run"
    with run_log(quiet=False):
        logger.info("before the run wrote anything")
        assert not run.exists()  # a run refused now leaves nothing behind
        start_log_file(run)
        record("for the file only")
        logger.warning("for both")
    text = (run / LOG_FILE).read_text()
    assert (
        "before the run wrote anything" in text and "for the file only" in text and "WARNING for both" in text
    )
    err = capsys.readouterr().err
    assert "for both" in err and "before the run" in err and "for the file only" not in err


def test_quiet_shows_warnings_only_and_ranks_other_than_0_log_nothing(tmp_path, capsys):
    with run_log(quiet=True):
        start_log_file(tmp_path)
        logger.info("an info")
        logger.warning("a warning")
    err = capsys.readouterr().err
    assert "a warning" in err and "an info" not in err
    with run_log(quiet=False, enabled=False):
        start_log_file(tmp_path / "other")
        logger.info("rank 1")
    assert not (tmp_path / "other").exists()
    assert "rank 1" not in (tmp_path / LOG_FILE).read_text()
