"""Scenario ``events``: what Celery task events cost aidist's packed and single-message throughput.

aidist workers send task events by default (``AIDIST_TASK_EVENTS``, so Flower sees their tasks):
three small messages per job message, received, started and succeeded, which for single-message
jobs is three per job. This scenario measures ``packed`` and ``single`` with the workers of
``bench.scenarios.aidist_paths`` started with events on and with events off, same commands
otherwise, and the issue's target is on / off >= 0.95 (events cost at most 5 %).

Each measurement runs in a phase of its own, fresh workers started (and warmed) for it and
stopped after it, so on and off differ in the flag and nothing else: not in how long the workers
have run, nor in what the main aidist phase left behind. The phases alternate, on and off in
every round with the order flipped each round (on off | off on | on off ...): a drift of the
shared 2-core machine over the scenario (other work starting, a warming CPU) then falls on both
sides alike instead of on whichever ran second. Each side keeps its fastest round, as every other
throughput number of the bench does (outside load only ever slows a run down).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aidist.config import Settings
from aidist.demo import make_corpus
from bench.config import Options, best_run
from bench.env import phase
from bench.scenarios.aidist_paths import packed_once, single_once, start_workers
from producers import Client

APIS = ("packed", "single")


def order(rounds: int) -> list[bool]:
    """The task-events setting of each phase: on off | off on | on off ... (``rounds`` pairs)."""
    return [flag for index in range(rounds)
            for flag in ((True, False) if index % 2 == 0 else (False, True))]


def run(settings: Settings, options: Options, log_dir: Path) -> dict[str, Any]:
    """``options.repeats`` rounds, each a phase with events on and one with events off."""
    halves: list[dict[str, Any]] = []
    with Client(settings) as client:
        for index, task_events in enumerate(order(options.repeats)):
            halves.append(_half(settings, client, options, log_dir, index=index,
                                task_events=task_events))
    sides = {}
    for side, task_events in (("on", True), ("off", False)):
        mine = [half for half in halves if half["task_events"] is task_events]
        sides[side] = {api: best_run([half[api] for half in mine]) for api in APIS}
    return {
        "items": options.sizes.events,
        "rounds": options.repeats,
        "order": ["on" if half["task_events"] else "off" for half in halves],
        "on": sides["on"],
        "off": sides["off"],
        "phases": halves,
        "producers": options.producers,
        "pack_size": settings.pack_size,
    }


def _half(settings: Settings, client: Client, options: Options, log_dir: Path, *, index: int,
          task_events: bool) -> dict[str, Any]:
    """One phase: start the workers with events on or off, measure packed, then single."""
    side = "on" if task_events else "off"
    count = options.sizes.events
    with phase(log_dir) as workers:
        started = start_workers(settings, workers, client, task_events=task_events,
                                tag=f"-events-{index}-{side}")
        packed = packed_once(client, make_corpus(count, options.seed_of("events_packed", index)))
        single = single_once(client, make_corpus(count, options.seed_of("events_single", index)),
                             options.producers)
    print(f"[events] phase {index + 1}, task events {side}: packed {packed['per_s']:,.1f}/s, "
          f"single {single['per_s']:,.1f}/s", flush=True)
    return {"task_events": task_events, "task_events_seen": started["task_events_seen"],
            "commands": started["commands"], "packed": packed, "single": single}
