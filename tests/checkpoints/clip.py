"""Build random CLIP text and vision encoders in fastembed's folder layout, so tests (tiny) and benchmarks
(the real ViT-B/32 shape) load them through the very code path the server uses:
`TextEmbedding("Qdrant/clip-ViT-B-32-text", specific_model_path=dir, local_files_only=True)` and the
`ImageEmbedding` equivalent. Nothing is downloaded; the tokenizer is trained here with `tokenizers`.

What fastembed 0.9.1 reads (checked in its source):
* text folder: `model.onnx` (inputs `input_ids`, `attention_mask`; the FIRST output is the embedding,
  returned unnormalised), `tokenizer.json` (its padding and truncation are re-applied), and
  `tokenizer_config.json` with `model_max_length` (truncation, 77) and `pad_token`;
  `config.json` and `special_tokens_map.json` are optional but written as the hub folder has them.
* vision folder: `model.onnx` (first input is the pixels, first output reshaped to (batch, -1) and
  L2-normalised), `preprocessor_config.json` (`size` as a dict, `crop_size`, mean/std), `config.json`.
* `projection_dim` must be 512: fastembed reports the dimension of the named model from its own table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TEXT_MODEL_NAME = "Qdrant/clip-ViT-B-32-text"
IMAGE_MODEL_NAME = "Qdrant/clip-ViT-B-32-vision"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT = 77  # CLIP's text context, as in the real model

# A small corpus for training the byte-level BPE: words of the domain, so token density is plausible.
_CORPUS = """
The diagram shows a client that sends requests through an API gateway to three backend services.
Each service owns its database; the orders service writes events to a message queue that the billing
worker reads in batches. A load balancer spreads traffic over the web tier in two availability zones.
The entity relationship diagram has a users table with a primary key id, an orders table with a
foreign key user_id, and a line_items table that joins orders to products. Arrows point from the
cache to the storage bucket; the blue boxes are containers in a Kubernetes cluster and the green
ones are managed services. Authentication uses tokens issued by the identity provider. The search
index is rebuilt nightly from the journal; vectors are stored in a collection with two named fields.
Reads go to replicas, writes go to the primary. The frontend talks to the backend over HTTPS, and a
CDN serves static assets. Logs and metrics flow into the observability stack through an agent.
""".strip()


@dataclass(frozen=True)
class ClipShape:
    """Sizes of the random CLIP; the defaults are tiny (tests), `ClipShape.vit_b_32()` is the real shape."""

    vocab_size: int = 1024  # model embedding rows; the trained tokenizer uses at most this many
    tokenizer_vocab: int = 600
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    image_size: int = 32
    patch_size: int = 8
    projection_dim: int = 512

    @classmethod
    def vit_b_32(cls) -> ClipShape:
        return cls(
            vocab_size=49408,
            tokenizer_vocab=2000,
            text_hidden=512,
            text_layers=12,
            text_heads=8,
            vision_hidden=768,
            vision_layers=12,
            vision_heads=12,
            image_size=224,
            patch_size=32,
        )


def build_tokenizer(vocab_size: int):
    """Byte-level BPE (no unknown tokens) with CLIP's start/end tokens around every text; the pad token
    is the end token, as in the hub folder. Deterministic: the trainer breaks ties by pair order."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
    )
    tok.enable_padding(pad_id=eos, pad_token=EOS)
    tok.enable_truncation(max_length=CONTEXT)
    return tok


def _export(module, args: tuple, path: Path, inputs: list[str], output: str, dynamic: dict) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constant branches, expected here
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=[output],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )


def build_tiny_clip(root: Path, shape: ClipShape | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Write `root/text` and `root/vision`; returns (text_dir, vision_dir). Random weights, seeded."""
    import torch
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    shape = shape or ClipShape()
    root = Path(root)
    text_dir, vision_dir = root / "text", root / "vision"
    text_dir.mkdir(parents=True, exist_ok=True)
    vision_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    tok = build_tokenizer(min(shape.tokenizer_vocab, shape.vocab_size))
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.save(str(text_dir / "tokenizer.json"))
    (text_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": CONTEXT,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "do_lower_case": True,
                "tokenizer_class": "CLIPTokenizer",
            },
            indent=2,
        )
    )
    (text_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2)
    )

    text_cfg = CLIPTextConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.text_hidden,
        intermediate_size=shape.text_hidden * 4,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        max_position_embeddings=CONTEXT,
        projection_dim=shape.projection_dim,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    text_model = CLIPTextModelWithProjection(text_cfg).eval()
    (text_dir / "config.json").write_text(text_cfg.to_json_string())

    class _Text(torch.nn.Module):
        """Only the projected embedding, so it is the graph's first (and only) output."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = text_model

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).text_embeds

    ids = torch.tensor([tok.encode("a diagram of a cache").ids], dtype=torch.long)
    with torch.no_grad():
        _export(
            _Text().eval(),
            (ids, torch.ones_like(ids)),
            text_dir / "model.onnx",
            ["input_ids", "attention_mask"],
            "text_embeds",
            {
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "text_embeds": {0: "batch"},
            },
        )

    vision_cfg = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=shape.vision_hidden * 4,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        projection_dim=shape.projection_dim,
    )
    vision_model = CLIPVisionModelWithProjection(vision_cfg).eval()
    (vision_dir / "config.json").write_text(vision_cfg.to_json_string())
    (vision_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": shape.image_size},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": shape.image_size, "width": shape.image_size},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "do_convert_rgb": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            },
            indent=2,
        )
    )

    class _Vision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = vision_model

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).image_embeds

    pixels = torch.zeros(1, 3, shape.image_size, shape.image_size)
    with torch.no_grad():
        _export(
            _Vision().eval(),
            (pixels,),
            vision_dir / "model.onnx",
            ["pixel_values"],
            "image_embeds",
            {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        )
    return text_dir, vision_dir
