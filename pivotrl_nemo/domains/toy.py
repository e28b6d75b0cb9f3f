"""The ``toy`` domain: templated, synthetic tool-use trajectories for checking an installation.

``experiment=smoke`` runs every stage on it in about a minute. A BFCL pi_0 small enough to train
from scratch that fast solves almost no turn (every candidate all-fail, no pivots), so the smoke
check could not reach ``train``; here a seconds-old pi_0 copies a city or an amount from the
user's request often enough, but not always, for the filter to find pivots. The data is made
up: it checks that the stages run, it measures nothing (``make demo`` is the real-data run).

Lifecycle (``domains.base``): ``build`` constructs ``ToyDomain(cfg.data)`` and calls
``trajectories()`` once: ``TOY_TRAJECTORIES`` trajectories (or ``data.max_trajectories``), each
two user requests answered by one tool call, its output and a short reply; generated from a
fixed seed, so every machine builds the same data. Judged by argument comparison
(``tool_call_args``); no environment (the tools' outputs are canned).
"""

from __future__ import annotations

import json
import random
from typing import Any

from pivotrl_nemo.config.schema import DataConfig
from pivotrl_nemo.domains.base import Environment

TOY_TRAJECTORIES = 120
"""Trajectories built when ``data.max_trajectories`` is 0."""

_CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Quito", "Seoul", "Dakar"]
_CURRENCIES = ["USD", "EUR", "JPY", "GBP", "INR", "BRL"]
_PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
_SUBJECTS = ["lunch", "budget", "report", "travel", "meeting"]


def _tool(name: str, description: str, props: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": props, "required": list(props)}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


TOOLS = [
    _tool(
        "get_weather",
        "Current weather in a city.",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    ),
    _tool(
        "convert_currency",
        "Convert an amount between currencies.",
        {"amount": {"type": "integer"}, "source": {"type": "string"}, "target": {"type": "string"}},
    ),
    _tool("send_email", "Send a short email.", {"to": {"type": "string"}, "subject": {"type": "string"}}),
]


def _weather(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    city, unit = rng.choice(_CITIES), rng.choice(["celsius", "fahrenheit"])
    ask = rng.choice(
        ["What is the weather in {c} in {u}?", "Weather for {c} please, in {u}.", "How warm is {c}? Use {u}."]
    )
    temp = rng.randint(-5, 35)
    return (
        ask.format(c=city, u=unit),
        "get_weather",
        {"city": city, "unit": unit},
        json.dumps({"temp": temp}),
        f"It is {temp} degrees in {city}.",
    )


def _convert(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    src, dst = rng.sample(_CURRENCIES, 2)
    amount = rng.randint(1, 500)
    ask = rng.choice(["Convert {a} {s} to {t}.", "How much is {a} {s} in {t}?"])
    out = round(amount * rng.uniform(0.5, 2.0), 2)
    return (
        ask.format(a=amount, s=src, t=dst),
        "convert_currency",
        {"amount": amount, "source": src, "target": dst},
        json.dumps({"result": out}),
        f"{amount} {src} is {out} {dst}.",
    )


def _email(rng: random.Random) -> tuple[str, str, dict[str, Any], str, str]:
    to, subject = rng.choice(_PEOPLE), rng.choice(_SUBJECTS)
    ask = rng.choice(["Email {p} about the {s}.", "Send {p} a note with subject {s}."])
    return (
        ask.format(p=to, s=subject),
        "send_email",
        {"to": to, "subject": subject},
        json.dumps({"sent": True}),
        f"Sent to {to}.",
    )


_REQUESTS = (_weather, _convert, _email)


def toy_trajectory(index: int, rng: random.Random) -> dict[str, Any]:
    """One trajectory: two requests, each a call, its output and a reply."""
    msgs: list[dict[str, Any]] = []
    for turn in range(2):
        ask, name, args, output, reply = rng.choice(_REQUESTS)(rng)
        call_id = f"call_{index}_{turn}"
        msgs.append({"role": "user", "content": ask})
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        msgs.append({"role": "tool", "tool_call_id": call_id, "content": output})
        msgs.append({"role": "assistant", "content": reply})
    return {"id": f"toy/{index}", "tools": TOOLS, "messages": msgs}


class ToyDomain:
    """Synthetic templated trajectories (``data.source='toy'``)."""

    default_verifier = "tool_call_args"

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    @staticmethod
    def config_problems(cfg: DataConfig) -> list[tuple[str, str]]:
        """Nothing to check: the data is generated."""
        return []

    def trajectories(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The same trajectories on every machine (seed 0); ``data.split_seed`` still picks the split."""
        rng = random.Random(0)
        n = self.cfg.max_trajectories or TOY_TRAJECTORIES
        return [toy_trajectory(i, rng) for i in range(n)], {"skipped_invalid": 0}

    def environment(self) -> Environment | None:
        """None: the tools' outputs are canned, nothing executes."""
        return None
