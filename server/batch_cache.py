"""The state of a running Mllama batch between decoding steps, and the tensor surgery that lets rows join
and leave it: the KV cache plus the masks and positions that go with it.

Layout (batch axis first everywhere):
- self-attention layers: K/V `[rows, kv_heads, L, head_dim]`, left padded to the longest row; `attention`
  `[rows, L]` marks the real columns (1) and the padding (0), as the processor's left padding does.
- cross-attention layers: K/V of the row's image, `[rows, kv_heads, tiles * patches, head_dim]` (tile-major,
  as Mllama's projector lays them out), padded on the right to the largest tile count in the batch;
  `tiles` `[rows, T]` marks each row's real tiles, so padded tiles get no attention weight.
- `last`: each row's newest token, not yet in the cache (the next step feeds it); `positions`: its
  position (the row's real token count before it), as `generate` counts them from the attention mask.

A padded column or tile is masked, so it never changes a row's answer; `compact` drops the columns no row
needs any more, so a finished long row does not leave its length behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class RunningBatch:
    cache: Any  # transformers DynamicCache
    attention: Any  # [rows, L] long
    tiles: Any  # [rows, T] long
    last: Any  # [rows] long
    positions: Any  # [rows] long
    cross_layers: frozenset[int]
    patches: int  # vision positions per tile

    @property
    def size(self) -> int:
        return int(self.attention.shape[0])

    @property
    def length(self) -> int:
        return int(self.attention.shape[1])

    @classmethod
    def from_prefill(
        cls, cache: Any, inputs: dict[str, Any], first: Any, cross_layers: Sequence[int], patches: int
    ) -> RunningBatch:
        """The batch a prefill left behind: `inputs` as given to the model, `first` the sampled tokens."""
        attention = inputs["attention_mask"]
        tiles = inputs["cross_attention_mask"][:, -1, 0, :].to(
            attention.dtype
        )  # the mask of generated tokens
        return cls(
            cache=cache,
            attention=attention,
            tiles=tiles,
            last=first,
            positions=attention.sum(dim=1),
            cross_layers=frozenset(cross_layers),
            patches=patches,
        )

    def decode_inputs(self) -> dict[str, Any]:
        """Keyword arguments for one decoding step of every row (the model's `forward`)."""
        import torch

        ones = torch.ones((self.size, 1), dtype=self.attention.dtype, device=self.attention.device)
        return {
            "input_ids": self.last[:, None],
            "attention_mask": torch.cat([self.attention, ones], dim=1),
            "position_ids": self.positions[:, None],
            "cross_attention_mask": self.tiles[:, None, None, :],
            "past_key_values": self.cache,
            "use_cache": True,
            "logits_to_keep": 1,
        }

    def advance(self, tokens: Any) -> None:
        """After a decoding step: the fed tokens are now in the cache, `tokens` are the rows' new last ones."""
        import torch

        ones = torch.ones((self.size, 1), dtype=self.attention.dtype, device=self.attention.device)
        self.attention = torch.cat([self.attention, ones], dim=1)
        self.positions = self.positions + 1
        self.last = tokens

    def merge(self, other: RunningBatch) -> None:
        """Append `other`'s rows (a fresh prefill) after this batch's rows."""
        import torch

        length = max(self.length, other.length)
        tiles = max(self.tiles.shape[1], other.tiles.shape[1])
        for idx, (mine, theirs) in enumerate(zip(self.cache.layers, other.cache.layers, strict=True)):
            if idx in self.cross_layers:
                pad = tiles * self.patches
                mine.keys = torch.cat([_pad_right(mine.keys, pad), _pad_right(theirs.keys, pad)])
                mine.values = torch.cat([_pad_right(mine.values, pad), _pad_right(theirs.values, pad)])
            else:
                mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)])
                mine.values = torch.cat([_pad_left(mine.values, length), _pad_left(theirs.values, length)])
        self.attention = torch.cat([_pad_left(self.attention, length), _pad_left(other.attention, length)])
        self.tiles = torch.cat([_pad_right(self.tiles, tiles), _pad_right(other.tiles, tiles)])
        self.last = torch.cat([self.last, other.last])
        self.positions = torch.cat([self.positions, other.positions])

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (indices, in order), then drop the padding no remaining row needs."""
        import torch

        index = torch.tensor(list(rows), dtype=torch.long, device=self.attention.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self.attention = self.attention.index_select(0, index)
        self.tiles = self.tiles.index_select(0, index)
        self.last = self.last.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.compact()

    def compact(self) -> None:
        """Drop leading self-attention columns that are padding in every row, and trailing tiles that are
        padding in every row."""
        lead = int((self.attention.cumsum(dim=1) == 0).sum(dim=1).min())
        tiles = int(self.tiles.sum(dim=1).max())
        for idx, layer in enumerate(self.cache.layers):
            if idx in self.cross_layers:
                if tiles < self.tiles.shape[1]:
                    layer.keys = layer.keys[:, :, : tiles * self.patches]
                    layer.values = layer.values[:, :, : tiles * self.patches]
            elif lead:
                layer.keys = layer.keys[:, :, lead:]
                layer.values = layer.values[:, :, lead:]
        if lead:
            self.attention = self.attention[:, lead:]
        self.tiles = self.tiles[:, :tiles]


def _pad_left(t: Any, length: int) -> Any:
    """Zeros before the sequence axis (dim 2 of K/V, dim 1 of a mask) up to `length`."""
    import torch.nn.functional as F

    missing = length - t.shape[2 if t.dim() == 4 else 1]
    if missing <= 0:
        return t
    pad = (0, 0, missing, 0) if t.dim() == 4 else (missing, 0)
    return F.pad(t, pad)


def _pad_right(t: Any, length: int) -> Any:
    """Zeros after the sequence axis (dim 2 of K/V, dim 1 of a mask) up to `length`."""
    import torch.nn.functional as F

    missing = length - t.shape[2 if t.dim() == 4 else 1]
    if missing <= 0:
        return t
    pad = (0, 0, 0, missing) if t.dim() == 4 else (0, missing)
    return F.pad(t, pad)
