"""Constrained / dynamic beam search speed vs transformers' generate with prefix_allowed_tokens_fn.

Same Qwen2 model, same prompts, same width W (20 and 50): our batched constrained beam
(:func:`sidrec_core.models.beam.generate_sids`) against ``model.generate(num_beams=W,
num_return_sequences=W, prefix_allowed_tokens_fn=<trie lookup>)``, the way TIGER / MiniOneRec
style code constrains decoding. Reports users/second, the share of users whose top-10 items are
identical (ordered, and as a set), invalid-SID rates, and the dynamic beam's candidate count and
cost relative to the plain and constrained beams at the same B (and at B = 100, 1,200 candidates,
without generate). All methods run interleaved batch by batch on the same users, so load changes
on the shared CPU hit them alike; timings include the prompt forward.

Model: a scratch Qwen2 the size a CPU SID LM uses (hidden 128, 4 layers, 4 heads, the ``sidlm``
defaults) with RANDOM weights (seeded; the LM head is scaled up so next-token distributions are
peaked like a trained model's instead of near-uniform, which would make top-10 ties common).
Speed does not depend on the weights. Prompts: ``<bos>`` + the SID tokens of each test user's
last 20 items (Beauty, leave-one-out) when ``data/prepared`` exists, else random histories.
SID table: ``--codes`` (default ``data/sids/codes.npy``, rows 1.. = items) if present, else a
random unique 3 x 256 table over 12,101 items.

Usage (CPU is shared, so one thread)::

    OMP_NUM_THREADS=1 python bench/perf/beam_perf.py --out experiments/perf/beam_perf.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from sidrec_core.io import write_json
from sidrec_core.models.beam import DecodingConfig, PrefixTable, candidates_to_items, generate_sids
from sidrec_core.perf import provenance

NUM_SPECIAL = 3  # pad 0, bos 1, eos 2; level l code c -> NUM_SPECIAL + offset_l + c


def load_codes(path: Path, num_items: int, seed: int) -> tuple[np.ndarray, tuple[int, ...], str]:
    """[N, M] codes (row i = item i + 1), codebook sizes, and where they came from."""
    if path.exists():
        codes = np.load(path)[1:]
        meta = path.parent / "meta.json"
        sizes = (
            tuple(json.loads(meta.read_text())["codebook_sizes"])
            if meta.exists()
            else tuple(int(c) + 1 for c in codes.max(0))
        )
        return codes, sizes, str(path)
    rng = np.random.default_rng(seed)
    flat = rng.choice(256**3, size=num_items, replace=False)
    codes = np.stack([flat // 65536, flat // 256 % 256, flat % 256], 1)
    return codes, (256, 256, 256), f"random unique 3x256 table over {num_items} items"


def load_histories(prepared: Path, num_items: int, users: int, seed: int) -> tuple[list, str]:
    if (prepared / "dataset.npz").exists():
        from sidrec_core.data.dataset import load_prepared
        from sidrec_core.data.split import leave_one_out

        ds = load_prepared(prepared)
        if ds.num_items == num_items:
            split = leave_one_out(ds).split("test", 20)
            rows = [[int(x) for x in h if x > 0] for h in split.histories[:users]]
            return rows, f"{prepared} test split, last 20 items"
    rng = np.random.default_rng(seed)
    rows = [rng.integers(1, num_items + 1, size=rng.integers(3, 21)).tolist() for _ in range(users)]
    return rows, "random histories (prepared data missing or of another size)"


def build_prompts(histories: list, codes: np.ndarray, offsets: np.ndarray):
    seqs = [
        [1] + (codes[np.asarray(h) - 1] + offsets + NUM_SPECIAL).reshape(-1).tolist()
        for h in histories
    ]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):  # left padding
        ids[i, width - len(s) :], mask[i, width - len(s) :] = torch.tensor(s), 1
    return ids, mask


def make_model(vocab: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    lm = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(20.0)
    return lm


def trie_fn(codes: np.ndarray, tokens: list[torch.Tensor], prompt_len: int):
    """prefix_allowed_tokens_fn over a dict trie: generated-token prefix -> allowed token ids."""
    sid_tokens = np.stack([tokens[lvl].numpy()[codes[:, lvl]] for lvl in range(codes.shape[1])], 1)
    trie: dict[tuple, set] = {}
    for row in sid_tokens.tolist():
        for lvl in range(len(row)):
            trie.setdefault(tuple(row[:lvl]), set()).add(row[lvl])
    trie = {k: sorted(v) for k, v in trie.items()}

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        return trie.get(tuple(sent[prompt_len:].tolist()), [])

    return allowed


def ours(lm, tokens, cfg, table):
    """Batch decoder with our beam: (ids [b, T], mask [b, T]) -> (codes [b, C, M], scores)."""

    def decode(ids, mask):
        out = generate_sids(lm, ids, mask, tokens, cfg, table)
        return out.codes, out.scores

    return decode


def hf_generate(lm, tokens, width, fn_codes, prompt_len):
    """The same with transformers' generate + prefix_allowed_tokens_fn (a dict trie)."""
    num_levels = len(tokens)
    fn = trie_fn(fn_codes, tokens, prompt_len)
    inverse = torch.full((int(max(t.max() for t in tokens)) + 1,), -1, dtype=torch.long)
    for t in tokens:
        inverse[t] = torch.arange(t.numel())

    def decode(ids, mask):
        gen = lm.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=width,
            num_return_sequences=width,
            max_new_tokens=num_levels,
            do_sample=False,
            prefix_allowed_tokens_fn=fn,
            pad_token_id=0,
            eos_token_id=None,
            output_scores=True,
            return_dict_in_generate=True,
        )
        seq = gen.sequences[:, prompt_len:].reshape(-1, width, num_levels)
        # generate divides by length ** length_penalty (1.0); SIDs all have length M
        return inverse[seq], gen.sequences_scores.reshape(-1, width) * num_levels

    return decode


def run_interleaved(methods: dict, ids, mask, batch_size):
    """Run every method on each batch in turn, so load changes on the shared CPU hit all alike.

    Returns {name: (codes, scores, seconds)}.
    """
    outs = {name: ([], [], 0.0) for name in methods}
    for i in range(0, len(ids), batch_size):
        for name, decode in methods.items():
            start = time.perf_counter()
            codes, scores = decode(ids[i : i + batch_size], mask[i : i + batch_size])
            sec = time.perf_counter() - start
            c, s, t = outs[name]
            outs[name] = ([*c, codes], [*s, scores], t + sec)
    return {k: (torch.cat(c), torch.cat(s), t) for k, (c, s, t) in outs.items()}


class _Out:
    def __init__(self, codes, scores):
        self.codes, self.scores = codes, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="experiments/perf/beam_perf.json")
    ap.add_argument("--codes", default="data/sids/codes.npy")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--num-items", type=int, default=12101)
    ap.add_argument("--widths", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--users", type=int, default=256, help="test users decoded by every method")
    ap.add_argument(
        "--extra-widths",
        type=int,
        nargs="*",
        default=[100],
        help="widths run without transformers' generate (dynamic at B = 100)",
    )
    ap.add_argument("--extra-users", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    # decoding only: without this every decode step of ours would record an autograd graph
    # (generate_sids leaves grad mode to its caller), costing time and tens of GiB at width 50
    torch.set_grad_enabled(False)
    made = provenance(args.threads)

    codes, sizes, codes_src = load_codes(Path(args.codes), args.num_items, args.seed)
    offsets = np.cumsum((0, *sizes[:-1]))
    tokens = [
        torch.arange(NUM_SPECIAL + o, NUM_SPECIAL + o + k)
        for o, k in zip(offsets, sizes, strict=True)
    ]
    table = PrefixTable.from_codes(codes, sizes)
    histories, hist_src = load_histories(Path(args.prepared), len(codes), args.users, args.seed)
    ids, mask = build_prompts(histories, codes, offsets)
    lm = make_model(NUM_SPECIAL + sum(sizes), args.seed)
    result = {
        "provenance": made,
        "sid_table": codes_src,
        "num_items": len(codes),
        "codebook_sizes": list(sizes),
        "prompts": hist_src,
        "users": len(ids),
        "batch_size": args.batch_size,
        "mean_prompt_tokens": float(mask.sum(1).float().mean()),
        "model": "Qwen2 hidden 128, 4 layers, 4 heads, random weights (seeded, LM head x20)",
        "widths": {},
    }
    # warm-up (first-call allocations, thread pools)
    generate_sids(lm, ids[:4], mask[:4], tokens, DecodingConfig(beam_width=4), table)
    for width in [*args.widths, *args.extra_widths]:
        with_hf = width in args.widths
        n = len(ids) if with_hf else min(args.extra_users, len(ids))
        methods = {
            "constrained": DecodingConfig(strategy="constrained", beam_width=width),
            "constrained_reference_attention": DecodingConfig(
                strategy="constrained", beam_width=width, shared_prompt_attention=False
            ),
            "beam": DecodingConfig(strategy="beam", beam_width=width),
            "dynamic": DecodingConfig(strategy="dynamic", beam_width=width),
        }
        methods = {name: ours(lm, tokens, cfg, table) for name, cfg in methods.items()}
        if with_hf:
            methods["hf_generate_constrained"] = hf_generate(lm, tokens, width, codes, ids.shape[1])
        outs = run_interleaved(methods, ids[:n], mask[:n], args.batch_size)
        row: dict = {"users": n}
        top10 = {}
        for name, (c, s, sec) in outs.items():
            items, _, stats = candidates_to_items(_Out(c, s), table, 10)
            top10[name] = items
            row[name] = {
                "seconds": sec,
                "users_per_second": n / sec,
                "candidates_per_user": int(c.shape[1]),
                "invalid_rate": stats["invalid"] / max(stats["generated"], 1),
                "duplicate_rate": stats["duplicate"] / max(stats["generated"], 1),
            }
        row["dynamic_expected_candidates"] = 12 * width
        row["dynamic_cost_vs_beam"] = row["dynamic"]["seconds"] / row["beam"]["seconds"]
        row["dynamic_cost_vs_constrained"] = (
            row["dynamic"]["seconds"] / row["constrained"]["seconds"]
        )
        row["shared_prompt_attention_speedup"] = (
            row["constrained_reference_attention"]["seconds"] / row["constrained"]["seconds"]
        )
        if with_hf:
            mine, ref = top10["constrained"], top10["hf_generate_constrained"]
            row["speedup_constrained_vs_hf"] = (
                row["hf_generate_constrained"]["seconds"] / row["constrained"]["seconds"]
            )
            row["top10_identical_ordered"] = float((mine == ref).all(1).float().mean())
            row["top10_identical_set"] = float(
                (mine.sort(1).values == ref.sort(1).values).all(1).float().mean()
            )
            diff = outs["hf_generate_constrained"][1] - outs["constrained"][1]
            row["max_abs_score_diff_top_w"] = float(diff.abs().max())
        print(width, json.dumps(row), flush=True)
        result["widths"][str(width)] = row
    write_json(Path(args.out), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
