"""RPG (Hou et al., "Generating Long Semantic IDs in Parallel for Recommendation", KDD 2025;
facebookresearch/RPG_KDD2025): ``tokenizer`` (OPQ long unordered SIDs), ``model`` (the
parallel-digit transformer and ``RPGConfig``), ``decoding`` (exact scoring, the graph beam),
``published`` (the paper's and re-runs' Beauty figures with their sources)."""
