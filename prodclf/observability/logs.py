"""prodclf's log lines: today's text, or one JSON object a line (``--log-format json``).

JSON lines carry the command and its run id on every line, so a log store can join a job's
lines to its lineage run and its metrics without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

LOG_FORMATS = ("text", "json")
#: The default of ``--log-format`` (the spark-submit entries in jobs/ take no global flags).
LOG_FORMAT_ENV = "PRODCLF_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class LogContext:
    """The command running in this process and the id its lines are filed under."""

    command: str = ""
    run_id: str = ""


_CONTEXT = LogContext()


def set_context(command: str | None = None, run_id: str | None = None) -> None:
    """Name the command and its run id for every line from now on."""
    if command is not None:
        _CONTEXT.command = command
    if run_id is not None:
        _CONTEXT.run_id = run_id


def context() -> LogContext:
    return LogContext(_CONTEXT.command, _CONTEXT.run_id)


class JsonFormatter(logging.Formatter):
    """One JSON object a record: ts, level, logger, message, command, run_id (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc)
        line = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "command": _CONTEXT.command or None,
            "run_id": _CONTEXT.run_id or None,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # A message may hold newlines (a Spark error): json.dumps keeps them inside the line.
        return json.dumps(line, default=str)


#: Marks the handler ``setup_logging`` installs, so a second call replaces it.
_OURS = "_prodclf_handler"


def setup_logging(level: str, fmt: str = "text") -> None:
    """Configure the root logger for one command.

    ``text`` is ``logging.basicConfig`` with today's format (a no-op where the host already
    configured logging). ``json`` always installs one stderr handler of its own: the
    operator asked for JSON lines, so they are written even where a host added handlers.
    """
    numeric = getattr(logging, str(level).upper(), logging.INFO)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    if fmt != "json":
        logging.basicConfig(level=numeric, format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _OURS, True)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)
