"""Decoding: constrained beam vs brute force, greedy, transformers' generate, dynamic schedule;
every property for both SID-LM arches (decoder-only Qwen2, encoder-decoder T5)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AttentionInterface,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from sidrec_core.models import beam_attention
from sidrec_core.models.beam import (
    BeamOutput,
    DecodingConfig,
    PrefixTable,
    candidates_to_items,
    fit_to_catalogue,
    generate_sids,
    schedule,
)

NUM_SPECIAL = 3  # pad, bos, eos
SIZES = (4, 3, 5)
ARCHES = ("decoder", "encoder_decoder")


def level_tokens(sizes: tuple[int, ...]) -> list[torch.Tensor]:
    starts = torch.tensor((0, *sizes)).cumsum(0)[:-1] + NUM_SPECIAL
    return [torch.arange(int(s), int(s) + k) for s, k in zip(starts, sizes, strict=True)]


def tiny_lm(sizes: tuple[int, ...], seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=NUM_SPECIAL + sum(sizes) + 2,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    lm = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper next-token distributions than the 0.02-std init
        lm.lm_head.weight.mul_(40.0)
    return lm


def tiny_t5(sizes: tuple[int, ...], seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=NUM_SPECIAL + sum(sizes) + 2,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-silu",
        dropout_rate=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    lm = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # sharper next-token distributions (the head is tied to the inputs)
        lm.decoder.final_layer_norm.weight.mul_(4.0)
    return lm


def tiny(arch: str, sizes: tuple[int, ...], seed: int = 0):
    return tiny_lm(sizes, seed) if arch == "decoder" else tiny_t5(sizes, seed)


def sequence_logits(lm, ids, mask, generated) -> torch.Tensor:
    """Logits [R, s + 1, V] predicting each of the ``generated`` tokens [R, s] and the next one,
    by a plain forward without a cache (the decoder-only model re-reads prompt + tokens)."""
    with torch.no_grad():
        if lm.config.is_encoder_decoder:
            start = torch.full((len(ids), 1), lm.config.decoder_start_token_id)
            dec = torch.cat([start, generated], 1)
            return lm(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits.float()
        seq = torch.cat([ids, generated], 1)
        seq_mask = torch.cat([mask, torch.ones_like(generated)], 1)
        pos = (seq_mask.cumsum(1) - 1).clamp(min=0)
        logits = lm(input_ids=seq, attention_mask=seq_mask, position_ids=pos).logits.float()
        return logits[:, ids.shape[1] - 1 :]


def all_sids(sizes: tuple[int, ...]) -> torch.Tensor:
    return torch.cartesian_prod(*[torch.arange(k) for k in sizes]).reshape(-1, len(sizes))


def sid_table(sizes: tuple[int, ...], num_items: int, seed: int = 0) -> torch.Tensor:
    every = all_sids(sizes)
    return every[
        torch.randperm(len(every), generator=torch.Generator().manual_seed(seed))[:num_items]
    ]


def prompts(vocab: int, batch: int = 3, length: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :2], mask[0, :2] = 0, 0  # left padding
    return ids, mask


def brute_force_scores(lm, ids, mask, codes, tokens) -> torch.Tensor:
    """Sequence log-prob of every SID in ``codes`` [N, M] for every prompt -> [B, N] (no cache)."""
    batch = ids.shape[0]
    sid_ids = torch.stack([tokens[lvl][codes[:, lvl]] for lvl in range(codes.shape[1])], 1)
    sid_ids = sid_ids.repeat(batch, 1)
    n = len(codes)
    logits = sequence_logits(lm, ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), sid_ids)
    logp = logits.log_softmax(-1)[:, :-1]  # positions predicting the SID tokens
    return logp.gather(2, sid_ids.unsqueeze(2)).squeeze(2).sum(1).view(batch, n)


def sid_scores(out: BeamOutput, table: PrefixTable, brute: torch.Tensor) -> torch.Tensor:
    items = table.lookup(out.codes)
    return torch.where(items > 0, brute.gather(1, (items - 1).clamp(min=0)), torch.nan)


def make_setup(arch: str):
    lm = tiny(arch, SIZES)
    codes = sid_table(SIZES, 25)
    tokens = level_tokens(SIZES)
    ids, mask = prompts(lm.config.vocab_size)
    table = PrefixTable.from_codes(codes, SIZES)
    return lm, codes, tokens, ids, mask, table, brute_force_scores(lm, ids, mask, codes, tokens)


@pytest.fixture(scope="module", params=ARCHES)
def setup(request):
    return make_setup(request.param)


@pytest.fixture(scope="module")
def decoder_setup():
    return make_setup("decoder")


def test_prefix_table_children_and_lookup():
    codes = sid_table(SIZES, 25)
    table = PrefixTable.from_codes(codes.numpy(), SIZES)
    valid = {tuple(c) for c in codes.tolist()}
    for sid in all_sids(SIZES).tolist():
        prefix, item = 0, None
        for lvl, code in enumerate(sid):
            nxt = int(table.children[lvl][prefix, code])
            expect = any(v[: lvl + 1] == tuple(sid[: lvl + 1]) for v in valid)
            assert (nxt >= 0) == expect
            if nxt < 0:
                break
            prefix = item = nxt
        got = int(table.lookup(torch.tensor(sid)))
        assert (got > 0) == (tuple(sid) in valid)
        if got:
            assert item == got and codes[got - 1].tolist() == sid
    assert int(table.lookup(torch.tensor([-1, 0, 0]))) == 0


def test_non_unique_table_raises():
    codes = sid_table(SIZES, 10)
    codes[3] = codes[7]
    with pytest.raises(ValueError, match="not unique"):
        PrefixTable.from_codes(codes, SIZES)
    with pytest.raises(ValueError, match="out of range"):
        PrefixTable.from_codes(torch.tensor([[0, 0, 5]]), SIZES)


@pytest.mark.parametrize("shared", [True, False])
def test_constrained_equals_brute_force(setup, shared):
    lm, codes, tokens, ids, mask, table, brute = setup
    # W >= number of items: beam search is exhaustive, so it must return every SID, ranked
    cfg = DecodingConfig(beam_width=len(codes), shared_prompt_attention=shared)
    out = generate_sids(lm, ids, mask, tokens, cfg, table)
    items, scores, stats = candidates_to_items(out, table, len(codes))
    expect = brute.sort(1, descending=True).values
    torch.testing.assert_close(scores, expect, atol=1e-4, rtol=0)
    assert (items.sort(1).values == torch.arange(1, len(codes) + 1)).all()
    # each item's score is its own brute-force score (ties may swap equal-score items)
    torch.testing.assert_close(scores, brute.gather(1, items - 1), atol=1e-4, rtol=0)
    assert stats == {"generated": 3 * len(codes), "invalid": 0, "duplicate": 0}


@pytest.mark.parametrize(
    "cfg",
    [
        DecodingConfig(strategy="constrained", beam_width=3),
        DecodingConfig(strategy="dynamic", beam_width=2),
        DecodingConfig(strategy="dynamic", beam_width=2, dynamic_mode="online"),
    ],
)
def test_scores_are_sequence_log_probs(setup, cfg):
    lm, codes, tokens, ids, mask, table, brute = setup
    out = generate_sids(lm, ids, mask, tokens, cfg, table)
    finite = torch.isfinite(out.scores)
    assert finite.any()
    torch.testing.assert_close(
        out.scores[finite], sid_scores(out, table, brute)[finite], atol=1e-4, rtol=0
    )
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()  # best first
    # the best constrained candidate is never worse than the best SID found by enumeration
    assert (out.scores[:, 0] <= brute.max(1).values + 1e-4).all()


def greedy(lm, ids, mask, tokens, table=None) -> torch.Tensor:
    """Reference greedy decoding without a KV cache, optionally restricted to valid prefixes."""
    generated, picked = ids.new_zeros(len(ids), 0), []
    prefix = torch.zeros(len(ids), dtype=torch.long)
    for lvl, tok in enumerate(tokens):
        logits = sequence_logits(lm, ids, mask, generated)[:, -1, tok]
        if table is not None:
            child = table.children[lvl][prefix]
            logits = logits.masked_fill(child < 0, float("-inf"))
        code = logits.argmax(1)
        if table is not None:
            prefix = child.gather(1, code.unsqueeze(1)).squeeze(1)
        picked.append(code)
        generated = torch.cat([generated, tok[code].unsqueeze(1)], 1)
    return torch.stack(picked, 1)


@pytest.mark.parametrize("strategy", ["beam", "constrained"])
def test_width_one_is_greedy(setup, strategy):
    lm, codes, tokens, ids, mask, table, _ = setup
    out = generate_sids(
        lm, ids, mask, tokens, DecodingConfig(strategy=strategy, beam_width=1), table
    )
    ref = greedy(lm, ids, mask, tokens, table if strategy == "constrained" else None)
    assert out.codes.shape == (3, 1, 3)
    assert torch.equal(out.codes[:, 0], ref)


@pytest.mark.parametrize("shared", [True, False])
def test_beam_matches_transformers_generate(setup, shared):
    lm, codes, tokens, ids, mask, table, _ = setup
    width = 5
    # generate's decoder sequences start after the prompt (decoder-only) or the start token
    length = 1 if lm.config.is_encoder_decoder else ids.shape[1]
    gen = lm.generate(
        input_ids=ids,
        attention_mask=mask,
        num_beams=width,
        num_return_sequences=width,
        max_new_tokens=len(tokens),
        do_sample=False,
        prefix_allowed_tokens_fn=lambda b, s: tokens[s.shape[0] - length].tolist(),
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
        eos_token_id=None,
    )
    ref = gen.sequences[:, length:].view(len(ids), width, len(tokens))
    cfg = DecodingConfig(strategy="beam", beam_width=width, shared_prompt_attention=shared)
    out = generate_sids(lm, ids, mask, tokens, cfg)
    mine = torch.stack([tokens[lvl][out.codes[..., lvl]] for lvl in range(len(tokens))], -1)
    assert torch.equal(mine, ref)
    # generate divides by length ** length_penalty (1.0); all SIDs have length M
    torch.testing.assert_close(
        out.scores, gen.sequences_scores.view(len(ids), width) * len(tokens), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_constrained_invalid_rate_zero(arch):
    sizes = (6, 6, 6)
    lm, tokens = tiny(arch, sizes, seed=3), level_tokens(sizes)
    codes = sid_table(sizes, 12, seed=2)  # 12 of 216 SIDs exist: unconstrained beams miss most
    table = PrefixTable.from_codes(codes, sizes)
    ids, mask = prompts(lm.config.vocab_size, batch=4)
    valid = {tuple(c) for c in codes.tolist()}
    plain = generate_sids(lm, ids, mask, tokens, DecodingConfig(strategy="beam", beam_width=8))
    _, _, stats = candidates_to_items(plain, table, 8)
    expect_invalid = sum(tuple(c) not in valid for c in plain.codes.reshape(-1, 3).tolist())
    assert stats["invalid"] == expect_invalid > 0
    for cfg in (
        DecodingConfig(strategy="constrained", beam_width=8),
        DecodingConfig(strategy="dynamic", beam_width=1),
    ):
        out = generate_sids(lm, ids, mask, tokens, cfg, table)
        items, _, stats = candidates_to_items(out, table, 8)
        assert stats["invalid"] == 0
        assert stats["generated"] == int(torch.isfinite(out.scores).sum()) > 0
        assert ((items > 0) == torch.isfinite(out.scores[:, :8])).all()
    out = generate_sids(lm, ids, mask, tokens, DecodingConfig(beam_width=8), table)
    assert torch.isfinite(out.scores).all()  # 12 valid SIDs fill all 8 slots


@pytest.mark.parametrize("mode,keeps", [("offline", (3, 6, 12, 12)), ("online", (3, 9, 12, 12))])
@pytest.mark.parametrize("sizes", [(4, 4, 4), (3, 3, 3, 2)])
@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("arch", ARCHES)
def test_dynamic_schedule(mode, keeps, sizes, constrained, arch):
    width, levels = 2, len(sizes)
    cfg = DecodingConfig(
        strategy="dynamic", beam_width=width, dynamic_mode=mode, dynamic_constrained=constrained
    )
    plan = schedule(cfg, levels)
    assert plan == [
        (width * b, width * k) for b, k in zip((1, 2, 4, 8), keeps[:levels], strict=False)
    ]
    lm, tokens = tiny(arch, sizes), level_tokens(sizes)
    table = PrefixTable.from_codes(all_sids(sizes), sizes)  # every SID exists: slots all fill
    ids, mask = prompts(lm.config.vocab_size)
    out = generate_sids(lm, ids, mask, tokens, cfg, table)
    assert out.codes.shape == (3, 12 * width, levels)  # 12B candidates, none truncated
    assert torch.isfinite(out.scores).all()
    items, _, stats = candidates_to_items(out, table, 12 * width)
    assert stats == {"generated": 3 * 12 * width, "invalid": 0, "duplicate": 0}
    assert (items > 0).all()


def test_dynamic_schedule_at_b100():
    plan = schedule(DecodingConfig(strategy="dynamic", beam_width=100), 3)
    assert plan == [(100, 300), (200, 600), (400, 1200)]
    plan = schedule(DecodingConfig(strategy="dynamic", beam_width=100, dynamic_num_eos_tokens=0), 3)
    assert plan[-1] == (400, 800)  # beams_to_keep = max(2, 1 + 0) x B


def test_config_errors():
    with pytest.raises(ValueError, match="num_return_sequences"):
        DecodingConfig(beam_width=5, num_return_sequences=6)
    with pytest.raises(ValueError, match="num_return_sequences"):
        DecodingConfig(strategy="dynamic", num_return_sequences=20)
    with pytest.raises(ValueError, match="beam_width"):
        DecodingConfig(beam_width=0)
    assert schedule(DecodingConfig(beam_width=5, num_return_sequences=2), 3)[-1] == (5, 2)


@pytest.mark.parametrize("strategy", ["constrained", "dynamic"])
def test_beam_wider_than_catalogue_is_clamped_to_the_same_candidates(setup, strategy, caplog):
    lm, codes, tokens, ids, mask, table, _ = setup
    n = len(codes)
    wide = DecodingConfig(strategy=strategy, beam_width=n + 7)
    fitted = fit_to_catalogue(wide, n)
    assert fitted.beam_width == n and f"decoding.beam_width {n + 7} exceeds the {n}" in caplog.text
    # the claim behind the clamp: a constrained beam never holds more than n valid prefixes
    got = candidates_to_items(generate_sids(lm, ids, mask, tokens, fitted, table), table, n)
    want = candidates_to_items(generate_sids(lm, ids, mask, tokens, wide, table), table, n)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert fit_to_catalogue(DecodingConfig(beam_width=n), n).beam_width == n
    with pytest.raises(ValueError, match=rf"decoding.beam_width {n + 1} exceeds the {n} items"):
        fit_to_catalogue(DecodingConfig(strategy="beam", beam_width=n + 1), n)


def test_mismatched_inputs_raise(setup):
    lm, codes, tokens, ids, mask, table, _ = setup
    with pytest.raises(ValueError, match="codebook sizes"):
        generate_sids(lm, ids, mask, tokens[:2] + [tokens[2][:3]], DecodingConfig(), table)
    with pytest.raises(ValueError, match="PrefixTable"):
        generate_sids(lm, ids, mask, tokens, DecodingConfig(), None)
    with pytest.raises(ValueError, match="LEFT-padded"):
        generate_sids(lm, ids, mask.flip(1), tokens, DecodingConfig(), table)
    with pytest.raises(ValueError, match="at least one token"):
        generate_sids(lm, ids, mask * 0, tokens, DecodingConfig(), table)
    with pytest.raises(ValueError, match="vocabulary"):
        generate_sids(lm, ids, mask, [tokens[0] + 1000, *tokens[1:]], DecodingConfig(), table)


def test_candidates_to_items_drops_invalid_and_duplicates():
    sizes = (2, 2)
    table = PrefixTable.from_codes(torch.tensor([[0, 0], [0, 1], [1, 1]]), sizes)  # items 1, 2, 3
    codes = torch.tensor(
        [[[0, 1], [1, 0], [0, 1], [1, 1], [-1, -1]]]
    )  # item 2, invalid, 2, 3, empty
    scores = torch.tensor([[-1.0, -0.5, -2.0, -3.0, float("-inf")]])
    out = BeamOutput(codes=codes, scores=scores, schedule=[])
    items, ranked, stats = candidates_to_items(out, table, 4)
    assert items.tolist() == [[2, 3, 0, 0]]
    assert ranked[0, :2].tolist() == [-1.0, -3.0] and torch.isinf(ranked[0, 2:]).all()
    assert stats == {"generated": 4, "invalid": 1, "duplicate": 1}


def test_shared_prompt_attention_is_used_and_restored(decoder_setup, monkeypatch):
    """The fast path really runs (GQA model, left padding) and gives the reference results."""
    lm, codes, tokens, ids, mask, table, _ = decoder_setup
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return beam_attention.shared_prompt_attention(*args, **kwargs)

    monkeypatch.setitem(
        AttentionInterface._global_mapping, beam_attention.SHARED_PROMPT_ATTENTION, spy
    )
    before = lm.config._attn_implementation
    for strategy in ("constrained", "dynamic"):
        fast = generate_sids(lm, ids, mask, tokens, DecodingConfig(strategy=strategy), table)
        ref = generate_sids(
            lm,
            ids,
            mask,
            tokens,
            DecodingConfig(strategy=strategy, shared_prompt_attention=False),
            table,
        )
        assert torch.equal(fast.codes, ref.codes)
        torch.testing.assert_close(fast.scores, ref.scores, atol=1e-5, rtol=0)
    assert len(calls) == 2 * 2 * lm.config.num_hidden_layers  # 2 decoding forwards per strategy
    assert lm.config._attn_implementation == before
