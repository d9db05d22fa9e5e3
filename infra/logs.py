"""Logging for every process: text or JSON lines, with Temporal's context lifted into
fields and email addresses and phone numbers masked.

- `NURTURE_LOG_FORMAT=json`: one JSON object per line: `time` (UTC, ISO 8601), `level`,
  `logger`, `message`, then where known `lead_id`, `workflow_id`, `run_id`, `activity`,
  `attempt`, `step`, and any other `extra` fields; `exc_info` for a traceback.
- The context comes from the `temporal_workflow` / `temporal_activity` extras that
  Temporal's `workflow.logger` and `activity.logger` attach, from the running activity
  for plain loggers called inside one, and from `lead=` / `step=` in our own messages.
  The lead ID is the workflow ID's (`lead-<lead id>`).
- Masking is a filter on every handler, in both formats: `ada@example.com` becomes
  `a***@example.com` and `+14155550147` (or `(415) 555-0147`) `+1******0147`
  (`******0147`), in the message, its arguments, every extra field and tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS, merge_record_extra
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# --- masking -------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.+-])([A-Za-z0-9][A-Za-z0-9._+-]*)(@|%40)([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)
_NOT_BEFORE = r"(?<![\w.+/:-])"  # not inside a word, a number, a path or a time
_NOT_AFTER = r"(?![\w]|[.:/-]\w)"
_PHONE = re.compile(
    _NOT_BEFORE + r"(?:"
    r"\+\d(?:[ .()-]{0,2}\d){6,14}"  # international: +1 415 555 0147, +44 20 7946 0958
    r"|\(\d{2,5}\)[ ]?\d{2,5}(?:[ -]\d{2,5}){0,3}"  # (415) 555-0147
    r"|\d{2,5}(?:[ -]\d{2,6}){1,4}"  # 415-555-0147, 020 7946 0958, 06 12 34 56 78
    r"|\d{3}\.\d{3}\.\d{4}"  # 415.555.0147
    r"|1?[2-9]\d{2}[2-9]\d{6}"  # 4155550147, 14155550147 (North American)
    r"|0[1-9]\d{8,9}"  # 07700900123 (a national trunk prefix)
    r")" + _NOT_AFTER
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}-\d{2}-\d{4}")


def _mask_email(match: re.Match) -> str:
    return f"{match.group(1)[0]}***{match.group(2)}{match.group(3)}"


def _mask_phone(match: re.Match) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15 or _DATE.fullmatch(text):
        return text
    if text.startswith("+"):
        return f"+{digits[0]}{'*' * (len(digits) - 5)}{digits[-4:]}"
    return f"{'*' * (len(digits) - 4)}{digits[-4:]}"


def mask(text: str) -> str:
    """Email addresses and phone numbers in `text`, masked."""
    if "@" in text or "%40" in text:
        text = _EMAIL.sub(_mask_email, text)
    if sum(c.isdigit() for c in text) >= 7:
        text = _PHONE.sub(_mask_phone, text)
    return text


def mask_value(value: Any) -> Any:
    """A log field masked: strings, and strings inside dicts, lists and tuples."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, Mapping):
        return {key: mask_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [mask_value(item) for item in value]
    return mask(str(value))


# Attributes every LogRecord has (and ours): never treated as extra fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
}  # fmt: skip


class MaskingFilter(logging.Filter):
    """Masks emails and phone numbers in a record's message (with its arguments), its
    extra fields, and its traceback. On every handler; a record is masked once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_nurture_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = mask(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                record.__dict__[key] = mask_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        record._nurture_masked = True
        return True


# --- Temporal context ----------------------------------------------------------------------

CONTEXT_FIELDS = ("lead_id", "workflow_id", "run_id", "activity", "attempt", "step")
_TOKENS = re.compile(r"\b(lead|step)=([\w.:-]+)")
# Raw context objects, lifted into the fields above and not repeated.
_DROPPED = ("temporal_workflow", "temporal_activity", "workflow_info", "activity_info",
            "temporal_log", "color_message")  # fmt: skip


class TemporalContextFilter(logging.Filter):
    """Sets the context fields on a record: from Temporal's logger extras, from the
    activity running in this thread, and from `lead=` / `step=` in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        found: dict[str, Any] = {}
        workflow = getattr(record, "temporal_workflow", None)
        if isinstance(workflow, Mapping):
            found.update(workflow_id=workflow.get("workflow_id"), run_id=workflow.get("run_id"))
        details = getattr(record, "temporal_activity", None)
        if not isinstance(details, Mapping):
            details = _current_activity()
        if details:
            found.update(
                workflow_id=details.get("workflow_id"),
                run_id=details.get("workflow_run_id"),
                activity=details.get("activity_type"),
                attempt=details.get("attempt"),
            )
        if isinstance(found.get("workflow_id"), str) and found["workflow_id"].startswith("lead-"):
            found["lead_id"] = found["workflow_id"].removeprefix("lead-")
        if "lead_id" not in found or "step" not in found:
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            for name, value in _TOKENS.findall(message):
                found.setdefault("lead_id" if name == "lead" else "step", value)
        if getattr(record, "step_id", None) is not None:
            found.setdefault("step", record.step_id)
        for key in CONTEXT_FIELDS:
            if getattr(record, key, None) is None and found.get(key) is not None:
                setattr(record, key, found[key])
        return True


def _current_activity() -> Mapping[str, Any] | None:
    try:
        from temporalio import activity

        if not activity.in_activity():
            return None
        info = activity.info()
        return {"workflow_id": info.workflow_id, "workflow_run_id": info.workflow_run_id,
                "activity_type": info.activity_type, "attempt": info.attempt}  # fmt: skip
    except Exception:
        return None


# --- formats -------------------------------------------------------------------------------


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, the context fields, then
    any other extra fields."""

    def __init__(self) -> None:
        super().__init__(reserved_attrs=[*RESERVED_ATTRS, "taskName", *_DROPPED],
                         json_ensure_ascii=False)  # fmt: skip

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        log_data["time"] = (
            datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        ).replace("+00:00", "Z")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        for key in CONTEXT_FIELDS:
            if getattr(record, key, None) is not None:
                log_data[key] = getattr(record, key)
        log_data.update(message_dict)
        merge_record_extra(record, log_data, reserved=self._skip_fields)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return mask(super().formatException(ei))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return mask(super().formatException(ei))


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when each record comes: whoever swapped it since
    set-up (a test runner capturing a command's output, then closing that stream) must
    not leave the root logger writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass  # always the current sys.stderr


def handler(log_format: str = "text", stream=None) -> logging.Handler:
    """A stream handler (stderr) in `log_format`, with the context and masking filters."""
    result = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    result.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    result.addFilter(TemporalContextFilter())
    result.addFilter(MaskingFilter())
    return result


def setup(level: str | int = "INFO", log_format: str = "text") -> None:
    """One handler of ours on the root logger, on stderr (replacing an earlier one, or a
    `basicConfig` one); every other handler already set up, on any logger, gets the
    filters too, so nothing is logged unmasked."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_nurture", False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    ours = handler(log_format)
    ours._nurture = True
    root.addHandler(ours)
    root.setLevel(level)
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        for other in getattr(logger, "handlers", ()):
            add_filters(other)
    logging.captureWarnings(True)  # Python warnings as log records too (one format)
    # Each request's parameters (phone numbers, message bodies) at INFO: warnings only.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    # A migration at start-up logs a dozen lines at INFO; what it did is reported by us.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from temporalio import activity, workflow

    # In JSON the context is in fields; in text it stays appended to the message.
    activity.logger.activity_info_on_message = log_format != "json"
    workflow.logger.workflow_info_on_message = log_format != "json"


def add_filters(target: logging.Handler) -> None:
    """Give a handler set up elsewhere (uvicorn's, say) the context and masking filters."""
    kinds = {type(existing) for existing in target.filters}
    if TemporalContextFilter not in kinds:
        target.addFilter(TemporalContextFilter())
    if MaskingFilter not in kinds:
        target.addFilter(MaskingFilter())
