"""A word-level CLIP-style tokenizer over the shapes vocabulary, saved as ``PreTrainedTokenizerFast``.

Why not ``CLIPTokenizer``: on transformers 5 ``CLIPTokenizer(vocab_file=…)`` ignores the files, and a
folder whose config names ``CLIPTokenizer`` loads a byte-level BPE that maps our words to ``<unk>``.
Run: ``python -m ldm_lightning.shapes.tokenizer --out DIR``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from ldm_lightning.shapes.data import VOCABULARY

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<unk>"
MAX_LENGTH = 16  # longest caption ("on the right , a large purple triangle") is 10 tokens with BOS/EOS


def build_tokenizer(max_length: int = MAX_LENGTH, vocabulary: Sequence[str] = VOCABULARY) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``vocabulary`` (the single-shape words by default; ``scene_caption.
    SCENE_VOCABULARY`` for scenes): lowercase, split on whitespace and punctuation, ``BOS … EOS``, pad = EOS.

    Special tokens take the last ids, as in CLIP (49406/49407). This also keeps the EOS id away from 2,
    which ``CLIPTextTransformer`` treats as the legacy signal to pool at ``input_ids.argmax()``.
    """
    vocab = {word: i for i, word in enumerate(vocabulary)}
    for token in (UNK, BOS, EOS):
        vocab[token] = len(vocab)
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        model_max_length=max_length,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


def main() -> None:
    """CLI: build the tokenizer and ``save_pretrained`` it into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to save the tokenizer into")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="model_max_length")
    args = parser.parse_args()
    tokenizer = build_tokenizer(args.max_length)
    tokenizer.save_pretrained(args.out)
    print(f"saved {len(tokenizer)} tokens, max length {args.max_length} to {args.out}")


if __name__ == "__main__":
    main()
