"""Semantic IDs: tokenizers (RQ-VAE / RQ-KMeans family), collision resolution, the SID table."""
