"""Training and evaluation examples for the SID language model, streamed from JSONL.

Two tasks (after TIGER's sequence format and MiniOneRec's instruction SFT):

- ``pretrain``: a user's items as one SID token stream ``<bos> <a_..><b_..><c_..> <a_..>..``,
  loss on every item token (each position predicts the next item's codes, so one stream trains
  all prefixes at once). Long sequences are cut into windows of ``max_history + 1`` items.
  The window's first item is then learned from ``<bos>`` alone, an unconditional popularity
  target that per-prefix rows (TIGER) never train; ``first_item_targets=False`` leaves it
  unlabelled, and drops the rows that would have no target left (one-item windows).
- ``sft``: the tokenizer's chat template (system / user with the history / assistant with the
  target SID), loss on the answer only, one example per prefix of the training part (sliding
  window of ``max_history`` items).

Examples live in a JSONL file (one row: ``user``, ``user_index``, ``history``, ``target``) that
:class:`JsonlExamples` streams line by line (never loading it whole), sharded over processes and
loader workers, with a seeded shuffle buffer. Extra fields in a row pass through untouched, so
the prediction writer can keep them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from sidrec_core.data.split import LeaveOneOut
from sidrec_core.io import atomic_path

IGNORE = -100
TASKS = ("pretrain", "sft")


def training_rows(
    loo: LeaveOneOut, task: str, max_history: int, first_item_targets: bool = True
) -> Iterator[dict[str, Any]]:
    """Rows of the training part ``s_1..s_{n-2}`` of every user (see module docstring)."""
    if task not in TASKS:
        raise ValueError(f"sidlm.task: expected one of {list(TASKS)}, got {task!r}")
    user_ids = loo.dataset.user_ids
    for u, seq in enumerate(loo.train_sequences):
        seq = [int(x) for x in seq]
        if task == "pretrain":
            # Windows of max_history + 1 items ending at the last item, overlapping by one item so
            # every item is predicted once with context.
            for end in range(len(seq), 0, -max_history):
                window = seq[max(0, end - max_history - 1) : end]
                if len(window) > 1 or first_item_targets:
                    yield {
                        "user": user_ids[u],
                        "user_index": u,
                        "history": window[:-1],
                        "target": window[-1],
                    }
                if end - max_history - 1 <= 0:
                    break
        else:
            for t in range(1, len(seq)):
                yield {
                    "user": user_ids[u],
                    "user_index": u,
                    "history": seq[max(0, t - max_history) : t],
                    "target": seq[t],
                }


def split_rows(loo: LeaveOneOut, split: str, max_history: int) -> Iterator[dict[str, Any]]:
    """Rows of a ``valid``/``test`` split (history capped at ``max_history``)."""
    s = loo.split(split, max_history)
    for i in range(len(s)):
        u = int(s.users[i])
        yield {
            "user": loo.dataset.user_ids[u],
            "user_index": u,
            "history": [int(x) for x in s.histories[i] if x > 0],
            "target": int(s.targets[i]),
        }


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Stream ``rows`` into a JSONL file atomically (temp file + rename); returns the row count."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


class ExampleEncoder:
    """Rows -> token ids. ``item_tokens`` [N + 1, M] (from ``SIDVocab.item_token_ids``);
    ``first_item_targets``: label a pretrain stream's first item (see module docstring)."""

    def __init__(
        self,
        item_tokens: np.ndarray,
        fmt: Any,
        task: str,
        max_history: int,
        first_item_targets: bool = True,
    ):
        if task not in TASKS:
            raise ValueError(f"sidlm.task: expected one of {list(TASKS)}, got {task!r}")
        self.item_tokens, self.fmt, self.task, self.max_history = (
            item_tokens,
            fmt,
            task,
            max_history,
        )
        self.first_item_targets = first_item_targets
        self.num_items = item_tokens.shape[0] - 1

    @property
    def rows_task(self) -> str:
        """The :func:`training_rows` layout these examples are made from."""
        return self.task

    @property
    def pad_side(self) -> str:
        """Training batches pad here (see :func:`collate`)."""
        return "left" if self.task == "sft" else "right"

    def _tokens(self, items: list[int]) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        if items.size and (items.min() < 1 or items.max() > self.num_items):
            raise ValueError(
                f"item id out of range 1..{self.num_items} in an example; "
                "the SID table does not match the dataset"
            )
        return self.item_tokens[items].reshape(len(items), self.item_tokens.shape[1])

    def prompt(self, history: list[int]) -> list[int]:
        """Generation prompt for a history (oldest first). An empty history gives the bare prefix
        (``<bos>`` or the empty user turn): the model then recommends from its learned
        unconditional next-item distribution."""
        return self.fmt.prompt(self._tokens(list(history)[-self.max_history :]))

    def train_example(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """``{"input_ids": [T], "labels": [T]}``; labels align with ids (HF convention)."""
        if self.task == "pretrain":
            stream = self._tokens([*row["history"], row["target"]]).reshape(-1).tolist()
            prefix = list(self.fmt.prefix)
            # the first item's M tokens, predicted from the prefix alone
            unlabelled = len(prefix) + (0 if self.first_item_targets else self.item_tokens.shape[1])
            labels = [IGNORE] * unlabelled + stream[unlabelled - len(prefix) :]
            return {"input_ids": prefix + stream, "labels": labels}
        prompt = self.prompt(row["history"])
        answer = self._tokens([row["target"]]).reshape(-1).tolist() + list(self.fmt.answer_end)
        return {"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer}


class Seq2SeqExampleEncoder(ExampleEncoder):
    """Examples of the encoder-decoder SID LM: the task's prompt is the encoder input, the
    target's M SID tokens the labels. Rows are always per prefix (``sft`` rows; see
    :mod:`sidrec_core.models.sidlm_seq2seq`) and padded left, as generation prompts are."""

    @property
    def rows_task(self) -> str:
        return "sft"

    @property
    def pad_side(self) -> str:
        return "left"

    def train_example(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """``{"input_ids": [T] prompt, "labels": [M] target SID tokens}``."""
        return {
            "input_ids": self.prompt(row["history"]),
            "labels": self._tokens([row["target"]]).reshape(-1).tolist(),
        }


class JsonlExamples(IterableDataset):
    """Stream a JSONL examples file: shard (process x worker), shuffle buffer, encode.

    ``rank``/``world_size`` split lines across data-parallel processes (line i goes to
    ``i % world == rank``); ``set_epoch`` reseeds the shuffle so every epoch differs.
    """

    def __init__(
        self,
        path: str | Path,
        encoder: ExampleEncoder | None = None,
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.path, self.encoder = Path(path), encoder
        if not self.path.exists():
            raise FileNotFoundError(f"examples file {self.path} not found")
        self.shuffle_buffer, self.seed, self.rank, self.world_size = (
            shuffle_buffer,
            seed,
            rank,
            world_size,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shards, shard = self.world_size * workers, self.rank * workers + worker
        with self.path.open() as f:
            for i, line in enumerate(f):
                if i % shards == shard and line.strip():
                    yield json.loads(line)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rows: Iterable[dict[str, Any]] = self._rows()
        if self.shuffle_buffer > 1:
            rows = _shuffled(
                rows, self.shuffle_buffer, random.Random(self.seed * 1_000_003 + self.epoch)
            )
        for row in rows:
            yield row if self.encoder is None else {**row, **self.encoder.train_example(row)}


def _shuffled(rows: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    buffer: list[Any] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = row
    rng.shuffle(buffer)
    yield from buffer


def length_grouped(
    examples: Iterable[dict[str, Any]], batch_size: int, group: int = 50, seed: int = 0
) -> Iterator[list[dict[str, Any]]]:
    """Batches of similar length: sort each window of ``group`` batches by length and emit its
    batches in random order. On CPU this cuts padding (and step time) by about half on Beauty."""
    rng = random.Random(seed)
    window: list[dict[str, Any]] = []

    def flush() -> Iterator[list[dict[str, Any]]]:
        window.sort(key=lambda e: len(e["input_ids"]))
        chunks = [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
        rng.shuffle(chunks)
        yield from chunks
        window.clear()

    for ex in examples:
        window.append(ex)
        if len(window) >= batch_size * group:
            yield from flush()
    if window:
        yield from flush()


def pad(seqs: list[list[int]], value: int, side: str) -> torch.Tensor:
    """Pad lists of ids to [B, T] on the ``left`` (generation) or ``right`` (training)."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            if side == "left":
                out[i, width - len(s) :] = torch.as_tensor(s)
            else:
                out[i, : len(s)] = torch.as_tensor(s)
    return out


def collate(
    features: list[dict[str, Any]], pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Training batch: ``input_ids``, ``attention_mask``, ``position_ids``, ``labels`` [B, T].

    ``pretrain`` pads right (streams start at position 0); ``sft`` pads left so every answer ends
    at the last column, which lets LM-head slicing skip nearly the whole prompt.
    """
    ids = pad([f["input_ids"] for f in features], pad_id, side)
    mask = pad([[1] * len(f["input_ids"]) for f in features], 0, side)
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}
    if "labels" in features[0]:
        batch["labels"] = pad([f["labels"] for f in features], IGNORE, side)
    return batch


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift RoPE -> [B, T]."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
