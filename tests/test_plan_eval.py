"""The planner's evaluation estimate: a batch of greedy prompts costs its longest expected answer (rows stop at
EOS or their stop strings), not ``max_new_tokens``; beam search and tasks without an answer length on record
cost ``max_new_tokens``; each cell says which basis each task used."""
from __future__ import annotations

import math

import pytest

from loralab.planning.architectures import ANSWER_TOKENS_PER_BATCH, ARCHITECTURES
from loralab.tables.grid import compose
from loralab.planning.plan import (DECODE_BANDWIDTH_EFFICIENCY, HBM_BANDWIDTH, calibrate, decode_steps_per_batch,
                                 estimate_cell)


def _step_s(model: str) -> float:
    return ARCHITECTURES[model].total_params() * 2 / (HBM_BANDWIDTH * DECODE_BANDWIDTH_EFFICIENCY)  # bf16


def test_greedy_tasks_cost_their_expected_answers() -> None:
    overrides = ["experiment=sds_table2", "model=llama3_8b", "method=lora", "dataset=metamathqa", "rank=32",
                 "eval.tasks.1.max_new_tokens=2048"]
    cfg = compose(overrides)
    gsm8k, math_task = cfg.eval.tasks
    assert decode_steps_per_batch(gsm8k) == (min(int(gsm8k.max_new_tokens), 320), "expected answer lengths")
    assert decode_steps_per_batch(math_task) == (800, "expected answer lengths")  # < 2048
    cell = estimate_cell(cfg, overrides, calibrate().throughput)
    by_hand = (math.ceil(1319 / int(gsm8k.batch_size)) * min(int(gsm8k.max_new_tokens), 320)
               + math.ceil(5000 / int(math_task.batch_size)) * 800) * _step_s("llama3_8b")
    assert cell.eval_hours == pytest.approx(by_hand / 3600.0, rel=1e-9)
    assert "evaluation decode steps per batch: expected answer lengths for gsm8k, math" in cell.notes
    # every greedy task the paper suites run has an answer length on record
    code = compose(["experiment=sds_table2", "model=llama3_8b", "method=lora", "dataset=code_feedback", "rank=32"])
    assert {t.name for t in code.eval.tasks} <= ANSWER_TOKENS_PER_BATCH.keys()


def test_beam_search_and_unknown_tasks_cost_max_new_tokens() -> None:
    cfg = compose(["experiment=sds_table1", "model=llama3_8b", "method=lora", "dataset=commonsense170k",
                   "rank=32"])
    task = cfg.eval.tasks[0]
    assert int(task.num_beams) == 4
    assert decode_steps_per_batch(task) == (int(task.max_new_tokens), "max_new_tokens (beam search)")
    cell = estimate_cell(cfg, [], calibrate().throughput)
    assert any(n.startswith("evaluation decode steps per batch: max_new_tokens (beam search) for boolq, piqa")
               for n in cell.notes)
    greedy = compose(["experiment=sds_table1", "model=llama3_8b", "method=lora", "dataset=commonsense170k",
                      "rank=32", "eval.num_beams=1"])
    assert decode_steps_per_batch(greedy.eval.tasks[0]) == (int(task.max_new_tokens),
                                                           "max_new_tokens (no answer length on record)")
