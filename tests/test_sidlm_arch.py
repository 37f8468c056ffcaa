"""The encoder-decoder SID LM (``sidlm.arch=encoder_decoder``): config, size mapping, loss,
learning, save/load, sampling, the train/eval stages, and the methods that refuse it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import T5ForConditionalGeneration

from sidrec_core.config import ConfigError, build
from sidrec_core.data.sid_examples import collate, training_rows
from sidrec_core.etegrec.model import check_lm_config
from sidrec_core.models.beam import DecodingConfig
from sidrec_core.models.sampling import sample_sids
from sidrec_core.models.sid_vocab import SIDVocab
from sidrec_core.models.sidlm import META_FILE, SIDLM, SIDLMConfig, build_lm
from sidrec_core.rl.grpo import GRPO, RewardInputs, RLConfig
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages.eval_sidlm import run as run_eval_sidlm
from sidrec_core.stages.train_sidlm import run as run_train_sidlm
from tests.test_sidlm import TINY, _runner_params, _table

pytestmark = pytest.mark.usefixtures("one_thread")

ENC_DEC = {**TINY, "arch": "encoder_decoder"}  # num_kv_heads does not apply to T5


@pytest.fixture(scope="module")
def table(syn_ds) -> SIDTable:
    return _table(syn_ds.num_items)


def _model(table: SIDTable, task: str = "pretrain", seed: int = 0, **kw) -> SIDLM:
    torch.manual_seed(seed)
    cfg = SIDLMConfig(task=task, **{**ENC_DEC, **kw})
    vocab = SIDVocab.build(table.codebook_sizes)
    return SIDLM(build_lm(cfg, vocab), vocab, table, cfg, max_history=5)


def _batch(model: SIDLM, rows: list[dict]) -> dict[str, torch.Tensor]:
    examples = [model.encoder.train_example(r) for r in rows]
    return collate(examples, model.pad_id, model.encoder.pad_side)


def test_arch_config_is_validated():
    assert SIDLMConfig().arch == "decoder"  # existing runs are unchanged
    with pytest.raises(ConfigError, match=r"^sidlm.arch: expected one of"):
        build(SIDLMConfig, {"arch": "t5"}, "sidlm")
    with pytest.raises(ConfigError, match=r"sidlm.load: arch encoder_decoder builds a scratch"):
        build(SIDLMConfig, {"arch": "encoder_decoder", "load": "lora", "checkpoint": "x"}, "sidlm")


def test_sizes_map_per_stack(table):
    cfg = SIDLMConfig(**{**ENC_DEC, "num_layers": 2, "attention_dropout": 0.1})
    vocab = SIDVocab.build(table.codebook_sizes)
    lm = build_lm(cfg, vocab)
    assert isinstance(lm, T5ForConditionalGeneration)
    assert len(lm.encoder.block) == len(lm.decoder.block) == 2
    c = lm.config
    assert (c.d_model, c.num_heads, c.d_kv, c.d_ff) == (32, 2, 16, 64)
    assert c.is_gated_act and c.dense_act_fn == "silu" and c.dropout_rate == 0.1
    assert c.decoder_start_token_id == vocab.tokenizer.bos_token_id and c.vocab_size == len(vocab)
    assert lm.lm_head.weight is lm.get_input_embeddings().weight  # tied, as the scratch decoder


@pytest.mark.parametrize("task", ["pretrain", "sft"])
def test_examples_and_loss_on_the_target_tokens(syn_loo, table, task):
    model = _model(table, task=task)
    assert model.encoder.rows_task == "sft"  # one example per prefix, whatever the task
    rows = list(training_rows(syn_loo, model.encoder.rows_task, 5))[:16]
    ex = model.encoder.train_example(rows[3])
    assert ex["input_ids"] == model.encoder.prompt(rows[3]["history"])
    assert ex["labels"] == model.encoder.item_tokens[rows[3]["target"]].tolist()  # M tokens
    batch = _batch(model, rows)
    assert batch["labels"].shape == (16, 3)
    # T5's own loss shifts the labels right after its decoder start token: the same objective
    ref = model.lm(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    ).loss
    torch.testing.assert_close(model.loss(batch), ref, atol=1e-5, rtol=0)


def test_training_learns_a_planted_next_item(table):
    """Target = the item after the last one in the history: only the encoder tells which."""
    model = _model(table)
    n = table.num_items
    rng = np.random.default_rng(0)

    def rows(count: int) -> list[dict]:
        hist = rng.integers(1, n + 1, size=(count, 3))
        return [{"history": h.tolist(), "target": int(h[-1]) % n + 1} for h in hist]

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    model.train()
    for _ in range(300):
        loss = model.loss(_batch(model, rows(32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:10])
    test = rows(200)
    model.decoding = DecodingConfig(beam_width=5)
    history = torch.tensor([r["history"] for r in test])
    ids, _ = model.recommend({"history": history}, 1)
    hits = (ids[:, 0] == torch.tensor([r["target"] for r in test])).float().mean()
    assert hits > 0.9


def test_save_load_roundtrip_gives_identical_scores(tmp_path, table):
    model = _model(table).eval()
    history = torch.tensor([[0, 0, 3, 9, 17], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    for decoding in (DecodingConfig(beam_width=8), DecodingConfig("dynamic", beam_width=2)):
        model.decoding = decoding
        ids, scores = model.recommend({"history": history}, 8)
        model.save(tmp_path / "m")
        assert json.loads((tmp_path / "m" / META_FILE).read_text())["arch"] == "encoder_decoder"
        again = SIDLM.load(tmp_path / "m", table, model.cfg, 5).eval()
        assert isinstance(again.lm, T5ForConditionalGeneration)
        again.decoding = decoding
        ids2, scores2 = again.recommend({"history": history}, 8)
        assert torch.equal(ids, ids2) and torch.equal(scores, scores2)
        assert (ids > 0).all() and torch.isfinite(scores).all()


def test_loader_errors_name_the_folder_and_what_it_found(tmp_path, table):
    model = _model(table)
    folder = tmp_path / "m"
    model.save(folder)
    decoder_cfg = SIDLMConfig(**TINY)
    with pytest.raises(ValueError, match=r"^sidlm.arch: the model in .* arch 'encoder_decoder'"):
        SIDLM.load(folder, table, decoder_cfg, 5)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "arch": "decoder"}))
    with pytest.raises(ValueError) as exc:
        SIDLM.load(folder, table, decoder_cfg, 5)
    msg = str(exc.value)
    assert msg.startswith(f"sidlm.output_dir: {folder} records arch 'decoder'") and "\n" not in msg
    assert "encoder-decoder 't5' model" in msg
    (folder / META_FILE).write_text(json.dumps({**meta, "arch": "rnn"}))
    with pytest.raises(ValueError, match=r"^sidlm.output_dir: .* records arch 'rnn'"):
        SIDLM.load(folder, table, model.cfg, 5)


def test_sampling_draws_valid_sids_scored_by_the_model(table):
    model = _model(table, seed=1).eval()
    prompt = model.prompts(torch.tensor([[0, 3, 9], [4, 5, 6]]))
    tokens = model.level_token_ids
    gen = torch.Generator().manual_seed(0)
    out = sample_sids(
        model.lm, prompt["input_ids"], prompt["attention_mask"], tokens, model.prefix_table, 6,
        generator=gen,
    )  # fmt: skip
    assert out.codes.shape == (2, 6, 3)
    assert (model.prefix_table.lookup(out.codes) > 0).all()  # every draw is a valid SID
    sid_tokens = torch.stack([tokens[lvl][out.codes[..., lvl]] for lvl in range(3)], -1)
    batch = {
        "input_ids": prompt["input_ids"].repeat_interleave(6, 0),
        "attention_mask": prompt["attention_mask"].repeat_interleave(6, 0),
    }
    start = torch.full((12, 1), model.lm.config.decoder_start_token_id)
    dec = torch.cat([start, sid_tokens.view(12, 3)[:, :-1]], 1)
    with torch.no_grad():
        logits = model.lm(**batch, decoder_input_ids=dec).logits.float()
    ref = logits.log_softmax(-1).gather(2, sid_tokens.view(12, 3, 1)).sum((1, 2))
    torch.testing.assert_close(out.scores, ref.view(2, 6), atol=1e-4, rtol=0)


def test_train_and_eval_stages_with_encoder_decoder(syn_prepared, tmp_path, table, syn_ds):
    params = _runner_params(syn_prepared, tmp_path, table, **ENC_DEC)
    train = run_train_sidlm(params)
    assert train["steps"] > 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] == "t5"
    res = run_eval_sidlm(params)
    assert res["invalid_rate"] == 0.0 and 0.0 <= res["test/hr@10"] <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "pred" / "part-00000-of-00001.jsonl").open()]
    assert len(rows) == syn_ds.num_users and all(len(r["candidates"]) > 0 for r in rows)
    hits = [r["target"] in r["candidates"][:10] for r in rows]
    assert np.mean(hits) == pytest.approx(res["test/hr@10"])


def test_decoder_only_methods_refuse_the_encoder_decoder(table):
    model = _model(table)
    with pytest.raises(ValueError, match=r"^sidlm.arch: GRPO \(rl_sidlm\) works on the decoder"):
        GRPO(model, RLConfig(), RewardInputs(), total_steps=1, seed=0)
    with pytest.raises(ValueError, match=r"^sidlm.arch: etegrec works on the decoder-only"):
        check_lm_config(model.cfg)
