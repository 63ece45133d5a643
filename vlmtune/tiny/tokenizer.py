"""The one offline tokenizer trainer: a byte-level BPE over the synthetic data's words, saved as a fast tokenizer.

Every tiny tokenizer comes from `train_tokenizer` (the chatml one the tiny LLMs share, and each tiny HF VLM's own,
with that architecture's special tokens), so they split the demo's words the same way.
"""

from __future__ import annotations

from pathlib import Path

# Special tokens of the chatml tokenizer the tiny LLMs share: turn markers (they match the chatml template), padding,
# end of text and the image placeholder that processors expand.
SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>"]


def corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: the synthetic data's words plus common chat words."""
    colors = ["red", "green", "blue", "yellow", "purple", "white", "black", "orange"]
    shapes = ["circle", "square", "triangle", "shape", "shapes"]
    lines = [
        f"What color is the {s}? How many {c} shapes are there? Is the {s} left or right of the {t}?"
        for s in shapes for t in shapes for c in colors
    ]
    lines += [f"a {c} {s}, a {d} {t} and a {c} {t}." for c in colors for d in colors for s in shapes for t in shapes]
    lines += ["What shape is on the left? What shape is on the right? Describe the image. " * 2]
    lines += ["0 1 2 3 4 5 6 7 8 9 10 yes no left right the a an is are there of in on image picture photo"]
    lines += ["You are a helpful assistant. Answer with a single word. user assistant system"]
    # Words alone on a line too: an answer starts right after "assistant\n", without a leading space, and should be
    # one token rather than fragments.
    lines += [*colors, *shapes, "left", "right", "yes", "no", *map(str, range(11))]
    return lines


def train_tokenizer(special_tokens: list[str], *, bos: str | None, eos: str, pad: str, prepend_bos: bool = False,
                    extra_text: tuple[str, ...] = (), vocab_size: int = 600, model_max_length: int = 512,
                    chat_template: str | None = None):
    """A byte-level BPE trained offline on `corpus()` (+ `extra_text`), as a `PreTrainedTokenizerFast`.

    `special_tokens` (bos, eos and pad among them) take the first ids, in the given order. With `prepend_bos`, every
    encoded text starts with `bos`, as with Llama tokenizers (chat templates must then not write a second one).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([*corpus(), *extra_text], trainer=trainer)
    if prepend_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    others = [t for t in special_tokens if t not in (bos, eos, pad)]
    template = {} if chat_template is None else {"chat_template": chat_template}  # None would be saved as null
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=bos, eos_token=eos, pad_token=pad,
                                   additional_special_tokens=others, model_max_length=model_max_length, **template)


def write_tokenizer(out_dir: Path) -> None:
    """The chatml tokenizer the tiny LLMs share (no BOS; `<|im_end|>` ends a turn), with vlmtune's chatml template."""
    from vlmtune.templates import CHATML

    train_tokenizer(SPECIAL_TOKENS, bos=None, eos="<|im_end|>", pad="<pad>", chat_template=CHATML).save_pretrained(
        out_dir)
