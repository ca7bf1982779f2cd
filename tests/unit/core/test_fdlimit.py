"""The open-file limit at a frontend's start (service/core/fdlimit.py): the soft limit is
raised to the hard one; a hard limit below the sockets' count is refused in production
with the fix in the message, and only warned about in development; one that leaves no
headroom is warned about."""

from __future__ import annotations

import logging
import resource

import pytest

from service.core.config import ConfigError
from service.core.fdlimit import UNLIMITED_TARGET, raise_open_files


class Limits:
    def __init__(self, soft: int, hard: int) -> None:
        self.soft, self.hard = soft, hard

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE and value[1] == self.hard
        if value[0] > self.hard and self.hard != resource.RLIM_INFINITY:
            raise ValueError("not allowed to raise maximum limit")
        self.soft = value[0]


def run(limits: Limits, sockets: int, strict: bool) -> int:
    return raise_open_files(sockets, 256, strict=strict, what="a test frontend",
                            getrlimit=limits.get, setrlimit=limits.set)


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    limits = Limits(1024, 65536)
    assert run(limits, 20000, strict=True) == 65536 == limits.soft


def test_an_unlimited_hard_limit_gets_a_finite_soft_one() -> None:
    limits = Limits(1024, resource.RLIM_INFINITY)
    assert run(limits, 20000, strict=True) == UNLIMITED_TARGET


def test_a_hard_limit_below_the_need_is_refused_in_production() -> None:
    limits = Limits(1024, 4096)
    with pytest.raises(ConfigError) as refused:
        run(limits, 20000, strict=True)
    message = str(refused.value)
    assert "RLIMIT_NOFILE" in message and "4096" in message and "20256" in message
    assert "ulimits" in message and "--ulimit" in message  # how to change it
    assert limits.soft == 4096  # raised as far as it goes all the same


def test_development_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(1024, 4096)
    with caplog.at_level(logging.WARNING, logger="service.core.fdlimit"):
        assert run(limits, 20000, strict=False) == 4096
    assert "RLIMIT_NOFILE" in caplog.text and "development mode carries on" in caplog.text


def test_a_limit_with_no_headroom_is_only_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(1024, 20000)  # this machine's: every socket, nothing besides
    with caplog.at_level(logging.WARNING, logger="service.core.fdlimit"):
        assert run(limits, 20000, strict=True) == 20000
    assert "20256" in caplog.text and "carrying on with fewer sockets" in caplog.text
