from __future__ import annotations

import io

from hxp_enterprise_llm.models.progress import HashProgress


def test_a_log_stream_gets_plain_lines_and_a_final_total() -> None:
    stream = io.StringIO()  # not a TTY: one line per interval, no carriage returns
    progress = HashProgress(stream, log_interval=0, quiet_below=0)
    progress.start(3_000_000_000, "verifying m")
    for _ in range(3):
        progress.advance(1_000_000_000)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[-1].startswith("verifying m: 3.00 GB / 3.00 GB (100%)")
    assert len(lines) == 4


def test_small_models_print_nothing() -> None:
    stream = io.StringIO()
    progress = HashProgress(stream, log_interval=0)
    progress.start(10_000_000, "verifying small")
    progress.advance(10_000_000)
    progress.finish()
    assert stream.getvalue() == ""


def test_the_service_gets_its_progress_as_log_records_not_text_on_the_stream() -> None:
    # The container's log must be JSON only: the service hands progress to its logger.
    stream, records = io.StringIO(), []
    progress = HashProgress(stream, log_line=records.append, log_interval=0, quiet_below=0)
    progress.start(2_000_000_000, "verifying m")
    progress.advance(2_000_000_000)
    progress.finish()
    assert stream.getvalue() == ""
    assert records[-1].startswith("verifying m: 2.00 GB / 2.00 GB (100%)")
