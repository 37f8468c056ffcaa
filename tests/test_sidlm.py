"""SID language model: tokenizer, examples, load modes, LM-head slicing, runner, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from sidrec_core.config import ConfigError, build
from sidrec_core.data.sid_examples import JsonlExamples, collate, training_rows, write_rows
from sidrec_core.io import write_jsonl
from sidrec_core.models.beam import DecodingConfig
from sidrec_core.models.sid_vocab import SIDVocab, _scratch_base
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_lm, first_label_index
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages.eval_sidlm import reportable_ks
from sidrec_core.stages.eval_sidlm import run as run_eval_sidlm
from sidrec_core.stages.train_sidlm import run as run_train_sidlm

TINY = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 64,
}


def _table(num_items: int) -> SIDTable:
    """Distinct 3-level SIDs (4 x 4 x 4) for items 1..num_items."""
    i = np.arange(num_items)
    codes = np.stack([i % 4, (i // 4) % 4, i // 16], 1)
    return SIDTable(np.vstack([-np.ones((1, 3), np.int64), codes]), (4, 4, 4))


@pytest.fixture(scope="module")
def table(syn_ds) -> SIDTable:
    return _table(syn_ds.num_items)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> str:
    """A tiny local 'pretrained' Qwen2, own tokenizer, untied head (nothing downloaded)."""
    path = tmp_path_factory.mktemp("base")
    tok = _scratch_base("hello world")
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=False,
        )
    )
    lm.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def _model(table, task="pretrain", load="scratch", checkpoint=None, **kw) -> SIDLM:
    torch.manual_seed(0)
    cfg = SIDLMConfig(task=task, load=load, checkpoint=checkpoint, **TINY, **kw)
    vocab = SIDVocab.build(table.codebook_sizes, checkpoint if load != "scratch" else None)
    return SIDLM(build_lm(cfg, vocab), vocab, table, cfg, max_history=5)


def _batch(model, loo, task):
    rows = list(training_rows(loo, task, 5))[:16]
    return collate(
        [model.encoder.train_example(r) for r in rows],
        model.pad_id,
        "left" if task == "sft" else "right",
    )


def test_tokenizer_roundtrip_and_chat_template(tmp_path, table):
    vocab = SIDVocab.build(table.codebook_sizes)
    vocab.save(tmp_path)
    again = SIDVocab.load(tmp_path)
    assert [t.tolist() for t in again.level_token_ids] == [
        t.tolist() for t in vocab.level_token_ids
    ]
    tokens = again.tokenizer.convert_ids_to_tokens(again.item_token_ids(table)[5].tolist())
    assert tokens == table.tokens(5) == ["<a_0>", "<b_1>", "<c_0>"]
    # the id arithmetic prompt equals the tokenizer's own chat template rendering
    model = _model(table, task="sft")
    history = "".join(table.tokens(3) + table.tokens(7))
    messages = [
        {"role": "system", "content": model.cfg.system_prompt},
        {"role": "user", "content": history},
    ]
    ref = model.vocab.tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True
    )["input_ids"]
    assert model.encoder.prompt([3, 7]) == list(ref)


def test_examples_tasks_and_streaming(tmp_path, syn_loo, table):
    sft = list(training_rows(syn_loo, "sft", 5))
    assert len(sft) == sum(len(s) - 1 for s in syn_loo.train_sequences)  # one per prefix
    assert all(len(r["history"]) <= 5 for r in sft)
    path = tmp_path / "ex.jsonl"
    n = write_rows(path, ({**r, "extra": i} for i, r in enumerate(sft)))
    shards = [
        list(JsonlExamples(path, shuffle_buffer=8, seed=1, rank=r, world_size=2)) for r in (0, 1)
    ]
    assert sorted(r["extra"] for s in shards for r in s) == list(range(n))  # disjoint, complete
    model = _model(table, task="sft")
    ex = model.encoder.train_example(sft[0])
    labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100]
    assert labelled[:3] == model.encoder.item_tokens[sft[0]["target"]].tolist()  # answer only


@pytest.mark.parametrize("task", ["pretrain", "sft"])
def test_lm_head_slicing_same_loss(syn_loo, table, task):
    model = _model(table, task=task)
    batch = _batch(model, syn_loo, task)
    if task == "sft":
        assert first_label_index(batch["labels"]) > batch["labels"].shape[1] // 2
    sliced = model.loss(batch)
    object.__setattr__(model.cfg, "lm_head_slicing", False)
    assert torch.allclose(sliced, model.loss(batch), atol=1e-5)


def test_dense_mode_trains_only_new_rows(syn_loo, table, base_ckpt):
    model = _model(table, load="dense", checkpoint=base_ckpt)
    num_old = Qwen2Config.from_pretrained(base_ckpt).vocab_size  # rows before the SID tokens
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    model.loss(_batch(model, syn_loo, "pretrain")).backward()
    opt.step()
    after = model.lm.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(after[name][:num_old], before[name][:num_old]), name
        assert not torch.equal(after[name][num_old:], before[name][num_old:]), name
    others = [k for k in before if k not in ("model.embed_tokens.weight", "lm_head.weight")]
    assert others and all(torch.equal(after[k], before[k]) for k in others)


@pytest.mark.parametrize("load", ["scratch", "dense", "pretrained", "lora"])
@pytest.mark.parametrize("task", ["pretrain", "sft"])
def test_each_load_mode_and_task_runs_a_step(syn_loo, table, base_ckpt, load, task):
    model = _model(table, task=task, load=load, checkpoint=None if load == "scratch" else base_ckpt)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    loss = model.loss(_batch(model, syn_loo, task))
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.AdamW(params, lr=1e-2).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params, strict=True))
    if load == "lora":
        assert sum(p.numel() for p in params) < sum(p.numel() for p in model.parameters()) / 2


def _runner_params(syn_prepared, tmp_path, table, **sidlm):
    table.save(tmp_path / "sids")
    return {
        **syn_prepared,
        "sidlm": {
            **TINY,
            "sid_dir": str(tmp_path / "sids"),
            "output_dir": str(tmp_path / "model"),
            "predictions_dir": str(tmp_path / "pred"),
            "shuffle_buffer": 64,
            "train": {"epochs": 1, "batch_size": 64, "lr": 0.01},
            **sidlm,
        },
        "decoding": {"strategy": "constrained", "beam_width": 10, "num_return_sequences": 10},
        "eval": {"bootstrap": 0, "ks": [1, 5, 10, 20], "max_valid_users": 50},
    }


def test_runner_trains_evaluates_predicts(syn_prepared, tmp_path, table, syn_ds):
    params = _runner_params(syn_prepared, tmp_path, table)
    train = run_train_sidlm(params)
    assert train["steps"] > 0 and "valid/ndcg@10" not in train  # curves go to the run, not here
    res = run_eval_sidlm(params)
    assert res["invalid_rate"] == 0.0 and 0.0 <= res["test/hr@10"] <= 1.0
    assert res["users_per_second"] > 0
    # valid (the fixed 50-user subsample) and test come from one pass each, both saved
    saved = json.loads((tmp_path / "metrics" / "eval_sidlm.json").read_text())
    assert saved["test/ndcg@10"] == res["test/ndcg@10"] and "valid/ndcg@10" in saved
    assert saved["valid_users"] == 50 and saved["test_users"] == syn_ds.num_users
    # 10 candidates per user: @20 is not reported as if it were a cut-off of its own
    assert "test/hr@20" not in saved and "test/hr@10" in saved
    rows = [json.loads(x) for x in (tmp_path / "pred" / "part-00000-of-00001.jsonl").open()]
    assert len(rows) == syn_ds.num_users
    assert {"user", "user_index", "history", "target", "candidates", "scores"} <= set(rows[0])
    assert all(len(r["candidates"]) == len(r["scores"]) > 0 for r in rows)
    # the predictions are the scored candidates: HR@10 recomputed from them matches
    hits = [r["target"] in r["candidates"][:10] for r in rows]
    assert np.mean(hits) == pytest.approx(res["test/hr@10"])


def test_reportable_ks_refuses_cutoffs_beyond_the_candidates():
    assert reportable_ks((1, 5, 10, 20, 50), 20) == (1, 5, 10, 20)
    with pytest.raises(ValueError, match="decoding.beam_width"):
        reportable_ks((10,), 5)


def test_prediction_file_complete_after_interrupted_write(tmp_path):
    good = [{"user": "u1", "candidates": [1, 2], "scores": [-0.1, -0.2]}]
    path = tmp_path / "part-00000-of-00001.jsonl"
    write_jsonl(path, good)
    with pytest.raises(TypeError):  # dies mid-write on an unserialisable row
        write_jsonl(path, good * 50 + [{"user": object()}])
    assert [json.loads(x) for x in path.open()] == good
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_empty_history_is_recommended(table):
    model = _model(table)
    ids, scores = model.recommend({"history": torch.zeros(2, 5, dtype=torch.long)}, 3)
    assert ids.shape == (2, 3) and (ids > 0).all() and torch.isfinite(scores).all()


def test_bad_input_errors(tmp_path, syn_loo, table, syn_prepared):
    with pytest.raises(ConfigError, match="sidlm.checkpoint"):
        build(SIDLMConfig, {"load": "dense"}, "sidlm")
    with pytest.raises(FileNotFoundError, match="sidlm.checkpoint"):
        _model(table, load="pretrained", checkpoint=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="decoding.num_return_sequences"):
        build(DecodingConfig, {"beam_width": 5, "num_return_sequences": 10}, "decoding")
    other = SIDTable(table.codes, (4, 4, 8))
    model = _model(table)
    with pytest.raises(ValueError, match="sidlm.sid_dir"):
        SIDLM(model.lm, model.vocab, other, model.cfg, 5)
    small = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    with pytest.raises(ValueError, match="sidlm.checkpoint"):
        SIDLM(small, model.vocab, table, model.cfg, 5)
    # a saved model evaluated with a different SID table
    model.save(tmp_path / "m")
    shuffled = SIDTable(np.vstack([table.codes[:1], table.codes[1:][::-1]]), table.codebook_sizes)
    with pytest.raises(ValueError, match="sidlm.sid_dir"):
        SIDLM.load(tmp_path / "m", shuffled, model.cfg, 5)


def test_checkpoint_folder_that_is_not_a_model(tmp_path, table, base_ckpt):
    from sidrec_core.models.sidlm import build_sidlm, check_model_dir

    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    cfg = SIDLMConfig(load="pretrained", checkpoint=str(folder), **TINY)
    with pytest.raises(ValueError) as exc:
        build_sidlm(cfg, table, 5)
    msg = str(exc.value)
    assert msg.startswith(f"sidlm.checkpoint: {folder} is not a saved model folder")
    assert "config.json" in msg and "model.safetensors" in msg and "\n" not in msg
    assert check_model_dir(base_ckpt, "sidlm.checkpoint") == Path(base_ckpt)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"missing model.safetensors or pytorch_model.bin; tok"):
        check_model_dir(folder, "sidlm.checkpoint")
    with pytest.raises(FileNotFoundError, match="sidlm.output_dir"):
        SIDLM.load(tmp_path / "nothing", table, cfg, 5)
