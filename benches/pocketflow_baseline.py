#!/usr/bin/env python3
"""PocketFlow baseline for benches/flow.rs: the same 3-node flow of trivial nodes.

Prints one JSON object: nanoseconds per node transition (wall clock, `*_ns_per_transition`, and
thread CPU time, `*_cpu_ns_per_transition`) for PocketFlow's sync `Flow` and its `AsyncFlow`, both
measured two ways like the Rust bench ("run": the 3-node flow run from start to
end many times; "cycle": one run of a 3-node cycle a -> b -> c -> a ... for many transitions).

Usage: python benches/pocketflow_baseline.py [--transitions N]  (benches/flow.rs runs it in its venv)
Exit code 2 (with {"error": ...}) when pocketflow is not importable.
"""

import argparse
import asyncio
import json
import sys
import time
import warnings

try:
    import pocketflow
    from pocketflow import AsyncFlow, AsyncNode, Flow, Node
except ImportError as e:  # pragma: no cover - reported to the Rust bench
    print(json.dumps({"error": f"pocketflow is not importable: {e}"}))
    sys.exit(2)


class Step(Node):
    """prep/exec are trivial; post counts the transition (like the Rust bench's node)."""

    def prep(self, shared):
        return None

    def exec(self, prep_res):
        return None

    def post(self, shared, prep_res, exec_res):
        shared["n"] += 1
        return None


class AsyncStep(AsyncNode):
    async def prep_async(self, shared):
        return None

    async def exec_async(self, prep_res):
        return None

    async def post_async(self, shared, prep_res, exec_res):
        shared["n"] += 1
        return None


class Looping(Node):
    """Posts "next" until the budget is spent, then ends the flow."""

    def post(self, shared, prep_res, exec_res):
        shared["n"] += 1
        return "next" if shared["n"] < shared["limit"] else "stop"


class AsyncLooping(AsyncNode):
    async def post_async(self, shared, prep_res, exec_res):
        shared["n"] += 1
        return "next" if shared["n"] < shared["limit"] else "stop"


def three(cls):
    a, b, c = cls(), cls(), cls()
    a >> b >> c
    return a


def cycle(cls):
    a, b, c = cls(), cls(), cls()
    a - "next" >> b
    b - "next" >> c
    c - "next" >> a
    return a


def best_of(repeats, fn):
    """The best (wall, cpu) ns/transition of `repeats` runs of fn, each returning a pair."""
    runs = [fn() for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


class Stopwatch:
    """Wall clock and this thread's CPU time (which leaves out waiting for a core)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter_ns(), time.thread_time_ns()

    def per(self, n):
        return (time.perf_counter_ns() - self.wall) / n, (time.thread_time_ns() - self.cpu) / n


def sync_run(transitions):
    flow = Flow(start=three(Step))
    runs = transitions // 3

    def once():
        shared = {"n": 0}
        watch = Stopwatch()
        for _ in range(runs):
            flow.run(shared)
        per = watch.per(runs * 3)
        assert shared["n"] == runs * 3
        return per

    return best_of(3, once)


def sync_cycle(transitions):
    flow = Flow(start=cycle(Looping))

    def once():
        shared = {"n": 0, "limit": transitions}
        watch = Stopwatch()
        flow.run(shared)
        per = watch.per(transitions)
        assert shared["n"] == transitions
        return per

    return best_of(3, once)


def async_run(transitions):
    flow = AsyncFlow(start=three(AsyncStep))
    runs = transitions // 3

    async def once():
        shared = {"n": 0}
        watch = Stopwatch()
        for _ in range(runs):
            await flow.run_async(shared)
        per = watch.per(runs * 3)
        assert shared["n"] == runs * 3
        return per

    return best_of(3, lambda: asyncio.run(once()))


def async_cycle(transitions):
    flow = AsyncFlow(start=cycle(AsyncLooping))

    async def once():
        shared = {"n": 0, "limit": transitions}
        watch = Stopwatch()
        await flow.run_async(shared)
        per = watch.per(transitions)
        assert shared["n"] == transitions
        return per

    return best_of(3, lambda: asyncio.run(once()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--transitions", type=int, default=150_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # "Flow ends: 'stop' not found" at the end of each cycle run
    try:
        import importlib.metadata as md

        version = md.version("pocketflow")
    except Exception:  # pragma: no cover
        version = getattr(pocketflow, "__version__", "unknown")
    result = {
        "pocketflow_version": version,
        "python": sys.version.split()[0],
        "transitions": args.transitions,
    }
    for name, fn in [
        ("sync_run", sync_run),
        ("sync_cycle", sync_cycle),
        ("async_run", async_run),
        ("async_cycle", async_cycle),
    ]:
        wall, cpu = fn(args.transitions)
        result[f"{name}_ns_per_transition"] = wall
        result[f"{name}_cpu_ns_per_transition"] = cpu
    print(json.dumps(result))


if __name__ == "__main__":
    main()
