"""Published RPG figures on Amazon-2014 5-core Beauty (leave-one-out, full ranking, HR = Recall
with one target), each with its source: the rows a report sets beside ``eval_rpg``'s own. The
same shape as :data:`sidrec_core.stages.report.PUBLISHED` (model -> (source, figures))."""

from __future__ import annotations

PUBLISHED: dict[str, tuple[str, dict[str, float]]] = {
    "RPG (paper)": (
        "Hou et al., KDD 2025 (arXiv:2506.05781), main results table; the same figures are "
        "quoted as 'paper' in PreferredAI/cornac pull request #715",
        {"hr@5": 0.0550, "ndcg@5": 0.0381, "hr@10": 0.0809, "ndcg@10": 0.0464},
    ),
    "RPG (cornac re-implementation, the README's Beauty command)": (
        "PreferredAI/cornac pull request #715, table 'Verification and tuning'",
        {"hr@5": 0.0533, "ndcg@5": 0.0372, "hr@10": 0.0789, "ndcg@10": 0.0454},
    ),
    "RPG (authors' code re-run by a user, the README's Beauty command)": (
        "facebookresearch/RPG_KDD2025 issue #3 (2025-06-30 Beauty test results)",
        {"hr@5": 0.0505, "ndcg@5": 0.0353, "hr@10": 0.0761, "ndcg@10": 0.0436},
    ),
    "RPG (the MHL paper's reproduction)": (
        "Wei et al., arXiv 2509.23649 v1, Table 1 (RPG*: the authors' code and parameters)",
        {"hr@5": 0.0500, "ndcg@5": 0.0358, "hr@10": 0.0745, "ndcg@10": 0.0436},
    ),
    "MHL (RPG + masked history learning, rpg.mhl)": (
        "Wei et al., arXiv 2509.23649 v1, Table 1 (token-level masking, random -> entropy -> "
        "none; the same Beauty row in v2, as issue 35 quotes it)",
        {"hr@5": 0.0574, "ndcg@5": 0.0424, "hr@10": 0.0795, "ndcg@10": 0.0495},
    ),
}
