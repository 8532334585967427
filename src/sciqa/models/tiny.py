"""Tiny models of the real architectures (2 layers, a sample BPE, a fixed seed), built offline: noise to test code."""
import json
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sciqa.data import SAMPLE_DIR
from sciqa.files import build_folder, cache_root, digest
from sciqa.models.qwen2_vl import Qwen2VLImageOnlyProcessor

VOCAB = 1000
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=4096)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
              patch_size=14)

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
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def tiny_recipe(name: str) -> str:
    """Any edit of this file or of the sample is a new recipe."""
    return digest(Path(__file__).read_bytes(), (SAMPLE_DIR / "problems.json").read_bytes(), name)[:12]


def tiny_model_path(name: str) -> Path:
    return build_folder(cache_root() / "tiny" / f"{name}-{tiny_recipe(name)}", BUILDERS[name], "config.json")


def _train_bpe(specials: list[str], metaspace: bool = False):
    """BPE on the sample's text: byte-level (Qwen) or metaspace with byte fallback (Llama, Gemma)."""
    texts = ['{"answer": "", "solution": ""}', "Question: Task: Choices: Hint: Lecture: Solution: Instruction:"]
    for p in json.loads((SAMPLE_DIR / "problems.json").read_text()).values():
        texts += [p["question"], " ".join(p["choices"]), p["hint"], p["lecture"], p["solution"]]
    tok = Tokenizer(models.BPE())
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        specials, alphabet = specials + [f"<0x{i:02X}>" for i in range(256)], []
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB + (256 if metaspace else 0), initial_alphabet=alphabet,
                                  special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return tok.get_vocab(), [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def _save(folder: Path, model_class, config, processor) -> None:
    """Random weights from the fixed seed; the generation config takes its token ids from ``config``."""
    torch.manual_seed(1234)
    model_class(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def _ids(tok, bos: str, eos: str, pad: str) -> dict[str, int]:
    return {f"{k}_token_id": tok.convert_tokens_to_ids(t) for k, t in (("bos", bos), ("eos", eos), ("pad", pad))}


def build_qwen2_vl(folder: Path) -> None:
    vocab, merges = _train_bpe(QWEN_SPECIALS)
    tok = tf.Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>", additional_special_tokens=QWEN_SPECIALS[1:])
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    processor = Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE)
    ids, token = _ids(tok, "<|endoftext|>", "<|im_end|>", "<|endoftext|>"), tok.convert_tokens_to_ids
    config = tf.Qwen2VLConfig(
        text_config=dict(TEXT, vocab_size=len(tok), num_key_value_heads=2,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **ids),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"), **ids)
    _save(folder, tf.Qwen2VLForConditionalGeneration, config, processor)


def build_llava(folder: Path) -> None:
    vocab, merges = _train_bpe(["<unk>", "<s>", "</s>", "<image>", "<pad>"], metaspace=True)
    tok = tf.LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<pad>", add_bos_token=True, additional_special_tokens=["<image>"])
    image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = tf.LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                  vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                  chat_template=LLAVA_TEMPLATE)
    ids = _ids(tok, "<s>", "</s>", "<pad>")
    config = tf.LlavaConfig(
        vision_config=dict(VISION, model_type="clip_vision_model"),
        text_config=dict(TEXT, model_type="llama", vocab_size=len(tok), num_key_value_heads=2, **ids),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_seq_length=4, vision_feature_layer=-1,
        pad_token_id=ids["pad_token_id"])
    _save(folder, tf.LlavaForConditionalGeneration, config, processor)


def build_paligemma(folder: Path) -> None:
    """The processor adds PaliGemma's location and segmentation tokens: the config is sized after it."""
    vocab, merges = _train_bpe(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<image>"], metaspace=True)  # Gemma's 0-4
    tok = tf.GemmaTokenizer(vocab=vocab, merges=merges)
    image_processor = tf.SiglipImageProcessorPil(size={"height": 28, "width": 28}, image_seq_length=4)
    processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    ids = _ids(tok, "<bos>", "<eos>", "<pad>")
    config = tf.PaliGemmaConfig(
        vision_config=dict(VISION, model_type="siglip_vision_model"),
        text_config=dict(TEXT, model_type="gemma", vocab_size=len(tok), num_key_value_heads=1, head_dim=16,
                         initializer_range=0.1, **ids),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=64, hidden_size=64,
        vocab_size=len(tok), **ids,
        # Gemma scales embeddings by sqrt(hidden): tied 0.02-wide random weights make greedy outputs ignore the prompt.
        tie_word_embeddings=False)
    _save(folder, tf.PaliGemmaForConditionalGeneration, config, processor)


BUILDERS = {"tiny-qwen2-vl": build_qwen2_vl, "tiny-llava": build_llava, "tiny-paligemma": build_paligemma}
