"""NonFiniteGuard without host syncs on the hot path: steps between the Trainer's own sync points only update a
device-side record; the record is read where the Trainer logs, evaluates, saves or stops, naming the first bad
step, so nothing is saved after it. (The full run, Trainer and runner included: test_reliability_failures.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerControl, TrainerState, TrainingArguments

from loralab.errors import NonFiniteLossError
from loralab.training.callbacks import NonFiniteGuard

HOST_READS = {"_local_scalar_dense", "item", "is_nonzero"}


class HostReads(TorchDispatchMode):
    """Counts the ops that copy a tensor value to the host (``.item()``, ``bool(t)``, ``int(t)``): device syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.overloadpacket.__name__ in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _setup(tmp_path: Path) -> tuple[TrainingArguments, TrainerState, torch.nn.Module]:
    args = TrainingArguments(output_dir=str(tmp_path), logging_steps=10, save_steps=100, max_steps=50,
                             report_to=[], use_cpu=True)
    state = TrainerState(max_steps=50, logging_steps=10, save_steps=100, eval_steps=10)
    model = torch.nn.Linear(3, 2)
    return args, state, model


def _grads(model: torch.nn.Module, bad: bool) -> None:
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan") if bad else 0.5)


def _pre_step(guard: NonFiniteGuard, args, state, model, bad: bool) -> None:  # noqa: ANN001
    _grads(model, bad)
    guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model)


def test_steps_between_sync_points_read_nothing_on_the_host(tmp_path: Path) -> None:
    args, state, model = _setup(tmp_path)
    guard = NonFiniteGuard()
    state.global_step = 2  # step 3: not logged, evaluated, saved, first or last
    _grads(model, bad=True)
    with HostReads() as reads:
        guard.on_pre_optimizer_step(args, state, TrainerControl(), model=model)
    assert reads.count == 0


def test_first_bad_step_is_named_at_the_next_sync_point(tmp_path: Path) -> None:
    args, state, model = _setup(tmp_path)
    guard = NonFiniteGuard()
    for step in range(1, 10):  # steps 1..9; 3 and 5 are bad; 1 is a sync point (first step) and finite
        state.global_step = step - 1
        _pre_step(guard, args, state, model, bad=step in (3, 5))
        state.global_step = step
        guard.on_step_end(args, state, TrainerControl())  # no flags set: no check
    state.global_step = 9
    with pytest.raises(NonFiniteLossError, match=r"at step 3 \(gradient norm nan\); training stopped after it, "
                                                 r"without saving anything, and no checkpoint had been saved yet"):
        _pre_step(guard, args, state, model, bad=False)  # step 10 is logged: checked before it is applied


def test_a_bad_step_at_a_sync_point_is_never_applied(tmp_path: Path) -> None:
    args, state, model = _setup(tmp_path)
    (tmp_path / "checkpoint-7").mkdir()
    guard = NonFiniteGuard()
    state.global_step = 9
    with pytest.raises(NonFiniteLossError, match=r"at step 10\b.*before applying it.*checkpoint-7"):
        _pre_step(guard, args, state, model, bad=True)


@pytest.mark.parametrize("flag", ["should_save", "should_log", "should_evaluate", "should_training_stop"])
def test_step_end_checks_before_the_trainer_logs_or_saves(tmp_path: Path, flag: str) -> None:
    """Safety net for sync points the pre-step rule does not foresee (another callback asking for a save)."""
    args, state, model = _setup(tmp_path)
    guard = NonFiniteGuard()
    state.global_step = 3
    _pre_step(guard, args, state, model, bad=True)  # step 4: no sync point
    state.global_step = 4
    guard.on_step_end(args, state, TrainerControl())
    control = TrainerControl()
    setattr(control, flag, True)
    with pytest.raises(NonFiniteLossError, match=r"at step 4\b"):
        guard.on_step_end(args, state, control)


def test_finite_training_never_raises_and_end_of_training_checks(tmp_path: Path) -> None:
    args, state, model = _setup(tmp_path)
    guard = NonFiniteGuard()
    for step in range(1, 51):
        state.global_step = step - 1
        _pre_step(guard, args, state, model, bad=False)
        state.global_step = step
        guard.on_step_end(args, state, TrainerControl(should_log=step % 10 == 0))
    guard.on_train_end(args, state, TrainerControl())
    bad = NonFiniteGuard()
    state.global_step = 20
    _pre_step(bad, args, state, model, bad=True)  # step 21, applied
    with pytest.raises(NonFiniteLossError, match=r"at step 21\b"):
        bad.on_epoch_end(args, state, TrainerControl())


def test_a_sigterm_save_request_is_seen_by_the_guard(tmp_path: Path) -> None:
    """SIGTERM asks for a checkpoint at step end; the guard must run after that request, so a bad step between
    two sync points is never checkpointed (the Trainer's callbacks run in list order)."""
    from transformers import Trainer

    from loralab.training.termination import TerminationFlag
    from loralab.training.trainer import build_trainer

    class NoMethod:  # the Method hooks build_trainer uses
        def build_optimizer(self, model, lr, weight_decay):  # noqa: ANN001, ANN201
            return torch.optim.SGD(model.parameters(), lr=lr)

        def callbacks(self) -> list:
            return []

    args, state, model = _setup(tmp_path)
    flag = TerminationFlag()
    trainer: Trainer = build_trainer(model, NoMethod(), args, [], lambda rows: {}, tmp_path / "steps.jsonl",
                                     termination=flag)
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index("StopOnTermination") < names.index("NonFiniteGuard")
    guard = next(c for c in trainer.callback_handler.callbacks if isinstance(c, NonFiniteGuard))
    state.global_step = 3
    _pre_step(guard, args, state, model, bad=True)  # step 4: no sync point, nothing read yet
    state.global_step = 4
    flag.requested = True
    trainer.state = state
    with pytest.raises(NonFiniteLossError, match=r"at step 4\b"):
        trainer.callback_handler.on_step_end(args, state, TrainerControl())
