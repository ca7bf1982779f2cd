"""The open-file limit: a frontend raises its own soft limit to the hard one at start.

Each client socket is a file descriptor, and the usual default soft limit (1,024, which
containerd 2 also gives containers) would stop a frontend sized for 20,000 sockets at
about a thousand. A process may raise its soft limit up to its hard limit by itself; only
the hard limit needs the runtime's help (compose ``ulimits: nofile``, ``docker run
--ulimit``, systemd ``LimitNOFILE=``).
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable

from service.core.config import ConfigError

log = logging.getLogger(__name__)

#: What a soft limit is raised to when the hard limit is unlimited (Linux refuses an
#: unlimited RLIMIT_NOFILE; this is its usual fs.nr_open).
UNLIMITED_TARGET = 1 << 20


def raise_open_files(sockets: int, headroom: int, *, strict: bool, what: str,
                     getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
                     setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
                     ) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now.

    ``sockets`` (``what`` says whose) take a descriptor each, and ``headroom`` more are
    needed besides. Below ``sockets`` it raises ConfigError when ``strict`` (production),
    else it warns; below ``sockets + headroom`` it warns (the last sockets would find no
    descriptor left, a limit rather than a failure).
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s",
                        soft, target, exc)
        soft = getrlimit(resource.RLIMIT_NOFILE)[0]
    unlimited = soft == resource.RLIM_INFINITY
    shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    if not unlimited and soft < sockets + headroom:
        message = (f"the open-file limit (RLIMIT_NOFILE) is {soft} (hard limit {shown_hard}), "
                   f"below the {sockets + headroom} {what} needs ({sockets} sockets + "
                   f"{headroom}). Raise the hard limit where the process starts: compose "
                   "`ulimits: nofile: 65536`, `docker run --ulimit nofile=65536:65536`, "
                   "systemd `LimitNOFILE=65536`, or `ulimit -Hn 65536` as root; on "
                   "Kubernetes, the container runtime's LimitNOFILE")
        if soft < sockets and strict:
            raise ConfigError(message)
        log.warning("%s; %s", message, "carrying on with fewer sockets" if soft >= sockets
                    else "development mode carries on")
    else:
        log.info("open-file limit %s (hard %s): %d needed for %s", soft, shown_hard,
                 sockets + headroom, what)
    return soft
