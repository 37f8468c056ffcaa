"""End-to-end tokenizer + recommender training (ETEGRec, Liu et al., SIGIR 2025).

The RQ-VAE tokenizer and the SID LM train together: alternating phases (one tokenizer epoch
with the recommender frozen, ``cycle - 1`` recommender epochs with the tokenizer frozen) tied by
two alignment losses, sequence-item alignment (SIA) and preference-semantic alignment (PSA);
after each tokenizer epoch every item is re-encoded and the SID LM's table-bound parts rebuilt.
Modules: :mod:`.config` (the ``etegrec`` section), :mod:`.align` (code distributions and the
losses), :mod:`.model` (the SID LM with states, codebook tying), :mod:`.trainer` (the schedule),
:mod:`.collab` (collaborative item embeddings as a tokenizer input).
"""
