"""The quality gate: short factual questions asked greedily of a running service, scored by accepted answers.

A model variant (dtype, quantization, compiled or eager) is judged by a question set, never by one answer.
The questions live in tools/hxp_tools/data/quality_questions.json: each has `accept` substrings (one must
occur as a whole word or phrase, case-insensitive) and optional `reject` ones (none may occur), so a
hedging answer that names the right and a wrong answer does not pass. Asked by scripts/bench-variants and
the engine tier's tests/engine/test_quality_gate.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path

from hxp_enterprise_llm.bench.client import RequestSpec, send_chat_request
from hxp_enterprise_llm.bench.runner import LoadOptions, discover_model, make_client

QUESTIONS_FILE = Path(__file__).resolve().parent / "data" / "quality_questions.json"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    accept: tuple[str, ...]
    reject: tuple[str, ...] = ()

    def is_answered_by(self, answer: str) -> bool:
        return any(_contains(answer, s) for s in self.accept) and not any(_contains(answer, s) for s in self.reject)


@dataclass(frozen=True)
class QuestionSet:
    questions: tuple[Question, ...]
    max_tokens: int


@dataclass(frozen=True)
class Answer:
    question: Question
    text: str

    @property
    def correct(self) -> bool:
        return self.question.is_answered_by(self.text)


@dataclass(frozen=True)
class Score:
    answers: tuple[Answer, ...]

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.answers)

    @property
    def total(self) -> int:
        return len(self.answers)

    def __str__(self) -> str:
        return f"{self.correct}/{self.total}"

    def report(self) -> str:
        lines = [f"{'ok ' if a.correct else 'NO '} {a.question.id:<20} {_one_line(a.text)}" for a in self.answers]
        return "\n".join([*lines, f"score {self}"])


def _contains(text: str, phrase: str) -> bool:
    # Whole words: "8" must not match "18", "Rome" not "Romeo".
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, flags=re.IGNORECASE) is not None


def _one_line(text: str, width: int = 110) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def load_questions(path: Path = QUESTIONS_FILE) -> QuestionSet:
    document = json.loads(path.read_text(encoding="utf-8"))
    questions = tuple(Question(id=q["id"], question=q["question"], accept=tuple(q["accept"]),
                               reject=tuple(q.get("reject", ()))) for q in document["questions"])
    return QuestionSet(questions=questions, max_tokens=int(document["max_tokens"]))


async def ask_all(base_url: str, question_set: QuestionSet, concurrency: int = 8, timeout_s: float = 300) -> Score:
    """Every question as its own chat request (temperature 0) to the server's first model, `concurrency` at a
    time, through `hxp-llm bench`'s client; a failed request raises (a gate must not score an error as a wrong
    answer)."""
    options = LoadOptions(base_url=base_url, concurrency=concurrency, timeout_s=timeout_s)
    async with make_client(options) as client:
        model = await discover_model(client)
        gate = asyncio.Semaphore(concurrency)

        async def ask(question: Question) -> Answer:
            async with gate:
                result = await send_chat_request(client, RequestSpec(
                    model, question.question, question_set.max_tokens, stream=False, temperature=0))
            if not result.ok:
                raise RuntimeError(f"quality gate, question {question.id}: {result.error}")
            return Answer(question, result.text)

        answers = await asyncio.gather(*(ask(q) for q in question_set.questions))
    return Score(tuple(answers))

