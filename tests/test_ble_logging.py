"""A bleak handler error that dbus_fast logs with a traceback becomes one warning line."""

from __future__ import annotations

import logging

import pytest

import drivers.ble  # noqa: F401 - installs the filter on dbus_fast's logger


def test_handler_error_is_one_line_without_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("dbus_fast.message_bus")
    with caplog.at_level(logging.DEBUG, logger="dbus_fast.message_bus"):
        try:
            dict[str, int]()["items"]  # what bleak raised when a BlueZ object vanished mid-signal
        except KeyError:
            logger.exception("A message handler raised an exception: %s", "x")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    text = caplog.text
    assert "Traceback" not in text and "KeyError" in text and "scanning goes on" in text
