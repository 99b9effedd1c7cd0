"""Every command the unit answers: its name (the topic after ``cmd/``) and its handler."""

from __future__ import annotations

from gateway.commands import alert, config, locate, ping, rebirth
from gateway.commands.core import Handler

HANDLERS: dict[str, Handler] = {
    "ping": ping.handle,
    "rebirth": rebirth.handle,
    "locate": locate.handle,
    "alert/start": alert.start,
    "alert/stop": alert.stop,
    "config": config.handle,
}
