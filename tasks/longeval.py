"""LongEval "lines" retrieval (paper appendix, Figure 7), after LongChat's LongEval.

A record of ``num_lines`` lines, each ``line <adjective-noun>: REGISTER_CONTENT is <number>``, is
followed by a question asking for one line's number. The wording, the 1..50000 number range and the
line names follow LongChat's generator (``DachengLi1/LongChat``, ``longeval/utils.py``,
``generate_lines_testcases`` with ``line_idx_opt: LRT-NL``); the metric follows its
``test_lines_one_sample``: correct iff the LAST integer in the output is the number.

Differences from the reference, all deliberate:

* LongChat names lines with the external ``wonderwords`` package (a random adjective and a random
  noun joined by '-'). To stay dependency-free, this module embeds its own lists of common English
  adjectives and nouns; the names have the same shape but are drawn from a smaller vocabulary.
* LongChat's names may repeat (``wonderwords`` draws with replacement), which makes a question
  ambiguous; here the names in one record are distinct.
* LongChat's shipped test cases end the question with an extra space ("I need the number. "); its
  generator code, reproduced here, does not.

``stop_at`` (not in LongChat) ends the generation early: ``integer`` once the answer holds a
complete integer (digits followed by another character), ``newline`` at the first line break
after some text; null (the default) generates ``max_new_tokens`` or up to the end-of-sequence
token, as LongChat. The answer is a number, so ``integer`` saves most of the 100 tokens on a CPU;
the score is still the last integer of what was generated, which is then the first one, so a model
that would have corrected itself later in a longer answer scores differently: a job with
``stop_at`` set has its own results file.

``length`` means the number of lines (LongChat: 200/300/400/500/600/680 lines, ~4.8k to ~15.9k LLaMA
tokens); the prompt's token count is reported by the runner from the input ids. A sample is a pure
function of (tokenizer, template, num_lines, seed, index).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from harness.errors import HarnessError
from tasks.base import Figure, Task, TaskInput, check_integer, greedy_generate
from tasks.prompts import format_prompt

# Reference wording (LongChat longeval/utils.py, generate_lines_testcases).
PREAMBLE = (
    "Below is a record of lines I want you to remember. "
    "Each line begins with 'line <line index>' and contains "
    "a '<REGISTER_CONTENT>' at the end of the line as a numerical value. "
    "For each line index, memorize its corresponding <REGISTER_CONTENT>. At "
    "the end of the record, I will ask you to retrieve the corresponding "
    "<REGISTER_CONTENT> of a certain line index. Now the record start:\n\n"
)
LINE = "line {name}: REGISTER_CONTENT is <{number}>\n"  # the angle brackets around the number are literal
# The reference puts "\n" before this sentence; format_prompt's "{text}\n{question}" supplies it.
QUESTION = "Now the record is over. Tell me what is the <REGISTER_CONTENT> in line {name}? I need the number."
MIN_NUMBER, MAX_NUMBER = 1, 50000  # random.randint(1, 50000) in the reference
# Plan mode's estimate of a prompt's tokens per line (it loads no tokenizer). LongChat's LLaMA
# figures: 200 lines ~ 4.8k tokens, 680 lines ~ 15.9k (the preamble and question included); the
# prompt of 1024 lines measured ~21k SmolLM2 tokens (~20.5 per line). A byte tokenizer counts
# ~47 per line (each line is ~47 characters): plan mode underestimates those models.
TOKENS_PER_LINE = 24

# Stand-ins for wonderwords' adjective and noun lists (see the module docstring).
ADJECTIVES = """
able absent acid active adorable afraid agile alert alive amber ample ancient angry anxious aromatic
ashamed awake awful bad bald basic bitter black bland blue bold bored brave brief bright brisk broad
broken brown bumpy busy calm careful casual cheap cheerful chilly civil clean clever close cloudy
clumsy coarse cold common cool cozy crazy creamy crisp crooked cruel curious curly cute damp dark
dear deep dense dirty dizzy dry dull dusty eager early easy elastic elegant empty endless equal
exact faint fair fake false famous fancy fast fat fierce fine firm flat fluffy fond foolish formal
fresh friendly frozen funny fuzzy gentle giant glad glossy golden good grand gray great green grumpy
guilty hairy handy happy hard harsh heavy helpful hidden high hollow honest hot huge humble hungry
icy idle ill important jolly juicy keen kind large late lazy light little lively lonely long loose
loud lovely low loyal lucky mad magic major mellow messy mild minor misty modern moist narrow nasty
neat nervous new nice noisy normal odd old open orange pale patient plain plastic pleasant polite
poor proud purple quick quiet rapid rare raw ready real red rich rigid ripe rough round royal rude
rural rusty sad safe salty sandy scary shallow sharp shiny short shy silent silly silver simple
slim slow small smart smooth soft solid sour spicy steep sticky stiff strange strict strong sunny
super sweet swift tall tame tender thick thin tidy tiny tired tough tricky ugly urban vague vast
violet warm weak wet white whole wide wild windy wise witty wooden young zealous
""".split()
NOUNS = """
acorn actor airport album anchor angle ankle answer apple apron arch arm army arrow artist attic
autumn axe baby badge bag bakery ball banana band bank barn basket bath beach beam bean bear bed bee
bell belt bench berry bicycle bird blanket boat bone book boot bottle box branch bread brick bridge
brush bubble bucket bull butter button cabin cable cake camera camp candle canoe canyon cap captain
car card carpet castle cat cave chain chair chalk cheese cherry chicken church circle city clock
cloud coat coin comet cookie copper corn cotton country cow crab crayon cricket crown cup curtain
daisy dancer deer desert desk diamond dinner doctor dog doll dolphin door dragon drawer dream drum
duck eagle earth egg elbow engine eraser farm feather fence field finger fish flag flame flute fog
forest fork fountain fox frog garden gate ghost giraffe glass glove goat gold grape grass guitar
hammer harbor hat hill horse house island jacket jar jelly jungle kettle key kitten ladder lake
lamp leaf lemon library lion lizard lock map marble market meadow mirror monkey moon mountain mouse
nail needle nest ocean onion orchard owl paint palace panda paper parrot pencil pepper piano pillow
planet plate pocket pond potato pumpkin puzzle queen rabbit radio rain river road robot rocket roof
rope saddle sail salad sand scarf school shell ship shoe shovel singer sky snail snake sock spoon
star stone storm street sugar swan table teacher tent thunder tiger tomato tower train tree truck
tulip turtle umbrella valley vase violin wagon wall whale wheel window wolf zebra
""".split()


@dataclass(frozen=True)
class LongEvalSample:
    input_ids: list[int]
    names: list[str]  # line names, in record order
    numbers: list[int]  # each line's REGISTER_CONTENT
    line: int  # index of the asked line
    expected: int  # its number

    @property
    def depth(self) -> float:
        """Where the asked line sits: 0 = first line of the record, close to 1 = last."""
        return self.line / len(self.names)


def _rng(seed: int, num_lines: int, index: int) -> random.Random:
    # A string seed is hashed deterministically by random.Random (unlike hash(), which is salted).
    return random.Random(f"longeval/{seed}/{num_lines}/{index}")


def _line_names(rng: random.Random, num_lines: int) -> list[str]:
    """``num_lines`` distinct adjective-noun names: sample pair indices without replacement."""
    pairs = len(ADJECTIVES) * len(NOUNS)
    if not 1 <= num_lines <= pairs:
        raise ValueError(f"longeval needs 1..{pairs} lines, got {num_lines}")
    return [f"{ADJECTIVES[k // len(NOUNS)]}-{NOUNS[k % len(NOUNS)]}" for k in rng.sample(range(pairs), num_lines)]


def make_sample(tokenizer, template: str, num_lines: int, seed: int, index: int) -> LongEvalSample:
    """The index-th LongEval lines prompt with ``num_lines`` lines."""
    rng = _rng(seed, num_lines, index)
    names = _line_names(rng, num_lines)
    numbers = [rng.randint(MIN_NUMBER, MAX_NUMBER) for _ in names]  # may repeat, as in the reference
    line = rng.randrange(num_lines)
    text = PREAMBLE + "".join(LINE.format(name=n, number=x) for n, x in zip(names, numbers))
    prompt = format_prompt(template, tokenizer, text, QUESTION.format(name=names[line]))
    input_ids = tokenizer.encode(prompt, add_special_tokens=template != "chat")
    return LongEvalSample(input_ids, names, numbers, line, numbers[line])


# stop_at -> whether a generated answer is complete (tested on the decoded text after each step).
STOP_RULES = {
    "integer": re.compile(r"\d\D").search,  # a run of digits has ended
    "newline": re.compile(r"\S[^\n]*\n").search,  # a line of text has ended
}


def answer_complete(answer: str, stop_at: str | None) -> bool:
    """Whether generation may stop after ``answer`` under ``stop_at`` (never with None)."""
    return stop_at is not None and bool(STOP_RULES[stop_at](answer))


def score(answer: str, expected: int) -> bool:
    """Correct iff the LAST integer in the answer equals the expected number (LongChat's metric)."""
    numbers = re.findall(r"\d+", answer)
    return bool(numbers) and int(numbers[-1]) == expected


class LongEvalTask(Task):
    """Runner adapter: ``score`` is 1.0 when the last integer of the greedy answer is the asked number."""

    name = "longeval"
    metric = "accuracy"
    score_kind = "binary"
    length_unit = "lines"
    columns = {"expected": int, "line": int, "depth": float, "answer": str}
    figures = (Figure("longeval_accuracy", "accuracy", "LongEval lines", "accuracy (95% Wilson interval)",
                      "LongEval line-retrieval accuracy vs number of lines (paper Figure 7; lines, not tokens); error "
                      "bars = 95% Wilson intervals; n above the panel = samples per point."),)

    # stop_at came after LongChat's protocol: at null (generate max_new_tokens) a job keeps its results file.
    hash_neutral_defaults = {"stop_at": None}

    @classmethod
    def check_params(cls, params: dict) -> None:
        check_integer(params, "max_new_tokens")  # the answer is generated: at least one token
        stop_at = params.get("stop_at")
        if stop_at is not None and stop_at not in STOP_RULES:
            raise HarnessError(f"task.stop_at must be null, {' or '.join(STOP_RULES)}, got {stop_at!r}")

    def __init__(self, *args, max_new_tokens: int = 100, stop_at: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_params(dict(max_new_tokens=max_new_tokens, stop_at=stop_at))
        self.max_new_tokens = int(max_new_tokens)
        self.stop_at = stop_at

    @classmethod
    def prompt_tokens(cls, length: int, params: dict) -> int:
        """An estimate: ``length`` lines at LongChat's ~24 LLaMA tokens per line (see TOKENS_PER_LINE)."""
        return TOKENS_PER_LINE * length

    @classmethod
    def generated_tokens(cls, params: dict) -> int:
        return int(params["max_new_tokens"])

    def build_input(self, length: int, index: int) -> TaskInput:
        sample = make_sample(self.tokenizer, self.prompt_template, length, self.seed, index)
        return TaskInput(sample.input_ids, {"expected": sample.expected, "line": sample.line,
                                            "depth": round(sample.depth, 4)})

    def evaluate(self, model, task_input: TaskInput) -> dict:
        stop = None
        if self.stop_at is not None:
            def stop(ids: list[int]) -> bool:
                return answer_complete(self.tokenizer.decode(ids, skip_special_tokens=True), self.stop_at)
        new = greedy_generate(model, task_input.input_ids, self.max_new_tokens, self.tokenizer.eos_token_id, stop)
        answer = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return {"score": float(score(answer, task_input.info["expected"])), "answer": answer}
