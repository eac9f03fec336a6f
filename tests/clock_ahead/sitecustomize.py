"""Moves this Python's wall clock CLOCK_AHEAD_DAYS days ahead (default 365).

`make test-clock-ahead` puts this folder first on PYTHONPATH, so every Python the
suite starts (pytest's workers, the function's server, the tools run as commands)
imports it before anything else: ``datetime.now()``, ``date.today()`` and
``time.time()`` then read as a day a year from now, while ``time.monotonic()`` (the
deadlines) and the storage stand-in's own clock are left alone.  A test that mixes
a fixed date with the wall clock fails under it.
"""

import datetime as _datetime
import os
import time as _time

_AHEAD = _datetime.timedelta(days=float(os.environ.get("CLOCK_AHEAD_DAYS", "365")))
_real_datetime, _real_date, _real_time, _real_time_ns = (
    _datetime.datetime,
    _datetime.date,
    _time.time,
    _time.time_ns,
)


class _Instances(type):
    """isinstance() and issubclass() accept the real classes' instances (arithmetic returns those)."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls.__bases__[0])

    def __subclasscheck__(cls, sub):
        return issubclass(sub, cls.__bases__[0])


class datetime(_real_datetime, metaclass=_Instances):
    @classmethod
    def now(cls, tz=None):
        return _real_datetime.now(tz) + _AHEAD

    @classmethod
    def utcnow(cls):
        return _real_datetime.now(_datetime.UTC).replace(tzinfo=None) + _AHEAD

    @classmethod
    def today(cls):
        return cls.now()


class date(_real_date, metaclass=_Instances):
    @classmethod
    def today(cls):
        return datetime.now().date()


_datetime.datetime, _datetime.date = datetime, date
_time.time = lambda: _real_time() + _AHEAD.total_seconds()
_time.time_ns = lambda: _real_time_ns() + int(_AHEAD.total_seconds() * 1e9)
