"""Optuna storage URLs: open any of them, mask their passwords, lock local files (private).

Shared by the sweeper plugin (``hydra_plugins.mlcycle_optuna_sweeper``) and the job side
(:class:`~lightning_mlcycle.tuning.OptunaPruning`), which both talk to the same storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning_mlcycle._errors import MLCycleError

#: environment variable a storage password is read from when the URL has none (or ``***``)
PASSWORD_ENV = "MLCYCLE_OPTUNA_STORAGE_PASSWORD"
#: what a password is replaced with wherever a URL is shown or saved
MASK = "***"
#: prefix of journal-file storages (Optuna has no URL scheme for them)
JOURNAL_PREFIX = "journal:"


def is_journal(url: str) -> bool:
    """Return True for ``journal:<path>`` URLs (an Optuna ``JournalFileBackend``).

    Example:
        >>> is_journal("journal:/tmp/study.log"), is_journal("sqlite:///a.db")
        (True, False)
    """
    return url.startswith(JOURNAL_PREFIX)


def _journal_path(url: str) -> Path:
    return Path(url[len(JOURNAL_PREFIX):].removeprefix("//")).expanduser()


def mask_url(url: str | None) -> str | None:
    """``url`` with its password replaced by ``***`` (unchanged when it has none).

    Example:
        >>> mask_url("postgresql://bob:secret@db.example.org:5432/optuna")
        'postgresql://bob:***@db.example.org:5432/optuna'
        >>> mask_url("sqlite:///sweep/optuna.db")
        'sqlite:///sweep/optuna.db'
    """
    if url is None or is_journal(url):
        return url
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # not a URL sqlalchemy understands: nothing we can reliably mask
        return url
    if parsed.password is None:
        return url
    return parsed.render_as_string(hide_password=True)


def url_password(url: str | None) -> str | None:
    """The literal password in ``url`` (None when it has none or it is masked)."""
    if url is None or is_journal(url):
        return None
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        return None
    return None if password in (None, MASK) else str(password)


def with_env_password(url: str) -> str:
    """Fill a missing or masked password of ``url`` from ``$MLCYCLE_OPTUNA_STORAGE_PASSWORD``."""
    secret = os.environ.get(PASSWORD_ENV)
    if not secret or is_journal(url):
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.username is None or parsed.password not in (None, MASK):
        return url
    return parsed.set(password=secret).render_as_string(hide_password=False)


def scrub(text: str, url: str | None) -> str:
    """``text`` with the password of ``url`` (if any) replaced by ``***``."""
    secret = url_password(url) or os.environ.get(PASSWORD_ENV)
    return text.replace(secret, MASK) if secret else text


def local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage (None for database servers)."""
    if is_journal(url):
        return _journal_path(url)
    if url.startswith("sqlite:///"):
        name = url[len("sqlite:///"):]
        return None if name in ("", ":memory:") else Path(name)
    return None


def open_storage(url: str, *, key: str = "storage") -> Any:
    """Open an Optuna storage from ``url`` and check that it answers.

    ``url`` is any SQLAlchemy URL Optuna accepts (``sqlite:///...``, ``postgresql://...``,
    ``mysql+pymysql://...``) or ``journal:<path>`` for a journal file. A masked or missing password
    is read from ``$MLCYCLE_OPTUNA_STORAGE_PASSWORD``. Errors name ``key`` and never show the
    password.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> type(open_storage(f"sqlite:///{d}/o.db")).__name__
        'RDBStorage'
        >>> type(open_storage(f"journal:{d}/o.log")).__name__
        'JournalStorage'
    """
    import optuna

    if not isinstance(url, str) or not url:
        raise MLCycleError(f"`{key}` must be an Optuna storage URL, but got {url!r}.")
    try:
        if is_journal(url):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = _journal_path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        real = with_env_password(url)
        engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            file = local_file(url)
            if file is not None:
                file.parent.mkdir(parents=True, exist_ok=True)
            # parallel jobs write to one file: wait for the lock instead of failing at once
            engine_kwargs["connect_args"] = {"timeout": 60}
            # two processes creating Optuna's tables at once collide (alembic_version UNIQUE)
            with storage_lock(url):
                return optuna.storages.RDBStorage(real, engine_kwargs=engine_kwargs)
        elif url.startswith(("postgresql", "mysql")):
            # an unreachable host must fail in seconds, not hang the sweep (libpq/MySQL option)
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        return optuna.storages.RDBStorage(real, engine_kwargs=engine_kwargs)
    except MLCycleError:
        raise
    except Exception as err:  # sqlalchemy / driver errors: show them without the secret
        message = scrub(f"{type(err).__name__}: {err}", url)
        raise MLCycleError(
            f"`{key}`: cannot open the Optuna storage {mask_url(url)!r}: {message}"
        ) from None


@contextlib.contextmanager
def storage_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock next to a local storage file (no-op for database servers).

    SQLite reads outside a transaction, so two processes could both see a trial WAITING and both
    claim it; a file lock makes the claim atomic. Servers (PostgreSQL, MySQL) lock the row
    (``SELECT ... FOR UPDATE``) in Optuna itself.

    The lock file is ``<file>.claim.lock``, not ``<file>.lock``: that is the name of Optuna's own
    journal-file lock (a symlink created per write). Sharing it made every journal write wait for
    Optuna's 30 s grace period and then delete our lock file (a 4-trial, 2-worker journal sweep
    took 140 s instead of ~40 s, and a deleted lock file no longer excludes anyone).

    Example:
        >>> import os, tempfile
        >>> log_file = os.path.join(tempfile.mkdtemp(), "study.log")
        >>> with storage_lock(f"journal:{log_file}"):  # Optuna's journal lock stays free
        ...     os.symlink(log_file, log_file + ".lock"); os.unlink(log_file + ".lock")
    """
    file = local_file(url)
    if file is None:
        yield
        return
    lock = file.with_name(file.name + ".claim.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
