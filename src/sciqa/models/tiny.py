"""Tiny models of the real architectures, built offline and deterministically.

No hub is reachable in tests or CI, so we build a 2-layer, ~64-wide model of each family from a
fixed seed, with a byte-level BPE trained on the bundled sample, the family's own tokenizer
class, special tokens, chat template and PIL image processor. Built once, cached under a folder
keyed by a hash of the recipe, and then loaded like any local model folder. Outputs are noise:
they prove the machinery, not the science.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sciqa.data.sources import SAMPLE_DIR
from sciqa.files import build_folder, cache_root

SEED = 1234
VOCAB = 1000
RECIPE_VERSION = "1"

QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
PALIGEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<image>"]  # Gemma's ids 0-4


def tiny_recipe(name: str) -> str:
    src = Path(__file__).read_bytes() + (SAMPLE_DIR / "problems.json").read_bytes()
    return hashlib.sha256(src + name.encode() + RECIPE_VERSION.encode()).hexdigest()[:12]


def tiny_model_path(name: str) -> Path:
    """Build the tiny model once (atomically: temp folder, then rename) and return its folder."""
    return build_folder(cache_root() / "tiny" / f"{name}-{tiny_recipe(name)}", BUILDERS[name], "config.json")


def _train_bpe(specials: list[str], metaspace: bool = False):
    """BPE on the sample's own text, deterministic for a fixed corpus: byte-level (Qwen) or
    metaspace with byte fallback (Llama, as LlamaTokenizer decodes it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    problems = json.loads((SAMPLE_DIR / "problems.json").read_text())
    texts = []
    for p in problems.values():
        texts += [p["question"], " ".join(p["choices"]), p["hint"], p["lecture"], p["solution"]]
    texts += ['{"answer": "", "solution": ""}', "Question: Task: Choices: Hint: Lecture: Solution: Instruction:"]
    tok = Tokenizer(models.BPE())
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        specials = specials + [f"<0x{i:02X}>" for i in range(256)]
        alphabet = []
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB + (256 if metaspace else 0), initial_alphabet=alphabet,
                                  special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return tok.get_vocab(), merges


def _save(folder: Path, model, processor) -> None:
    """Save the parts one by one: a processor with no video processor cannot save itself whole."""
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(processor.chat_template)
    extra = {k: getattr(processor, k) for k in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens") if hasattr(processor, k)}
    if extra:
        (folder / "processor_config.json").write_text(json.dumps(dict(extra, processor_class=type(processor).__name__)))


def _seeded_model(model_class, config, eos: int, pad: int):
    """The model from the fixed seed, generating until its end-of-turn token with its own padding."""
    import torch

    torch.manual_seed(SEED)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    return model


def build_qwen2_vl(folder: Path) -> None:
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from sciqa.models.qwen2_vl import image_only_processor_class

    vocab, merges = _train_bpe(QWEN_SPECIALS)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    tok.chat_template = QWEN_TEMPLATE
    processor = image_only_processor_class()(image_processor=image_processor, tokenizer=tok,
                                             chat_template=QWEN_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    model = _seeded_model(Qwen2VLForConditionalGeneration, config, ids["<|im_end|>"], ids["<|endoftext|>"])
    _save(folder, model, processor)


def build_llava(folder: Path) -> None:
    from transformers import (
        CLIPImageProcessorPil,
        LlamaTokenizer,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vocab, merges = _train_bpe(LLAVA_SPECIALS, metaspace=True)
    tok = LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                         pad_token="<pad>", add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                         pad_token_id=ids["<pad>"]),
        image_token_index=ids["<image>"], image_seq_length=4, vision_feature_layer=-1,
        pad_token_id=ids["<pad>"],
    )
    model = _seeded_model(LlavaForConditionalGeneration, config, ids["</s>"], ids["<pad>"])
    _save(folder, model, processor)


def build_paligemma(folder: Path) -> None:
    """GemmaTokenizer (its BPE with byte fallback over "▁"-joined text: a metaspace BPE fits it),
    SigLIP's PIL image processor at 28 px, 4 image tokens. The processor adds PaliGemma's 1,152
    location and segmentation tokens to the vocabulary, so the config is sized after it."""
    from transformers import (
        GemmaTokenizer,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    vocab, merges = _train_bpe(PALIGEMMA_SPECIALS, metaspace=True)
    tok = GemmaTokenizer(vocab=vocab, merges=merges)
    image_processor = SiglipImageProcessorPil(size={"height": 28, "width": 28}, image_seq_length=4)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in PALIGEMMA_SPECIALS}
    special = dict(bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=ids["<pad>"])
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(model_type="gemma", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                         max_position_embeddings=4096, initializer_range=0.1, **special),
        image_token_index=ids["<image>"], projection_dim=64, hidden_size=64, vocab_size=len(tok), **special,
        # Gemma scales embeddings by sqrt(hidden): with tied, 0.02-wide random weights the last token drowns
        # the rest and greedy outputs hardly depend on the prompt (a tied one echoes "\n" for ever).
        tie_word_embeddings=False,
    )
    model = _seeded_model(PaliGemmaForConditionalGeneration, config, ids["<eos>"], ids["<pad>"])
    model.save_pretrained(folder)
    processor.save_pretrained(folder)  # no chat template and no video processor: it saves whole


BUILDERS = {"tiny-qwen2-vl": build_qwen2_vl, "tiny-llava": build_llava, "tiny-paligemma": build_paligemma}
