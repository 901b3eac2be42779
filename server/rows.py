"""One request's share of a batch, whatever the batching: how its next token is chosen (`RowSampler`) and
how its tokens become streamed text and a finish (`RowText`). Static batching (server/generation.py) and
continuous batching (server/scheduler.py) both drive these per row, so an answer cannot depend on the mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from visionrag.server.sampling import TokenDescriber, chosen, log_probs, penalize

if TYPE_CHECKING:
    from visionrag.server.generation import Delta, Sampling


class RowSampler:
    """Chooses one row's next token from its logits: greedy (argmax) or temperature / top-p with its own
    generator, seeded from the request, so the draw does not depend on the other rows of the batch. With
    OpenAI's penalties the logits are penalised first; with `logprobs` the raw logits' log-softmax is kept
    in `last_logprobs` for `RowText` (server/sampling.py)."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.generator: Any = None
        self.penalized = bool(sampling.frequency_penalty or sampling.presence_penalty)
        self.last_logprobs: Any = None

    @property
    def greedy(self) -> bool:
        """True when `pick` is a plain argmax of the raw logits with nothing to record, so a batch may take
        it for all such rows at once."""
        return self.sampling.temperature <= 0 and not self.penalized and not self.sampling.logprobs

    def pick(self, logits: Any, generated: Sequence[int] = ()) -> int:
        """The next token for this row; `logits` is the row's 1-D float vector, `generated` its answer so far."""
        import torch

        if self.sampling.logprobs:
            self.last_logprobs = log_probs(logits)
        if self.penalized:
            logits = penalize(
                logits, generated, self.sampling.frequency_penalty, self.sampling.presence_penalty
            )
        if self.sampling.temperature <= 0:
            return int(torch.argmax(logits))
        if self.generator is None:
            self.generator = torch.Generator(device=logits.device)
            seed = self.sampling.seed
            self.generator.manual_seed(seed if seed is not None else torch.seed())
        probs = torch.softmax(logits.float() / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.sampling.top_p
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs * keep)
        return int(torch.multinomial(probs, 1, generator=self.generator))


class RowText:
    """One row's answer: decodes each new token incrementally, applies EOS, stop strings (held back until
    they can no longer be the start of one), `max_tokens` and the time limit, and says what to send."""

    def __init__(
        self, tokenizer: Any, sampling: Sampling, stream: bool, prompt_tokens: int, eos_ids: Sequence[int]
    ) -> None:
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.stream = stream
        self.prompt_tokens = int(prompt_tokens)
        self.eos_ids = set(eos_ids)
        self.ids: list[int] = []
        self.offsets = (0, 0)  # (prefix, read) for incremental decoding
        self.text = ""  # decoded so far
        self.emitted = ""  # sent so far (text minus what may be the start of a stop string)
        self.finished = False
        self.describe = TokenDescriber(tokenizer) if sampling.logprobs else None
        self.pending_logprobs: list[dict[str, Any]] = []  # entries not yet sent on a Delta

    def advance(self, token: int, elapsed: float, batch_size: int, logprobs: Any = None) -> Delta | None:
        """Take the row's next token (and, with `logprobs`, the step's log-softmax it was chosen from); the
        delta to send (None: nothing new), final when the row ended."""
        from visionrag.server.generation import Delta

        sampling = self.sampling
        self.ids.append(token)
        if token in self.eos_ids:  # the end-of-turn token gets no logprobs entry (it is not in the text)
            return self.finish("stop", batch_size)
        if self.describe is not None and logprobs is not None:
            logprob, top = chosen(logprobs, token, sampling.top_logprobs)
            self.pending_logprobs.append(self.describe.entry(token, logprob, top))
        self.text += self._decode()
        for stop in sampling.stop:
            cut = self.text.find(stop) if stop else -1
            if cut >= 0:
                self.text = self.text[: max(cut, len(self.emitted))]
                return self.finish("stop", batch_size)
        if len(self.ids) >= sampling.max_tokens:
            return self.finish("length", batch_size)
        if sampling.time_limit is not None and elapsed >= sampling.time_limit:
            return self.finish("time_limit", batch_size)
        if not self.stream:
            return None
        visible = len(self.text) - held_back(self.text, sampling.stop)
        delta = self.text[len(self.emitted) : visible]
        if not delta:
            return None
        self.emitted += delta
        return Delta(delta, logprobs=self._take_logprobs())

    def finish(self, reason: str, batch_size: int) -> Delta:
        from visionrag.server.generation import Delta

        self.finished = True
        delta = self.text[len(self.emitted) :]
        self.emitted = self.text
        return Delta(
            delta,
            True,
            reason,
            self.prompt_tokens,
            len(self.ids),
            batch_size=batch_size,
            logprobs=self._take_logprobs(),
        )

    def _take_logprobs(self) -> list[dict[str, Any]] | None:
        if self.describe is None:
            return None
        taken, self.pending_logprobs = self.pending_logprobs, []
        return taken

    def _decode(self) -> str:
        """New text: decode a window of recent tokens so multi-token characters come out whole and spacing
        is right, without re-decoding the whole answer each step."""
        ids = self.ids
        prefix, read = self.offsets
        before = self.tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
        after = self.tokenizer.decode(ids[prefix:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.offsets = (read, len(ids))
            return after[len(before) :]
        return ""


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string, and so must wait."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                held = max(held, n)
                break
    return held
