"""The study catalogue (studies.yaml): strict loading, shorthand, anchors."""

from __future__ import annotations

import pytest

from sidrec_core.config import ConfigError
from sidrec_core.studies.registry import STUDIES, load_studies
from sidrec_core.studies.spaces import TUNABLES, load_tunables
from sidrec_core.studies.study import COST_KEYS, SID_QUALITY, TEST_KEYS

ONE = """
blocks:
  base: &base {run: [train_sasrec], reuse: [prepare], group: baselines}
studies:
  flags:
    <<: *base
    factor: a flag
    one_key: {eval.exclude_seen: [false, true]}
    default: "off"
    secondary: [TEST_KEYS, epochs]
"""


def write(tmp_path, text):
    path = tmp_path / "studies.yaml"
    path.write_text(text)
    return path


def test_one_key_labels_merge_blocks_and_metric_groups(tmp_path):
    notes = "    notes: [every dataset, {text: Sports only, datasets: [sports]}]\n"
    study = load_studies(write(tmp_path, ONE + notes))["flags"]
    assert [n.about("beauty") for n in study.notes] == [True, False]
    assert study.notes[1].text == "Sports only" and study.notes[1].about("sports")
    assert study.labels == ["off", "on"]
    assert study.level("on").overrides == {"eval.exclude_seen": True}
    assert (study.run, study.reuse, study.group) == (("train_sasrec",), ("prepare",), "baselines")
    assert study.secondary == (*TEST_KEYS, "epochs")


@pytest.mark.parametrize(
    "edit, named",
    [
        ("    objectiv: valid/ndcg@5\n", "studies.flags.objectiv"),
        (
            "    claims: [{finding: x, source: y, level: 'on', versus: 'off', expect: better, "
            "metrik: z}]\n",
            "studies.flags.claims[0].metrik",
        ),
        ("    levels: {a: {}, b: {}}\n", "studies.flags: give exactly one of levels, one_key"),
        ("    seeds: five\n", "studies.flags.seeds: expected an integer, got 'five'"),
        ("    fixed: [sasrec.loss]\n", "studies.flags.fixed: expected a mapping"),
        ("    notes: [{text: x, dataset: [sports]}]\n", "studies.flags.notes[0].dataset"),
        ("    notes: [3]\n", "studies.flags.notes[0]: expected a string or a mapping"),
    ],
)
def test_unknown_or_conflicting_key_names_file_and_key(tmp_path, edit, named):
    with pytest.raises(ConfigError) as err:
        load_studies(write(tmp_path, ONE + edit))
    assert str(err.value).startswith(f"studies.yaml: {named}")
    assert "\n" not in str(err.value)


def test_missing_upstream_stage_and_unknown_section(tmp_path):
    text = ONE.replace("reuse: [prepare], ", "")
    with pytest.raises(ConfigError, match=r"studies.flags: .*needs \['prepare'\]"):
        load_studies(write(tmp_path, text))
    with pytest.raises(ConfigError, match="unknown section 'studys'"):
        load_studies(write(tmp_path, ONE.replace("studies:", "studys:")))


def test_tunable_unknown_param_key(tmp_path):
    text = "tunables:\n  m:\n    run: [train_sasrec]\n    reuse: [prepare]\n"
    text += "    space: [{key: sasrec.dropout, choise: [0.1]}]\n"
    with pytest.raises(ConfigError, match=r"^studies.yaml: tunables.m.space\[0\].choise"):
        load_tunables(write(tmp_path, text))


def test_catalogue_values():
    """The committed catalogue as the studies measured it: merges keep the base's values."""
    ss = STUDIES["sasrec_ss"]
    shared, base = ss.level("ss-shared").overrides, ss.level("ss").overrides
    assert shared["sasrec.ss_sharing"] == "shared" and base["sasrec.ss_sharing"] == "per_position"
    assert {k: v for k, v in shared.items() if k != "sasrec.ss_sharing"} == {
        k: v for k, v in base.items() if k != "sasrec.ss_sharing"
    }
    assert STUDIES["tokenizer"].secondary == TEST_KEYS + SID_QUALITY + COST_KEYS
    # round 2 runs it on the default rows; its round-1 spellings stay valid for its old trials
    assert STUDIES["negatives"].fixed == {"sasrec.loss": "bce"}
    assert STUDIES["negatives"].formerly_fixed == (
        {"sasrec.loss": "bce", "sasrec.train_rows": "sequence", "sasrec.train.batch_size": 128},
    )
    assert STUDIES["reward_mix"].reference.match == ("start_valid/ndcg@10", "valid/ndcg@10")
    assert STUDIES["sasrec_rows"].level("order").formerly == (
        {"sasrec.positions": "order", "sasrec.train_rows": "sequence"},
    )
    assert all(claim.source for s in STUDIES.values() for claim in s.claims)
    recipe = TUNABLES["sidlm_recipe"]
    assert [source[:10] for _, source in recipe.starts] == [
        "every chan",
        "the defaul",
        "the defaul",
        "the two be",
        "the token-",
    ]
    assert [p["sidlm.loss_normalization"] for p, _ in recipe.starts] == [
        "tokens",
        "batch",
        "tokens",
        "tokens",
        "tokens",
    ]
    assert [p["sidlm.train.epochs"] for p, _ in recipe.starts] == [12, 12, 12, 12, 16]
    assert TUNABLES["sasrec"].space[1].when == ("sasrec.loss", "bce_shared")
