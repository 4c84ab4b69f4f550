"""When the network's forward pass is compiled (``torch.compile``), and what happens when compiling fails.

``options.compile`` True compiles from the first step; "auto" (the default) times the first steps and compiles only
when the run has long enough left (``AUTO_COMPILE_*`` in :mod:`core.training.plan`), then keeps the compiled forward
only if its steps are faster. Compiling can fail in the forward (the first call) or in the backward (compiled at the
first ``backward()``): either way the run logs why and trains on eagerly; a failed backward's step is redone eagerly
from the same batch-norm statistics and random draws (``backward``), so the run ends as an eager run would.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from core.training.plan import AUTO_COMPILE_MIN_SECONDS, AUTO_COMPILE_PROBE_STEPS


@dataclass
class CompileTrial:
    """options.compile "auto" once it compiled: the eager steps' median time, and the compiled steps' times."""

    eager: float
    compiled: list[float] = field(default_factory=list)


class CompilePolicy:
    """The forward that full training batches go through, and the decisions about compiling it.

    ``option``: True, False or "auto" (False for ways of training whose step does not run the whole network).
    """

    def __init__(self, net: nn.Module, batch_size: int, option: bool | str, log: Callable[[str], None]) -> None:
        self.net, self.batch_size, self.log = net, batch_size, log
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None  # the compiled forward, once decided
        self.checked = False  # its first call succeeded (or it was given up)
        self.used_compiled = False  # the last step went through the compiled forward
        self.compiling_step = False  # the last step compiled it (its time is not a step time)
        self.trial: CompileTrial | None = None  # auto: the eager steps against the compiled ones
        self.pending = option == "auto"
        if option is True:
            self.start("options.compile")

    def start(self, why: str) -> None:
        """Route full training batches through ``torch.compile(net)`` (same parameters; compiled on first call)."""
        self.pending = False
        self.compiled = torch.compile(self.net)
        self.log(f"compiling the network's forward pass ({why}); the next step waits for it")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled forward for full batches once compiling was decided (a short last batch runs eagerly rather
        than compile a second graph); eager otherwise, and for good if compiling fails (no compiler here...)."""
        compiled = self.compiled
        self.used_compiled = compiled is not None and x.shape[0] == self.batch_size
        if compiled is None or not self.used_compiled:
            return self.net(x)
        if self.checked:
            return compiled(x)
        self.compiling_step = True
        try:
            out = compiled(x)
        except Exception as exc:  # noqa: BLE001 - inductor/dynamo failures come in many types; eager always works
            self.give_up(exc)
            out = self.net(x)
        self.checked = True
        return out

    def give_up(self, exc: BaseException) -> None:
        """Compiling failed (the forward's graph, or the backward's): log why and train eagerly from here on."""
        self.compiled, self.used_compiled = None, False
        self.log(f"compiling failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
                 "training goes on without it")

    def snapshot(self) -> dict[str, torch.Tensor] | None:
        """Before a step that may compile: the network's buffers (batch-norm statistics), to redo it eagerly if its
        backward fails; None for any other step."""
        if self.compiled is None or self.checked:
            return None
        return {k: b.clone() for k, b in self.net.named_buffers()}

    def backward(self, loss: torch.Tensor, snapshot: dict[str, torch.Tensor] | None, zero_grad: Callable[[], None],
                 redo: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``loss.backward()``; if it fails on the step that compiled (its backward compiles here), give up
        compiling, put the buffers back and ``redo()`` the step eagerly. Returns the loss that was back-propagated."""
        try:
            loss.backward()
        except Exception as exc:  # only on the step that compiled: its backward compiles here
            if not self.compiling_step or snapshot is None:
                raise
            self.give_up(exc)
            zero_grad()
            with torch.no_grad():
                for k, b in self.net.named_buffers():
                    b.copy_(snapshot[k])
            loss = redo()
            loss.backward()
        return loss

    def after_step(self, steps_left: int, step_times: list[float], seconds: float) -> bool:
        """After each step (``seconds``: its time): whether it was the step that compiled (then its time is not a step
        time). "auto" compiles once the probe steps say over AUTO_COMPILE_MIN_SECONDS are left, then times as many
        compiled steps and goes back to eager if they are not faster."""
        compiling, self.compiling_step = self.compiling_step, False
        if not compiling:  # a minute of compiling would distort images/s and the ETA for the next 20 steps
            step_times.append(seconds)
        if self.trial is not None:
            self._judge(None if compiling else seconds)
        elif self.pending and len(step_times) >= AUTO_COMPILE_PROBE_STEPS:
            self.pending = False
            probe = step_times[1:]  # the first step pays one-off costs
            left = steps_left * sum(probe) / len(probe)
            if left > AUTO_COMPILE_MIN_SECONDS:
                self.trial = CompileTrial(eager=statistics.median(probe))
                self.start(f"auto: about {left / 60:.0f} min of training left")
        return compiling

    def _judge(self, seconds: float | None) -> None:
        trial = self.trial
        if trial is None or self.compiled is None:  # compiling failed: nothing to judge
            self.trial = None
            return
        if not self.used_compiled or seconds is None:  # a short last batch ran eagerly, or the step compiled
            return
        trial.compiled.append(seconds)
        if len(trial.compiled) < AUTO_COMPILE_PROBE_STEPS:
            return
        self.trial = None
        eager, compiled = trial.eager, statistics.median(trial.compiled)
        if compiled < eager:
            self.log(f"compiled steps take {compiled:.3f} s against {eager:.3f} s eager ({eager / compiled:.2f}x): "
                     "kept")
        else:
            self.compiled = None
            self.log(f"compiled steps take {compiled:.3f} s against {eager:.3f} s eager: not faster here, "
                     "training goes on without compiling")
