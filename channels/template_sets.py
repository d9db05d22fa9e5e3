"""Template versions: a lead is sent the templates it was enrolled with.

Enrolling takes the message templates (`email/` and `sms/` under the templates
directory, language variants such as `body.de.html` included) as they are, stores them
once per version in `template_sets` (keyed by the digest of their contents) and puts the
digest in the enrollment. The send renders from that stored version, so an edit reaches
the leads enrolled after it, not those already in flight (`nurture migrate-leads` moves
those, to the templates of its own time). It also keeps an API or import on one machine
and workers on another consistent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jinja2 import DictLoader
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models.db import TemplateSet
from models.jinja import sandboxed_environment

# The templates a sequence's steps use; the reps' notices (sales/) are not a sequence's.
MESSAGE_FOLDERS = ("email", "sms")


class UnknownTemplateSet(LookupError):
    """An enrollment names a template version the database does not hold."""


@dataclass(frozen=True)
class Templates:
    digest: str
    files: dict[str, str]  # path relative to the templates directory -> source


def _message_files(templates_dir: Path) -> list[Path]:
    return sorted(
        path
        for folder in MESSAGE_FOLDERS
        if (templates_dir / folder).is_dir()
        for path in (templates_dir / folder).rglob("*")
        if path.is_file()
    )


def read_templates(templates_dir: Path) -> Templates:
    """The message templates as the files hold them now."""
    files = {
        path.relative_to(templates_dir).as_posix(): path.read_text(encoding="utf-8")
        for path in _message_files(templates_dir)
    }
    canonical = json.dumps(files, sort_keys=True, ensure_ascii=False).encode()
    return Templates(digest=hashlib.sha256(canonical).hexdigest(), files=files)


class TemplateVersions:
    """Store and find template versions.

    `current()` is called on every enrollment: it looks at the files at most once a
    second (a look costs ~2 ms, too much per lead of a large import), re-reads them only
    when one was added, removed or changed (by size or modification time), and stores
    each version once per process."""

    RECHECK_SECONDS = 1.0

    def __init__(self, templates_dir: Path, sessions: sessionmaker) -> None:
        self.templates_dir = Path(templates_dir)
        self.sessions = sessions
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._checked_at = -math.inf
        self._current: Templates | None = None
        self._stored: set[str] = set()

    def current(self) -> str:
        """The digest of the templates as they are now, stored in the database."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self.RECHECK_SECONDS:
                signature = self._file_signature()
                if signature != self._signature:
                    self._current = read_templates(self.templates_dir)
                    self._signature = signature
                self._checked_at = now
            templates = self._current
            if templates.digest not in self._stored:
                with self.sessions() as session:
                    store(session, templates)
                self._stored.add(templates.digest)
            return templates.digest

    def environment(self, digest: str) -> SandboxedEnvironment:
        """The sandboxed environment that renders version `digest`."""
        return _environment_for(digest, self.sessions)

    def _file_signature(self) -> tuple:
        stats = []
        for path in _message_files(self.templates_dir):
            stat = os.stat(path)
            stats.append((str(path), stat.st_size, stat.st_mtime_ns))
        return tuple(stats)


def store(session: Session, templates: Templates) -> None:
    """Store a version once; another process storing it at the same moment is fine."""
    if session.get(TemplateSet, templates.digest) is not None:
        return
    try:
        with session.begin_nested():
            session.add(TemplateSet(digest=templates.digest, files=templates.files))
        session.commit()
    except IntegrityError:  # stored meanwhile by another process: the same contents
        session.rollback()


@lru_cache(maxsize=32)
def _environment_for(digest: str, sessions: sessionmaker) -> SandboxedEnvironment:
    # A version never changes once stored, so its environment (and Jinja's compiled
    # templates) is kept for good.
    with sessions() as session:
        files = session.scalar(select(TemplateSet.files).where(TemplateSet.digest == digest))
    if files is None:
        raise UnknownTemplateSet(
            f"template version {digest[:12]} is not in the database (template_sets): "
            "was the lead enrolled against another database?"
        )
    return sandboxed_environment(DictLoader(files))
