"""Curricula of the longctx training: which sequence length (and how many facts per document) each
step trains on. Pure Python (no torch), so tests run it anywhere.

fixed (runs 1-4): phases start at fixed shares of the steps (PHASES); the length grows 256 ->
  16384 and documents hold as many facts as fit.
gated (after run 3, see train/README.md): stages of (length, fact cap); the next stage starts only
  when the answer-token accuracy of the current one, averaged over its last `window` steps,
  reaches `gate`. Run 3 learnt retrieval at 512 tokens (0.91 answer-token accuracy) and lost it
  when the curriculum moved on to documents of 100+ facts that it could not yet answer; here the
  length grows first with few facts (long-range retrieval without many near-miss distractors),
  then the number of facts grows.
Both revisit an earlier phase or stage on 30% of the steps (drawn from the step's own seed), so
short contexts are not forgotten. Decisions depend only on the step number and, for gated, on
the accuracies observed, so a strictly deterministic run repeats them.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Dict, List, Optional, Tuple

# (share of the steps at which a phase starts, its longest length).
PHASES = [(0.00, 256), (0.12, 512), (0.22, 1024), (0.32, 2048), (0.42, 4096), (0.54, 8192),
          (0.68, 16384)]

# (length, fact cap or None for as many as fit).
GATED_STAGES: List[Tuple[int, Optional[int]]] = [
    (256, None), (512, None), (1024, 8), (2048, 8), (4096, 8), (8192, 8), (16384, 8),
    (1024, None), (4096, 32), (16384, 32), (4096, None), (16384, 64), (16384, None)]

REVISIT = 0.3


def phases_for(max_len: int):
    return [(f, L) for f, L in PHASES if L <= max_len]


def length_at(step: int, total: int, seed: int, max_len: int, start: float = 0.0,
              ramp: float = 0.0) -> int:
    """The fixed curriculum's length of `step` of `total`. `start` (in [0, 1]) begins the
    schedule part way: the steps then span shares start..1 of it, so a run that continues a
    trained model (train.py --init-from) can train on the last phase's mix alone (start 1.0:
    the longest length, with the usual revisits of the earlier ones). `ramp` (a share of the
    steps, >= 0) mixes each new phase's length in gradually: over the first `ramp` of a phase
    the chance of its length rises linearly from 0 to 1 - REVISIT, the rest of the steps
    revisiting earlier phases (every run that learnt retrieval at 256-512 tokens lost it when
    the 1K phase started outright; train/README.md). ramp 0 is the schedule of runs 1-17."""
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"curriculum start must be in [0, 1], got {start}")
    if not ramp >= 0.0:
        raise ValueError(f"length ramp must be >= 0, got {ramp}")
    ph = phases_for(max_len)
    frac = start + (1.0 - start) * step / max(1, total)
    k = max(i for i, (f, _) in enumerate(ph) if frac >= f)
    revisit = REVISIT
    if ramp > 0.0 and frac - ph[k][0] < ramp:
        revisit = 1.0 - (1.0 - REVISIT) * (frac - ph[k][0]) / ramp
    r = random.Random(seed * 7919 + step)
    if k > 0 and r.random() < revisit:
        return ph[r.randrange(k)][1]
    return ph[k][1]


def parse_fact_schedule(text: str) -> List[Tuple[float, Optional[int]]]:
    """A cap on the facts per document by share of the steps (fixed curriculum, --fact-schedule):
    "2@0,4@0.03,8@0.06,all@0.1" -> [(0.0, 2), (0.03, 4), (0.06, 8), (0.1, None)]: from each share
    on, documents hold at most that many facts ("all": no cap); "" -> [] (never capped). Starting
    with few facts per document gives a model few candidates to pick the asked one from while it
    has not yet learnt to (runs 7-9 in train/README.md)."""
    if not text.strip():
        return []
    out: List[Tuple[float, Optional[int]]] = []
    for part in text.split(","):
        facts, sep, share = part.strip().partition("@")
        try:
            if not sep:
                raise ValueError
            f = None if facts == "all" else int(facts)
            x = float(share)
        except ValueError:
            raise ValueError(f"fact schedule entry {part!r}: want FACTS@SHARE (FACTS a count or "
                             f"'all', SHARE of the steps in [0, 1)), e.g. 2@0,8@0.05,all@0.1")
        if f is not None and f < 1:
            raise ValueError(f"fact schedule entry {part!r}: the count must be >= 1")
        if not 0.0 <= x < 1.0 or (out and x <= out[-1][0]):
            raise ValueError(f"fact schedule entry {part!r}: shares must rise from 0 and stay "
                             f"below 1")
        out.append((x, f))
    if out[0][0] != 0.0:
        raise ValueError(f"fact schedule {text!r}: the first entry must start at share 0")
    return out


def facts_at(step: int, total: int, schedule: List[Tuple[float, Optional[int]]]
             ) -> Optional[int]:
    """The fact cap of `step` of `total` under a parse_fact_schedule schedule (None: no cap)."""
    frac = step / max(1, total)
    cap = None
    for share, facts in schedule:
        if frac >= share:
            cap = facts
    return cap


class GatedCurriculum:
    """Stages advanced by accuracy. spec(step) is asked when a step's batch is submitted, at most
    `lag` steps ahead of training; observe(step, acc) after each step has trained, in order. A
    stage passed at step t applies to the batches of steps t + lag on, whenever they are
    submitted, so the schedule does not depend on how far ahead batches are made, and a paused and
    resumed run (state / load_state) repeats it. Only steps drawn from the newest stage count
    towards its gate."""

    def __init__(self, seed: int, max_len: int, gate: float = 0.9, window: int = 50,
                 min_steps: int = 100, lag: int = 16):
        if not 0.0 < gate <= 1.0:
            raise ValueError(f"gate must be in (0, 1], got {gate}")
        if window < 1 or min_steps < 1 or lag < 1:
            raise ValueError("window, min_steps and lag must be >= 1")
        self.stages = [(L, f) for L, f in GATED_STAGES if L <= max_len]
        self.seed, self.gate, self.window, self.min_steps, self.lag = (seed, gate, window,
                                                                       min_steps, lag)
        self.passed: List[int] = []  # the step at which each stage so far was passed
        self.steps_in_stage = 0
        self.recent: deque = deque(maxlen=window)
        self.observed = 0  # steps observed so far (steps 0 .. observed - 1)

    @property
    def stage(self) -> int:
        return len(self.passed)

    def stage_for(self, step: int) -> int:
        """The newest stage the batch of `step` may draw from."""
        if step - self.lag >= self.observed:
            raise RuntimeError(f"batch of step {step} asked for before step {step - self.lag} "
                               f"was observed ({self.observed} so far): lag too small")
        return sum(1 for t in self.passed if t + self.lag <= step)

    def draw(self, step: int) -> int:
        """The stage of `step`'s batch: its newest stage, or 30% of the time an earlier one."""
        k = self.stage_for(step)
        r = random.Random(self.seed * 7919 + step)
        if k > 0 and r.random() < REVISIT:
            k = r.randrange(k)
        return k

    def spec(self, step: int, tokens_per_step: int) -> tuple:
        """(seed, step, length, batch, max_facts) for data.make_batch."""
        length, facts = self.stages[self.draw(step)]
        return (self.seed, step, length, max(1, tokens_per_step // length), facts)

    def observe(self, step: int, acc: float) -> Optional[str]:
        """Records the trained step `step` (steps come in order); returns a log line when the
        next stage starts."""
        if step != self.observed:
            raise RuntimeError(f"observed step {step}, expected {self.observed}")
        self.observed += 1
        if self.draw(step) != self.stage:
            return None
        self.recent.append(acc)
        self.steps_in_stage += 1
        if (self.stage + 1 < len(self.stages) and self.steps_in_stage >= self.min_steps and
                len(self.recent) == self.window and
                sum(self.recent) / self.window >= self.gate):
            done = self.stage
            self.passed.append(step)
            self.steps_in_stage = 0
            self.recent.clear()
            L, f = self.stages[self.stage]
            return (f"curriculum: stage {done} {self.stages[done]} passed at step {step + 1} "
                    f"(answer-token accuracy >= {self.gate} over {self.window} steps); stage "
                    f"{self.stage} (length {L}, {'all' if f is None else f'<= {f}'} facts) from "
                    f"step {step + 1 + self.lag}")
        return None

    def state(self) -> dict:
        return {"passed": list(self.passed), "steps_in_stage": self.steps_in_stage,
                "recent": list(self.recent), "observed": self.observed}

    def load_state(self, state: dict) -> None:
        self.passed = [int(t) for t in state["passed"]]
        self.steps_in_stage = int(state["steps_in_stage"])
        self.recent = deque(state["recent"], maxlen=self.window)
        self.observed = int(state["observed"])
