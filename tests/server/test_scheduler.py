"""Continuous batching on the tiny checkpoint (fp32, CPU), without HTTP: the greedy invariant (alone, static
batch, joined mid-way), retirement, cache compaction, budget, sampling and the per-row limits.

The tiny tokenizer is one word per token and the random model never picks a special token (their logits
are zeroed), so equal text with equal `completion_tokens` means equal token ids."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.checkpoints.mllama import build_tiny_mllama
from tests.conftest import diagram_png
from visionrag.server.errors import ConfigError
from visionrag.server.generation import GenerationRequest, Sampling, VisionModel
from visionrag.server.scheduler import Scheduler
from visionrag.server.settings import Settings

FOUR_TILES = (160, 120)  # the tiny processor cuts this image into 4 tiles of 56 px
TWO_TILES = (60, 45)  # and this one into 2


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> VisionModel:
    return VisionModel.load(str(tiny_model_dir))


def request(question: str, max_tokens: int, image: int = 0, size=FOUR_TILES, **sampling) -> GenerationRequest:
    image = Image.open(io.BytesIO(diagram_png(image, size)))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return GenerationRequest(messages, image, Sampling(max_tokens=max_tokens, **sampling))


class Answers:
    """Collects a scheduler's deltas per request, and which step each request ended in."""

    def __init__(self) -> None:
        self.pieces: dict[str, list[str]] = {}
        self.final: dict[str, dict] = {}
        self.ended_at: dict[str, int] = {}
        self.steps = 0

    def take(self, outputs) -> None:
        self.steps += 1
        for uid, delta in outputs:
            assert uid not in self.final, f"{uid} got a delta after its last one"
            self.pieces.setdefault(uid, []).append(delta.text)
            if delta.done:
                self.final[uid] = delta.to_dict()
                self.ended_at[uid] = self.steps

    def text(self, uid: str) -> str:
        return "".join(self.pieces[uid])

    def run(self, scheduler: Scheduler, limit: int = 2000) -> None:
        for _ in range(limit):
            if not scheduler.busy:
                return
            self.take(scheduler.step())
        raise AssertionError("the scheduler did not finish")


def alone(model: VisionModel, req: GenerationRequest) -> tuple[str, dict]:
    scheduler, answers = Scheduler(model, 8), Answers()
    scheduler.add("x", req)
    answers.run(scheduler)
    return answers.text("x"), answers.final["x"]


def test_greedy_answer_is_the_same_alone_in_a_static_batch_and_joining_mid_way(model) -> None:
    reqs = {
        "long": request("what does the diagram show between the gateway and the database", 24, 1),
        "short": request("api", 10, 2, TWO_TILES),  # shorter prompt: left padding; fewer tiles: tile padding
        "mid": request("which cache is read", 14, 3, TWO_TILES),
    }
    static = dict(zip(reqs, model.generate(list(reqs.values())), strict=True))
    scheduler, answers = Scheduler(model, 8), Answers()
    scheduler.add("long", reqs["long"])
    for _ in range(3):
        answers.take(scheduler.step())
    scheduler.add("short", reqs["short"])  # joins a batch whose cache is already longer than its prompt
    answers.take(scheduler.step())
    assert scheduler.batch is not None and scheduler.batch.size == 2
    assert (scheduler.batch.attention == 0).any(), "left padding was not exercised"
    scheduler.add("mid", reqs["mid"])
    answers.run(scheduler)
    for uid, req in reqs.items():
        text, final = alone(model, req)
        assert answers.text(uid) == text == static[uid].text, uid
        assert (
            answers.final[uid]["completion_tokens"] == final["completion_tokens"] == req.sampling.max_tokens
        )
        assert answers.final[uid]["prompt_tokens"] == final["prompt_tokens"] == static[uid].prompt_tokens
        assert answers.final[uid]["finish_reason"] == "length"
    assert answers.final["mid"]["batch_size"] >= 2


def test_a_finished_row_frees_its_slot_at_once_and_the_cache_shrinks(model) -> None:
    scheduler, answers = Scheduler(model, 2), Answers()
    scheduler.add("long-prompt", request("a very long question " * 6 + "about the diagram", 4, 1))
    scheduler.add("b", request("api", 30, 2, TWO_TILES))
    scheduler.add("c", request("q", 5, 3, TWO_TILES))
    answers.take(scheduler.step())
    assert [row.uid for row in scheduler.rows] == ["long-prompt", "b"]  # two slots: c waits
    while "long-prompt" not in answers.final:
        answers.take(scheduler.step())
    # retired in the step it ended: its slot is free and its long prompt's columns and tiles are gone
    assert [row.uid for row in scheduler.rows] == ["b"]
    assert scheduler.batch is not None and (scheduler.batch.attention[:, 0] == 1).all()
    assert scheduler.batch.tiles.shape[1] == 2
    ended = answers.steps
    answers.take(scheduler.step())
    assert "c" in answers.pieces and answers.steps == ended + 1  # c started in the very next step
    answers.run(scheduler)
    assert answers.text("c") == alone(model, request("q", 5, 3, TWO_TILES))[0]
    assert answers.text("b") == alone(model, request("api", 30, 2, TWO_TILES))[0]
    assert not scheduler.rows and scheduler.batch is None


def test_stop_string_and_max_tokens_retire_rows_with_their_reason(model) -> None:
    full, _ = alone(model, request("q", 12))
    stop = full.split()[3]
    scheduler, answers = Scheduler(model, 8), Answers()
    scheduler.add("stop", request("q", 12, stop=(stop,)))
    scheduler.add("len", request("q", 3))
    scheduler.add("other", request("something else entirely", 12, 5))
    answers.run(scheduler)
    assert answers.final["stop"]["finish_reason"] == "stop"
    assert answers.text("stop") == full[: full.index(stop)]
    assert stop not in "".join(answers.pieces["stop"][:-1])  # never streamed before the cut
    assert (
        answers.final["len"]["finish_reason"] == "length" and answers.final["len"]["completion_tokens"] == 3
    )
    assert answers.ended_at["len"] < answers.ended_at["stop"] <= answers.ended_at["other"]


def test_eos_at_the_first_token_never_joins_the_batch(tmp_path) -> None:
    eos_model = VisionModel.load(str(build_tiny_mllama(tmp_path / "eos", always_eos=True)))
    scheduler, answers = Scheduler(eos_model, 8), Answers()
    scheduler.add("a", request("q", 10))
    answers.take(scheduler.step())
    assert answers.final["a"] == {**answers.final["a"], "finish_reason": "stop", "completion_tokens": 1}
    assert answers.text("a") == "" and not scheduler.busy and scheduler.batch is None


def test_cancel_retires_a_running_row_and_drops_a_waiting_one(model) -> None:
    scheduler, answers = Scheduler(model, 1), Answers()
    scheduler.add("a", request("q", 50))
    scheduler.add("b", request("q", 50, 2))
    answers.take(scheduler.step())
    scheduler.cancel("b")  # still waiting
    scheduler.cancel("a")  # running
    answers.take(scheduler.step())
    assert not scheduler.busy and scheduler.batch is None
    assert "b" not in answers.pieces and "a" not in answers.final


def test_a_request_that_fails_at_prefill_fails_alone(model) -> None:
    scheduler, answers = Scheduler(model, 8), Answers()
    scheduler.add("good", request("q", 6))
    answers.take(scheduler.step())
    scheduler.add("bad", GenerationRequest(request("q", 6).messages, b"not an image", Sampling(max_tokens=6)))
    answers.run(scheduler)
    assert [uid for uid, _ in scheduler.take_failed()] == ["bad"] and scheduler.take_failed() == []
    assert "bad" not in answers.pieces
    assert answers.text("good") == alone(model, request("q", 6))[0]


def test_after_a_failed_step_only_live_requests_are_told(model) -> None:
    """A cancelled row's client is gone (its slot already given back): fail_all leaves it out."""
    scheduler, answers = Scheduler(model, 8), Answers()
    scheduler.add("gone", request("q", 50))
    scheduler.add("live", request("q", 50, 2))
    answers.take(scheduler.step())
    scheduler.cancel("gone")
    scheduler.add("waiting", request("q", 50, 3))
    assert sorted(scheduler.fail_all()) == ["live", "waiting"]
    assert not scheduler.busy and scheduler.batch is None


def test_seeded_sampling_is_reproducible_and_leaves_greedy_rows_alone(model) -> None:
    sampled = request("q", 10, temperature=1.5, seed=7)
    scheduler, answers = Scheduler(model, 8), Answers()
    scheduler.add("greedy", request("q", 10))
    answers.take(scheduler.step())
    scheduler.add("sampled", sampled)
    answers.run(scheduler)
    assert answers.text("greedy") == alone(model, request("q", 10))[0]
    assert answers.text("sampled") == alone(model, sampled)[0] == model.generate([sampled])[0].text


def test_token_budget_holds_back_a_request_until_a_row_leaves(model) -> None:
    first = request("q", 6)
    budget = model.prompt_length(first) + 6 + 3  # room for the first row only
    scheduler, answers = Scheduler(model, 8, max_batch_tokens=budget), Answers()
    scheduler.add("a", first)
    scheduler.add("b", request("q", 6, 2))
    answers.take(scheduler.step())
    assert [row.uid for row in scheduler.rows] == ["a"] and len(scheduler.waiting) == 1
    answers.run(scheduler)
    assert answers.ended_at["a"] < answers.ended_at["b"]
    assert answers.text("b") == alone(model, request("q", 6, 2))[0]


def test_time_limit_and_quiet_requests_behave_as_in_static_batching(model) -> None:
    scheduler, answers = Scheduler(model, 8), Answers()
    streamed = request("which cache is read", 9, 5)
    quiet = GenerationRequest(streamed.messages, streamed.image, streamed.sampling, stream=False)
    scheduler.add("timed", request("q", 4000, time_limit=0.0))
    scheduler.add("streamed", streamed)
    scheduler.add("quiet", quiet)
    answers.run(scheduler)
    assert answers.final["timed"]["finish_reason"] == "time_limit"
    assert answers.final["timed"]["completion_tokens"] == 1
    assert answers.pieces["quiet"] == [answers.text("streamed")] and len(answers.pieces["streamed"]) > 1


def test_batching_setting_is_validated() -> None:
    assert Settings.load(environ={}, dotenv_path=None).batching == "continuous"
    assert Settings.load(environ={"VISIONRAG_BATCHING": "static"}, dotenv_path=None).batching == "static"
    with pytest.raises(ConfigError, match="continuous"):
        Settings.load(environ={"VISIONRAG_BATCHING": "dynamic"}, dotenv_path=None)
    with pytest.raises(ConfigError, match="max_batch_tokens"):
        Settings.load(environ={"VISIONRAG_MAX_BATCH_TOKENS": "-1"}, dotenv_path=None)
    with pytest.raises(ConfigError, match="VISIONRAG_BATCHING=static"):  # never silently ignored
        Settings.load(environ={"VISIONRAG_COMPILE": "1"}, dotenv_path=None)
    compiled = {"VISIONRAG_COMPILE": "1", "VISIONRAG_BATCHING": "static"}
    assert Settings.load(environ=compiled, dotenv_path=None).compile
