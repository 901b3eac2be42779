"""Build small random Mllama checkpoints that load through the same `from_pretrained(dir)` code path as
Llama 3.2 Vision: a real `MllamaForConditionalGeneration`, a real `MllamaProcessor` with the Llama special
tokens and chat template, saved to a folder. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = [
    "<|eot_id|>",  # id 0, so a model whose logits are all equal emits it (see always_eos)
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
    "[UNK]",
]

WORDS = (
    "the a an of to in on and or is are was be it this that with for as by from at which diagram "
    "service database queue cache user api gateway server client table entity key foreign primary "
    "relation flow arrow box node edge load balancer storage bucket network zone region cluster pod "
    "container request response read write stream batch worker model vision answer question image "
    "blue red green left right top bottom shows connects contains between each one two three many "
    "system component layer frontend backend auth token index search vector store journal data"
).split()

CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}"
)


def build_tokenizer(extra_words: int = 0):
    """A WordLevel tokenizer carrying Llama's special tokens; `<|image|>` comes last, past the text vocab,
    as in the real checkpoint (its id is `config.image_token_index`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["user", "assistant", "system", *WORDS, *(f"w{i}" for i in range(extra_words))]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault("▁" + word, len(vocab))
    vocab["<|image|>"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        unk_token="[UNK]",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("[UNK]",)] + ["<|image|>"],
        model_max_length=131072,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_mllama(
    root: Path,
    *,
    hidden_size: int = 32,
    text_layers: int = 2,
    intermediate_size: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    image_size: int = 56,
    extra_words: int = 0,
    cross_attention_layers: list[int] | None = None,
    always_eos: bool = False,
    seed: int = 0,
) -> Path:
    """Save a random Mllama (two text layers, one of them cross-attention, by default) and its processor.
    `cross_attention_layers` defaults to the last text layer.

    The random model's special-token logits are zeroed so greedy answers run to max_tokens; with
    `always_eos` every logit is equal, so greedy decoding emits `<|eot_id|>` (id 0) at once.
    """
    import torch
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
    )

    tokenizer = build_tokenizer(extra_words)
    text_vocab = len(tokenizer) - 1  # everything but <|image|>
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>")]
    config = MllamaConfig(
        text_config={
            "vocab_size": text_vocab,
            "hidden_size": hidden_size,
            "num_hidden_layers": text_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "intermediate_size": intermediate_size,
            "cross_attention_layers": cross_attention_layers or [text_layers - 1],
            "max_position_embeddings": 4096,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos_ids,
            "pad_token_id": tokenizer.pad_token_id,
            "initializer_range": 0.5,
        },
        vision_config={
            "hidden_size": vision_hidden,
            "num_hidden_layers": vision_layers,
            "num_global_layers": 1,
            "attention_heads": 2,
            "intermediate_size": vision_hidden * 2,
            "image_size": image_size,
            "patch_size": 14,
            "max_num_tiles": 4,
            "intermediate_layers_indices": [0],
            "vision_output_dim": vision_hidden * 2,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"),
    )
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        lm_head = model.get_output_embeddings().weight
        specials = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        lm_head[specials] = 0.0
        if always_eos:
            lm_head.zero_()
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    image_processor = MllamaImageProcessor(
        size={"height": image_size, "width": image_size}, max_image_tiles=4, do_convert_rgb=True
    )
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root)
    processor.save_pretrained(root)
    return root
