"""``manage.py pgbinding status``: listeners, lag, the change log, triggers, the channel layer.

Exit status: 0 when nothing is wrong, 1 when something is (each problem is printed in words,
with what to do): the configured listener is not active, a listener is stale or more than
``--max-lag`` seconds behind, a bound model's trigger is missing or outdated, or the channel
layer does not answer. Health checks can run it as it is; ``--json`` is for machines.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pgbinding import status


class Command(BaseCommand):
    help = "Show pgbinding's state: listeners and their lag, the log, triggers, channel layer."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="what", required=True)
        show = sub.add_parser("status", help="listeners, lag, log, triggers, channel layer")
        show.add_argument("--json", action="store_true", help="print one JSON object")
        show.add_argument(
            "--max-lag",
            type=float,
            default=60.0,
            help="seconds of lag over which a listener counts as a problem (default 60)",
        )
        show.add_argument("--no-layer", action="store_true", help="do not check the channel layer")
        sub.add_parser("create-slot", help="create the logical capture's replication slot")
        drop = sub.add_parser("drop-slot", help="drop the logical capture's replication slot")
        drop.add_argument("--force", action="store_true", help="even while tables use it")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["what"] in ("create-slot", "drop-slot"):
            from pgbinding.capture import slots

            self.stdout.write(slots.command(options["what"], force=options.get("force", False)))
            return
        if options["what"] != "status":
            raise CommandError(f"Unknown subcommand {options['what']!r}; try 'status'.")
        found = status.report(options["max_lag"], check_layer=not options["no_layer"])
        if options["json"]:
            self.stdout.write(json.dumps(found.as_dict(), indent=2))
        else:
            self.stdout.write(render(found))
        if found.problems:
            sys.exit(1)


def render(found: status.Report) -> str:
    lines = ["Listeners:"]
    if not found.listeners:
        lines.append("  none has run yet")
    for entry in found.listeners:
        lead = (
            f", leader {entry.leader} (backend pid {entry.leader_pid}, lease "
            f"{entry.lease_left:.1f} s left)"
            if entry.state == "active"
            else f", last seen {entry.last_seen_seconds:.0f} s ago"
        )
        lines.append(
            f"  {entry.name}: {entry.state} at position {entry.position}; {entry.behind} "
            f"behind, oldest undelivered {entry.lag_seconds:.1f} s old{lead}"
        )
    oldest = f"{found.log_oldest_seconds:.0f} s" if found.log_oldest_seconds is not None else "-"
    lines.append(
        f"Change log: {found.log_rows} row(s), the oldest {oldest} old; retention "
        f"{found.retention:.0f} s; pruned through id {found.pruned_through}"
    )
    lines.append("Capture triggers:")
    if not found.triggers:
        lines.append("  no bound models")
    for trigger in found.triggers:
        version = f" {trigger.version}" if trigger.version else ""
        lines.append(f"  {trigger.model} ({trigger.table}): {trigger.state}{version}")
    if found.slot is not None or found.capture == "logical":
        from pgbinding.capture import slots

        lines.append(slots.describe(found.capture, found.slot))
    if found.channel_layer:
        lines.append(f"Channel layer: {found.channel_layer}")
    if found.problems:
        lines.append("Problems:")
        lines += [f"  - {problem}" for problem in found.problems]
    else:
        lines.append("No problems.")
    return "\n".join(lines)
