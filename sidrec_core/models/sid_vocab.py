"""SID vocabulary: a real Hugging Face tokenizer with one token per (level, code).

As in TIGER (Rajput et al., 2023, "Recommender Systems with Generative Retrieval") and
MiniOneRec, an item is the token sequence of its semantic ID, level-prefixed so that the same code
at different levels is a different token: ``<a_12><b_7><c_200>`` (+ ``<d_0>`` for a
de-duplication level). For a model trained from scratch the base vocabulary is a tiny WordLevel
model holding only the specials and the words of the chat template; for a pretrained base model
it is that model's own tokenizer. In both cases the SID tokens are *added tokens*, so they are
matched anywhere in a text and never split, and the object saves/loads with
``save_pretrained`` / ``from_pretrained``.

:class:`PromptFormat` turns a history of items into token ids by id arithmetic around a prefix and
a suffix that are cut out of the rendered chat template once, so training and generation use the
exact template string without rendering Jinja per example.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from sidrec_core.io import reading, write_json
from sidrec_core.sid.table import SIDTable, token

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML, as Qwen2 uses; newlines are whitespace for the scratch WordLevel pre-tokenizer.
CHAT_TEMPLATE = (
    "{% for m in messages %}" + IM_START + "{{ m['role'] }}\n{{ m['content'] }}" + IM_END + "\n"
    "{% endfor %}{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
)
DEFAULT_SYSTEM_PROMPT = "Recommend the next item the user will buy, given the items they bought."
_MARKER = "SIDHISTORYMARKER"
VOCAB_FILE = "sid_vocab.json"


def sid_tokens(codebook_sizes: tuple[int, ...] | list[int]) -> list[str]:
    """All SID tokens, level-major: ``<a_0> .. <a_{K_0-1}> <b_0> ..``."""
    return [token(level, code) for level, size in enumerate(codebook_sizes) for code in range(size)]


def _scratch_base(system_prompt: str) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the specials and the words of the chat template and prompt."""
    pre = pre_tokenizers.Whitespace()
    words = [w for w, _ in pre.pre_tokenize_str(f"system user assistant {system_prompt}")]
    vocab: dict[str, int] = {}
    for word in [PAD, UNK, BOS, EOS, *words]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_sid_tokenizer(
    codebook_sizes: tuple[int, ...],
    base: str | Path | None = None,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> PreTrainedTokenizerBase:
    """Scratch tokenizer (``base=None``) or the local base model's tokenizer, plus the SID tokens.

    A base tokenizer without pad/bos/chat template gets ours, so every task can be formatted.
    """
    if base is None:
        tok = _scratch_base(system_prompt)
    else:
        if not Path(base).exists():
            raise FileNotFoundError(
                f"sidlm.checkpoint: local checkpoint path {base} does not exist"
            )
        tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        if tok.bos_token is None:
            # Many decoder LMs (Qwen2) have no BOS; the pretrain stream needs a start symbol.
            tok.add_special_tokens({"bos_token": BOS})
        if not tok.chat_template:
            tok.chat_template = CHAT_TEMPLATE
    existing = tok.get_vocab()
    clash = [t for t in sid_tokens(codebook_sizes) if t in existing]
    if clash:
        raise ValueError(
            f"sidlm.checkpoint: base tokenizer already has SID-like tokens {clash[:3]}; "
            "point it at a base model without SID tokens"
        )
    tok.add_tokens(
        [AddedToken(t, normalized=False, special=False) for t in sid_tokens(codebook_sizes)]
    )
    return tok


@dataclasses.dataclass
class SIDVocab:
    """A tokenizer plus the codebook sizes it was built for.

    ``level_token_ids[l]`` [K_l]: token id of code c of level l at position c (the beam module's
    view); ``item_token_ids(table)`` [N + 1, M]: token ids of each item's SID (row 0 = pad id).
    """

    tokenizer: PreTrainedTokenizerBase
    codebook_sizes: tuple[int, ...]

    @classmethod
    def build(
        cls,
        codebook_sizes: tuple[int, ...],
        base: str | Path | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ) -> SIDVocab:
        return cls(
            build_sid_tokenizer(tuple(codebook_sizes), base, system_prompt), tuple(codebook_sizes)
        )

    def __post_init__(self) -> None:
        ids = self.tokenizer.convert_tokens_to_ids(sid_tokens(self.codebook_sizes))
        unk = self.tokenizer.unk_token_id
        if any(i is None or (unk is not None and i == unk) for i in ids):
            raise ValueError(
                "tokenizer lacks some SID tokens of codebook sizes "
                f"{list(self.codebook_sizes)}: rebuild the SID tokenizer"
            )
        self._ids = np.asarray(ids, dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self.codebook_sizes)])

    def __len__(self) -> int:
        return len(self.tokenizer)

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def level_token_ids(self) -> list[torch.Tensor]:
        return [
            torch.as_tensor(self._ids[self._offsets[i] : self._offsets[i + 1]])
            for i in range(self.num_levels)
        ]

    def check_table(self, table: SIDTable) -> None:
        """Fail naming the parameter when ``table`` was not built with these codebook sizes."""
        if tuple(table.codebook_sizes) != self.codebook_sizes:
            raise ValueError(
                f"sidlm.sid_dir: SID table has codebook sizes {list(table.codebook_sizes)} but the "
                f"tokenizer/model vocabulary was built for {list(self.codebook_sizes)}; retrain "
                "the model on this SID table or point sidlm.sid_dir at the table it was trained on"
            )

    def item_token_ids(self, table: SIDTable) -> np.ndarray:
        """SID token ids of every item -> int64 [N + 1, M]; row 0 (padding) is the pad id."""
        self.check_table(table)
        codes = table.codes.copy()
        out = self._ids[self._offsets[:-1][None, :] + np.clip(codes, 0, None)]
        out[0] = self.tokenizer.pad_token_id
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(str(directory))
        write_json(directory / VOCAB_FILE, {"codebook_sizes": list(self.codebook_sizes)})

    @classmethod
    def load(cls, directory: str | Path) -> SIDVocab:
        directory = Path(directory)
        if not (directory / VOCAB_FILE).exists():
            raise FileNotFoundError(
                f"{directory / VOCAB_FILE} not found: not a trained sidlm folder"
            )
        remedy = "re-run the stage that wrote the folder (dvc repro train_sidlm)"
        with reading(directory / VOCAB_FILE, remedy):
            sizes = tuple(json.loads((directory / VOCAB_FILE).read_text())["codebook_sizes"])
        with reading(directory, remedy):  # the tokenizer files and config.json
            tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        return cls(tokenizer, sizes)


@dataclasses.dataclass(frozen=True)
class PromptFormat:
    """Token ids around the history: ``prefix + SID tokens of history + suffix`` is the prompt,
    ``answer SID tokens + answer_end`` the labelled answer (``sft``); ``pretrain`` is
    ``[bos] + stream`` with no suffix."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    answer_end: tuple[int, ...]

    @classmethod
    def for_task(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        task: str,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ) -> PromptFormat:
        if task == "pretrain":
            return cls((tokenizer.bos_token_id,), (), ())
        messages = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": _MARKER},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(_MARKER) != 1:
            raise ValueError("the tokenizer's chat template must render the user content once")
        head, tail = text.split(_MARKER)

        def enc(s: str) -> tuple[int, ...]:
            return tuple(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else ()

        end = tokenizer.convert_tokens_to_ids(IM_END) if IM_END in tokenizer.get_vocab() else None
        return cls(enc(head), enc(tail), (end,) if end is not None else (tokenizer.eos_token_id,))

    def prompt(self, history_tokens: np.ndarray) -> list[int]:
        """``history_tokens`` [L', M] SID token ids (no padding rows) -> prompt ids."""
        return [*self.prefix, *history_tokens.reshape(-1).tolist(), *self.suffix]
