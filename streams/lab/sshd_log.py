"""Turn a real sshd log (syslog lines, as in `/var/log/secure` or `auth.log`) into login events of
our wire format, so real attack traffic can be replayed through the detectors.

One event per authentication attempt: `user_id` is the account, `ip` the source, `reason`
`bad_password` (sshd knows the account) or `invalid_user` (it does not), and a success for
`Accepted ...`. A `message repeated N times: [ Failed ... ]` line is N attempts. Syslog has no
year, so the caller gives it; the k-th attempt within one second gets k ms, so ids and order are
stable. Lines that are not attempts (disconnects, reverse-mapping warnings, and pam lines of logs
that also have `Failed` lines) are skipped: they repeat what the `Failed`/`Accepted` line says.
Older logs that report failures only through `sshd(pam_unix)` are read from those lines.

Examples:
    >>> line = ("Jul 10 03:12:01 zeus sshd[4242]: Failed password for invalid user oracle"
    ...         " from 10.0.0.9 port 5 ssh2")
    >>> [(e["user_id"], e["reason"], e["ip"]) for e in events_from_sshd_log([line], year=2011)]
    [('oracle', 'invalid_user', '10.0.0.9')]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

_STAMP = re.compile(r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<time>\d\d:\d\d:\d\d) ")
_FAILED = re.compile(
    r"Failed (?P<method>\S+) for (?P<invalid>invalid user +)?(?P<user>\S*) "
    r"from (?P<ip>[0-9a-fA-F.:]+)"
)
_ACCEPTED = re.compile(r"Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<ip>[0-9a-fA-F.:]+)")
# Older sshd logs only through pam: "sshd(pam_unix)[N]: authentication failure; ... rhost=H
# user=U" (no user= when the account does not exist). The rhost may be a host name.
_PAM_FAILED = re.compile(
    r"sshd\(pam_unix\)\[\d+\]: authentication failure;.* "
    r"rhost=(?P<ip>\S+)(?:\s+user=(?P<user>\S+))?"
)
_REPEATED = re.compile(r"message repeated (?P<times>\d+) times: \[ ?(?P<inner>.*)\]")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}


def events_from_sshd_log(
    lines: Iterable[str], *, year: int, source: str = "sshd"
) -> Iterator[dict[str, Any]]:
    """Login events, in log order, from sshd syslog `lines` of the given `year`."""
    last_second = -1
    within_second = 0
    for number, line in enumerate(lines, 1):
        stamp = _STAMP.match(line)
        if not stamp or "sshd" not in line:
            continue
        body = line[stamp.end() :]
        times = 1
        repeated = _REPEATED.search(body)
        if repeated:
            times, body = int(repeated["times"]), repeated["inner"]
        attempt = _FAILED.search(body) or _ACCEPTED.search(body) or _PAM_FAILED.search(body)
        if not attempt:
            continue
        hh, mm, ss = (int(p) for p in stamp["time"].split(":"))
        second = int(
            datetime(
                year, _MONTHS[stamp["mon"]], int(stamp["day"]), hh, mm, ss, tzinfo=UTC
            ).timestamp()
        )
        if second != last_second:
            last_second, within_second = second, 0
        failed = attempt.re is not _ACCEPTED
        if attempt.re is _PAM_FAILED:
            unknown = attempt["user"] is None
        else:
            unknown = failed and bool(attempt["invalid"])
        for _ in range(times):
            event: dict[str, Any] = {
                "type": "login",
                "ts": second * 1000 + within_second,
                "event_id": f"{source}-{number}-{within_second}",
                "user_id": attempt["user"] or "-",  # "-": pam does not name an unknown account
                "outcome": "failure" if failed else "success",
                "ip": attempt["ip"],
            }
            if failed:
                event["reason"] = "invalid_user" if unknown else "bad_password"
            within_second += 1
            yield event
