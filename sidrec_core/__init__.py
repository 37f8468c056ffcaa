"""sidrec: semantic-ID generative recommendation benchmark harness."""
