"""The paper protocols against their reference implementations' own formats and rules.

Rows and prompts below are typed from the references: LLM-Adapters' ``dataset/<task>/test.json`` rows and its
``commonsense_evaluate.py`` / ``finetune.py`` prompts, MetaMath's ``eval_gsm8k.py`` / ``eval_math.py`` prompt,
stop list, token budgets and answer reading, and its ``util.is_equiv``. Each test fails if loralab drifts from
the reference's format, even where the drift would look harmless.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose
from loralab.data.commonsense import commonsense_records
from loralab.data.text import render, render_prompt
from loralab.evaluation.checks import check_suite
from loralab.evaluation.tasks.generative import build_prompt
from loralab.evaluation.math_equiv import is_equiv, math_equal

# ------------------------------------------------------------------------------------------ commonsense
# task → (row in the hub schema loralab reads, LLM-Adapters' test.json instruction for it, answer keyword)
LLM_ADAPTERS_ROWS = {
    "boolq": (
        {"question": "does ethanol take more energy make that produces", "answer": False, "passage": "..."},
        "Please answer the following question with true or false, question: does ethanol take more energy make "
        "that produces?\n\nAnswer format: true/false",
        "false"),
    "piqa": (
        {"goal": "dresser", "sol1": "replace drawer with bobby pin ", "sol2": "finish, woodgrain with  bobby pin ",
         "label": 1},
        "Please choose the correct solution to the question: dresser\n\nSolution1: replace drawer with bobby pin "
        "\n\nSolution2: finish, woodgrain with  bobby pin \n\nAnswer format: solution1/solution2",
        "solution2"),
    "siqa": (
        {"context": "Tracy didn't go home that evening and resisted Riley's attacks.",
         "question": "What does Tracy need to do before this?", "answerA": "make a new plan",
         "answerB": "Go home and see Riley", "answerC": "Find somewhere to go", "label": "3"},
        "Please choose the correct answer to the question: Tracy didn't go home that evening and resisted Riley's "
        "attacks. What does Tracy need to do before this?\n\nAnswer1: make a new plan Answer2: Go home and see "
        "Riley Answer3: Find somewhere to go\n\nAnswer format: answer1/answer2/answer3",
        "answer3"),
    "hellaswag": (  # the instruction as LLM-Adapters' evaluation script prints it for this row
        {"activity_label": "Travel",
         "ctx_a": "[header] How to become an au pair in spain [title] Consult online databases that list "
                  "opportunities for working as an au pair in spain. [step] Alternatively, contract the services "
                  "of a firm which will charge a fee in return for finding a position and providing logistical "
                  "support throughout your stay.",
         "ctx_b": "[title] Ensure that your language skills are adequate for your potential employers' needs.",
         "ctx": "[header] How to become an au pair in spain [title] Consult online databases that list "
                "opportunities for working as an au pair in spain. [step] Alternatively, contract the services of "
                "a firm which will charge a fee in return for finding a position and providing logistical support "
                "throughout your stay. [title] Ensure that your language skills are adequate for your potential "
                "employers' needs.",
         "endings": ["[step] Not ensuring fluent skills can be difficult, and employers may see you as weak in "
                     "language such as spanish or french as a vulnerable you. A respectful, educated, articulate "
                     "language can also be valuable.",
                     "[step] Correspond with all potential employers before leaving for spain. [title] Agree to "
                     "terms with your employer before accepting a position.",
                     "[step] Speak english, french and spanish as many times as you can. A few words may not be "
                     "enough if you are already an au pair but your english skills are desirable.",
                     "[step] You can find a formal language program in madrid or milan in the region to apply for "
                     "a job in this area. Also check to ensure that you both can speak english and french."],
         "label": "1"},
        "Please choose the correct ending to complete the given sentence: Travel: [header] How to become an au "
        "pair in spain [title] Consult online databases that list opportunities for working as an au pair in "
        "spain. [step] Alternatively, contract the services of a firm which will charge a fee in return for "
        "finding a position and providing logistical support throughout your stay. [title] Ensure that your "
        "language skills are adequate for your potential employers' needs.\n\nEnding1: [step] Not ensuring fluent "
        "skills can be difficult, and employers may see you as weak in language such as spanish or french as a "
        "vulnerable you. A respectful, educated, articulate language can also be valuable. Ending2: [step] "
        "Correspond with all potential employers before leaving for spain. [title] Agree to terms with your "
        "employer before accepting a position. Ending3: [step] Speak english, french and spanish as many times as "
        "you can. A few words may not be enough if you are already an au pair but your english skills are "
        "desirable. Ending4: [step] You can find a formal language program in madrid or milan in the region to "
        "apply for a job in this area. Also check to ensure that you both can speak english and french.\n\n"
        "Answer format: ending1/ending2/ending3/ending4",
        "ending2"),
    "winogrande": (
        {"sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
         "option1": "Sarah", "option2": "Maria", "answer": "2"},
        "Please choose the correct answer to fill in the blank to complete the given sentence: Sarah was a much "
        "better surgeon than Maria so _ always got the easier cases.\n\nOption1: Sarah Option2: Maria Answer "
        "format: option1/option2",
        "option2"),
    "arc_e": (
        {"question": "Which statement best explains why photosynthesis is the foundation of most food webs?",
         "choices": {"text": ["Sunlight is the source of energy for nearly all ecosystems.",
                              "Most ecosystems are found on land instead of in water.",
                              "Carbon dioxide is more available than other gases.",
                              "The producers in all ecosystems are plants."], "label": ["A", "B", "C", "D"]},
         "answerKey": "A"},
        "Please choose the correct answer to the question: Which statement best explains why photosynthesis is the "
        "foundation of most food webs?\n\nAnswer1: Sunlight is the source of energy for nearly all ecosystems. "
        "Answer2: Most ecosystems are found on land instead of in water. Answer3: Carbon dioxide is more available "
        "than other gases. Answer4: The producers in all ecosystems are plants.\n\nAnswer format: "
        "answer1/answer2/answer3/answer4",
        "answer1"),
    "arc_c": (
        {"question": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the "
                     "most likely effect of this increase in rotation?",
         "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                              "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                     "label": ["A", "B", "C", "D"]},
         "answerKey": "C"},
        "Please choose the correct answer to the question: An astronomer observes that a planet rotates faster "
        "after a meteorite impact. Which is the most likely effect of this increase in rotation?\n\nAnswer1: "
        "Planetary density will decrease. Answer2: Planetary years will become longer. Answer3: Planetary days will "
        "become shorter. Answer4: Planetary gravity will become stronger.\n\nAnswer format: "
        "answer1/answer2/answer3/answer4",
        "answer3"),
    "obqa": (
        {"question_stem": "There is most likely going to be fog around:",
         "choices": {"text": ["a marsh", "a tundra", "the plains", "a desert"], "label": ["A", "B", "C", "D"]},
         "answerKey": "A"},
        "Please choose the correct answer to the question: There is most likely going to be fog around:\n\n"
        "Answer1: a marsh Answer2: a tundra Answer3: the plains Answer4: a desert\n\nAnswer format: "
        "answer1/answer2/answer3/answer4",
        "answer1"),
}


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("task", sorted(LLM_ADAPTERS_ROWS))
def test_commonsense_rows_are_llm_adapters_test_json_rows(task: str, tmp_path: Path) -> None:
    hub_row, instruction, answer = LLM_ADAPTERS_ROWS[task]
    (row,) = commonsense_records(task, path=_write(tmp_path / f"{task}.jsonl", [hub_row]))
    assert row["instruction"] == instruction
    assert (row["input"], row["output"], row["answer"]) == ("", f"the correct answer is {answer}", answer)


def test_commonsense_prompts_are_llm_adapters_bytes() -> None:
    cfg = compose("dataset=commonsense170k")
    instruction = LLM_ADAPTERS_ROWS["siqa"][1]
    # commonsense_evaluate.py's generate_prompt (the script's indentation and trailing space are in the string)
    evaluated = build_prompt(cfg.eval.tasks[2], {"instruction": instruction, "input": ""})
    assert evaluated == ("Below is an instruction that describes a task. Write a response that appropriately "
                         "completes the request. \n\n                ### Instruction:\n                "
                         f"{instruction}\n\n                ### Response:\n                ")
    assert build_prompt(cfg.eval.tasks[2], {"instruction": "I", "input": "X"}) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write "
        "a response that appropriately completes the request.\n\n                ### Instruction:\n                I"
        "\n\n                ### Input:\n                X\n\n                ### Response:\n                ")
    # finetune.py's generate_prompt: the training text of a Commonsense-170K row
    row = {"instruction": instruction, "input": "", "output": "the correct answer is answer3"}
    trained = render_prompt(row, cfg.dataset.prompt_template, cfg.dataset.prompt_template_with_input)
    assert trained + render(cfg.dataset.response_template, row) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.  \n\n                ### Instruction:\n                "
        f"{instruction}\n                \n                ### Response:\n                "
        "the correct answer is answer3")
    with_input = render_prompt({**row, "input": "X"}, cfg.dataset.prompt_template,
                               cfg.dataset.prompt_template_with_input)
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write "
        "a response that appropriately completes the request. \n\n                ### Instruction:\n                "
        f"{instruction}\n                \n                ### Input:\n                X\n                \n"
        "                ### Response:\n                ")


# ------------------------------------------------------------------------------------------- MetaMath
METAMATH_STOPS = ["Question:", "Question", "USER:", "USER", "ASSISTANT:", "ASSISTANT", "Instruction:",
                  "Instruction", "Response:", "Response"]


def _tasks(*overrides: str) -> dict:
    """The MetaMath suite's tasks as their type reads them."""
    return {t.name: t for t in check_suite(compose("dataset=metamathqa", *overrides).eval)}


def test_metamath_prompt_stop_strings_and_token_budgets() -> None:
    tasks = _tasks()
    for name, budget in (("gsm8k", 512), ("math", 2048)):
        assert tasks[name].stop == METAMATH_STOPS
        assert tasks[name].cfg.max_new_tokens == budget and tasks[name].num_beams == 1
        assert tasks[name].prompt({"query": "What is 1+1?"}) == (
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nWhat is 1+1?\n\n### Response: Let's think step by step.")


def _verdict(task, gold_row: dict, generation: str) -> tuple[str | None, bool]:
    samples, _ = task.score([gold_row], [""], [generation])
    return samples[0]["extracted"], samples[0]["correct"]


# generation → (MetaMath's reading, loralab's corrected reading); golds below
GSM8K_READINGS = {
    "The answer is: 1,234,567": ("1234", "1234567"),        # one separator at most
    "The answer is: $1,234.56": ("1234", "30864/25"),
    "The answer is: 1.5/3": ("2", "1/2"),                     # reads 1.5, rounds half to even
    "The answer is: 3/4": ("1", "3/4"),                       # a/b divided and rounded
    "The answer is: 7/0": ("7", None),                        # a zero denominator reads as the numerator
    "The answer is: 2.5": ("2", "5/2"),
    "The answer is: -.5 dollars": ("0", "-1/2"),
    "The answer is: 18\nThe answer is: 20": ("20", "20"),    # the last marker
    "The answer is 18": (None, None),                         # no marker (it has a colon and a space)
    "The answer is: eighteen": (None, None),
}


@pytest.mark.parametrize("generation", list(GSM8K_READINGS))
def test_gsm8k_reads_numbers_as_metamath_does_and_the_variant_as_written(generation: str) -> None:
    metamath, corrected = GSM8K_READINGS[generation]
    assert _verdict(_tasks()["gsm8k"], {"answer": "#### 1234"}, generation)[0] == metamath
    assert _verdict(_tasks("eval=metamathqa_mathverify")["gsm8k"], {"answer": "#### 1234"}, generation)[0] == corrected


def test_gsm8k_gold_is_metamaths_integer() -> None:
    task = _tasks()["gsm8k"]
    assert _verdict(task, {"answer": "So 1,234,567 in all.\n#### 1,234,567"}, "The answer is: 1234567") == (
        "1234567", True)  # the reference's own commas are dropped whole
    assert _verdict(task, {"answer": "#### 1234"}, "The answer is: 1,234,567")[1] is True  # MetaMath's quirk


MATH_CUTS = [  # MetaMath keeps only what precedes the first ".\n" of the last marker's text, then one "." goes
    ("The answer is: 4.\nNote that 7 is not a solution.", "4", True),
    ("The answer is: 4\nNote that 7 is not a solution.", "4\nNote that 7 is not a solution", False),
    ("The answer is: \\frac12..\n ", "\\frac12", True),          # cut before stripping: "..\n" leaves one "."
    ("The answer is: 3.\nThe answer is: 4.\n", "4", True),
    ("The answer is: $4$", "$4$", False),                           # $ are kept: is_equiv does not drop them
]


@pytest.mark.parametrize(("generation", "extracted", "correct"), MATH_CUTS)
def test_math_answer_is_cut_at_the_first_period_newline(generation: str, extracted: str, correct: bool) -> None:
    gold = {"answer": "4"} if "frac" not in generation else {"answer": "0.5"}
    assert _verdict(_tasks()["math"], gold, generation) == (extracted, correct)


# (prediction, gold): is_equiv and math-verify disagree, both ways; the paper protocol uses is_equiv
IS_EQUIV_ONLY = [("x=1", "y=1"), ("3\\text{ and } 4", "3"), ("-2\\text{ and }2", "-2"),
                 ("(1,2)\\text{ or }(3,4)", "(1,2)")]
MATH_VERIFY_ONLY = [("0.50", "\\frac12"), ("\\sqrt{50}", "5\\sqrt2"), ("1,000", "1000"), ("(A)", "\\text{(A)}"),
                    ("x^2", "x^{2}"), ("2,3", "3,2"), ("f(x)=3", "3")]
BOTH = [("\\dfrac{1}{2}", "0.5"), ("k = 5", "5"), ("10\\%", "10"), ("5\\text{ cm}", "5"), ("90^\\circ", "90"),
        ("\\$5", "5"), (".5", "1/2"), ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"), ("\\left( 1,2 \\right)", "(1,2)")]
# normalisation steps that fail (MetaMath then compares the raw strings), and its "\\%" removal done twice
RAW = [("x/2", "x/2", True), ("x/2", "\\frac{x}{2}", False), ("\\frac", "\\frac", True),
       ("a\\text{ b}\\text{ c}", "a", False), ("\\\\\\%%", "\\text{ %\\left(", True)]


@pytest.mark.parametrize(("prediction", "gold"), IS_EQUIV_ONLY + MATH_VERIFY_ONLY + BOTH)
def test_is_equiv_against_math_verify_both_ways(prediction: str, gold: str) -> None:
    expected = (prediction, gold) not in MATH_VERIFY_ONLY
    assert is_equiv(prediction, gold) is expected
    assert math_equal(prediction, gold)[0] is ((prediction, gold) not in IS_EQUIV_ONLY)


@pytest.mark.parametrize(("prediction", "gold", "equal"), RAW)
def test_is_equiv_quirks(prediction: str, gold: str, equal: bool) -> None:
    assert is_equiv(prediction, gold) is equal
    assert is_equiv(None, "4") is False and is_equiv(None, None) is True


def test_math_comparators_are_separate_protocols() -> None:
    paper, variant = (compose("dataset=metamathqa", *o).eval for o in ((), ("eval=metamathqa_mathverify",)))
    assert paper.protocol.startswith("metamath-gsm8k-math/v3+") and paper.tasks[1].compare == "is_equiv"
    assert variant.tasks[1].compare == "math_verify" and variant.protocol.split("/")[0] != "metamath-gsm8k-math"


# ------------------------------------------------------------------------------ lm-evaluation-harness exports
class _ReplayLM:
    """An lm-eval model that answers each context with a given generation (the harness runs everything else)."""

    def __new__(cls, replies: dict[str, str]):
        from lm_eval.api.model import LM

        class Replay(LM):
            def generate_until(self, requests, disable_tqdm: bool = False):
                return [replies[request.args[0]] for request in requests]

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
                raise NotImplementedError

        return Replay()


MATH_GENERATIONS = ["The answer is: 4.\nNote that 7 is not a solution.", "The answer is: 0.50", "The answer is: $4$",
                    "The answer is: \\sqrt{50}", "x is 4", "The answer is: \\frac", "The answer is: x/2",
                    "The answer is: 3\nThe answer is: 5\\sqrt{2}"]
MATH_GOLDS = ["4", "\\frac12", "4", "5\\sqrt2", "4", "\\frac", "x/2", "5\\sqrt{2}"]
GSM8K_GENERATIONS = [*GSM8K_READINGS, "12+6=18. The answer is: 18.", "The answer is: 1,8"]
EXPORTS = {  # suite overrides, task, rows, generations
    "gsm8k": ((), "gsm8k", [{"answer": "#### 1234"}] * 10 + [{"answer": "#### 18"}] * 2, GSM8K_GENERATIONS),
    "gsm8k_corrected": (("eval=metamathqa_mathverify",), "gsm8k",
                        [{"answer": "#### 1234567"}] * 10 + [{"answer": "#### 18"}] * 2, GSM8K_GENERATIONS),
    "math_is_equiv": ((), "math", [{"answer": g} for g in MATH_GOLDS], MATH_GENERATIONS),
    "math_verify": (("eval=metamathqa_mathverify",), "math", [{"answer": g} for g in MATH_GOLDS], MATH_GENERATIONS),
    "winogrande": (("dataset=commonsense170k",), "winogrande", [{"answer": "option2"}] * 4,
                   ["the correct answer is option2", "option1 or option2", "Option2", "none"]),
    "arith_shift": (("dataset=arith_shift",), "arith_word_problems", [{"answer": "18"}] * 4,
                    ["3*6=18. The answer is: 18", "so 18", "The answer is: 17, not 18", "7+11=19"]),
}


@pytest.mark.parametrize("case", list(EXPORTS))
def test_exported_task_gives_loralabs_verdicts_through_the_harness(case: str, tmp_path: Path) -> None:
    """The harness' own pipeline (task YAML, filter_list, doc_to_target, exact_match or process_results) run
    on given generations reproduces loralab's per-sample verdicts, so its mean is loralab's number."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from loralab.evaluation.lm_eval_generate import write_generate_task

    overrides, name, rows, generations = EXPORTS[case]
    task = next(t for t in check_suite(compose("dataset=metamathqa", *overrides).eval) if t.name == name)
    samples, _ = task.score(rows, [""] * len(rows), generations)
    expected = [s["correct"] for s in samples]
    assert any(expected) and not all(expected)
    reading = task.harness_reading()
    contexts = [f"prompt {i}" for i in range(len(rows))]
    write_generate_task(tmp_path / name, f"loralab_{case}", contexts, task.harness_targets(rows),
                        {"until": [], "max_gen_toks": 8, "do_sample": False}, reading)
    output = simple_evaluate(model=_ReplayLM(dict(zip(contexts, generations))), tasks=[f"loralab_{case}"],
                             task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
                             log_samples=True, bootstrap_iters=0, verbosity="WARNING")
    logged = sorted(output["samples"][f"loralab_{case}"], key=lambda s: s["doc_id"])
    assert [bool(s["exact_match"]) for s in logged] == expected
    assert output["results"][f"loralab_{case}"]["exact_match,loralab"] == pytest.approx(sum(expected) / len(expected))


@pytest.mark.slow
def test_lm_eval_cli_rescores_a_finished_run_to_loralabs_number(tmp_path: Path, results_dir: Path) -> None:
    """A tiny run on the MetaMath suite (embedded word problems written as GSM8K rows), then the ``lm_eval`` CLI
    on its exported tasks, its base model folder and its adapter: the CLI's numbers are loralab's."""
    import subprocess
    import sys

    from loralab.data.arithmetic import word_problems
    from loralab.instantiate import build
    from loralab.runner import run

    gsm8k, math = tmp_path / "gsm8k.jsonl", tmp_path / "math.jsonl"
    _write(gsm8k, [{"question": p["question"], "answer": p["solution"].split(". The answer is: ")[0] + "\n#### "
                    + p["answer"]} for p in word_problems(n=24, split="eval", seed=0)])
    _write(math, [{"problem": "Ann has 2 cups. Ann gets 2. How many cups now?", "solution": "2+2=\\boxed{4}",
                   "question": "Ann has 2 cups. Ann gets 2. How many cups now?"}])
    prompt = "${dataset.prompt_template}"  # the embedded task's own prompt, so a few steps teach the format
    cfg = compose("eval=metamathqa", f"eval.tasks.0.data.path={gsm8k}", f"eval.tasks.1.data.path={math}",
                  f"eval.tasks.0.prompt_template={prompt}", f"eval.tasks.1.prompt_template={prompt}",
                  "eval.tasks.0.max_new_tokens=24", "eval.tasks.1.max_new_tokens=24", "eval.tasks.0.batch_size=8",
                  "eval.tasks.1.batch_size=8", "trainer.max_steps=40", "trainer.learning_rate=1e-2",
                  "trainer.save_steps=40", runs_dir=results_dir)
    scores = run(cfg)["eval"]["tasks"]
    assert scores["gsm8k"]["exact_match"] > 0  # a number a bare string match of the raw text would not give
    (run_dir,) = (results_dir / "runs").iterdir()
    cli = Path(sys.executable).with_name("lm_eval")
    subprocess.run([str(cli), "--model", "hf", "--model_args",
                    f"pretrained={build(cfg.model.builder)},peft={run_dir / 'adapter'}",
                    "--include_path", str(run_dir / "lm_eval"), "--tasks", "loralab_gsm8k,loralab_math",
                    "--batch_size", "8", "--output_path", str(tmp_path / "cli")], check=True, capture_output=True)
    (results_file,) = (tmp_path / "cli").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    for task in ("gsm8k", "math"):
        assert results[f"loralab_{task}"]["exact_match,loralab"] == pytest.approx(scores[task]["exact_match"]), task
