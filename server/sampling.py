"""Per-row pieces of OpenAI's sampling parameters, as pure functions of one row of logits.

They take one request's logits (1-D, vocabulary size) and what it generated so far, so any generation
loop (`generate` with a logits processor today, a per-step scheduler tomorrow) can call them per row.

- Penalties follow OpenAI's formula, over the tokens generated so far (not the prompt):
  `logits[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty`, `c[j]` = times j was generated.
- Log probabilities are those of the model's own distribution: `log_softmax` of the raw logits, before
  penalties and temperature (as OpenAI reports them, and vLLM by default). A greedy token's logprob is
  therefore the largest of its row, whatever the sampling settings did to choose it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


def penalize(logits: Any, generated: Any, frequency_penalty: float, presence_penalty: float) -> Any:
    """`logits` (1-D tensor) with OpenAI's frequency and presence penalties for the `generated` token ids
    (1-D tensor or sequence) applied; a new tensor, `logits` is left alone."""
    import torch

    generated = torch.as_tensor(generated, dtype=torch.long, device=logits.device)
    if generated.numel() == 0 or (frequency_penalty == 0 and presence_penalty == 0):
        return logits.clone()
    counts = torch.bincount(generated, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
    return logits - counts * frequency_penalty - (counts > 0).to(logits.dtype) * presence_penalty


def log_probs(logits: Any) -> Any:
    """The model's log probabilities for one row of raw logits (float32, whatever the model's dtype)."""
    import torch

    return torch.log_softmax(logits.float(), dim=-1)


def chosen(logprobs: Any, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log probability of `token` and the `top` most likely tokens with theirs, most likely first."""
    import torch

    value = float(logprobs[token])
    if top <= 0:
        return value, []
    values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
    return value, list(zip(ids.tolist(), values.tolist(), strict=True))


@dataclass(frozen=True)
class TokenText:
    """How OpenAI shows a token: its text and its exact UTF-8 bytes (a token may hold part of a
    character, so the bytes of several tokens may have to be joined to read it)."""

    text: str
    bytes: list[int]


class TokenDescriber:
    """Token id -> `TokenText`, cached. Byte-level BPE tokenizers (Llama 3's) give each token's exact
    bytes; other tokenizers give the UTF-8 of the token's decoded text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, TokenText] = {}
        self.byte_decoder = _byte_decoder(tokenizer)

    def __call__(self, token: int) -> TokenText:
        found = self.cache.get(token)
        if found is None:
            found = self.cache[token] = self._describe(token)
        return found

    def _describe(self, token: int) -> TokenText:
        if self.byte_decoder is not None:
            piece = self.tokenizer.convert_ids_to_tokens(token)
            if isinstance(piece, str) and piece and all(ch in self.byte_decoder for ch in piece):
                raw = bytes(self.byte_decoder[ch] for ch in piece)
                return TokenText(raw.decode("utf-8", errors="replace"), list(raw))
        text = self.tokenizer.decode([token], skip_special_tokens=False)
        return TokenText(text, list(text.encode("utf-8")))

    def entry(self, token: int, logprob: float, top: list[tuple[int, float]]) -> dict[str, Any]:
        """One element of OpenAI's `choices[].logprobs.content`."""
        described = self(token)
        return {
            "token": described.text,
            "logprob": logprob,
            "bytes": described.bytes,
            "top_logprobs": [{"token": self(t).text, "logprob": lp, "bytes": self(t).bytes} for t, lp in top],
        }


def _byte_decoder(tokenizer: Any) -> dict[str, int] | None:
    """GPT-2's printable-character -> byte map when the tokenizer is byte-level BPE, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None or "ByteLevel" not in repr(decoder):  # ByteLevel(...) or Sequence([ByteLevel(...)])
        return None
    # bytes_to_unicode (GPT-2): printable bytes map to themselves, the rest to 256 + n
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}
