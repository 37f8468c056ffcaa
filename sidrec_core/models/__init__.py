"""Recommenders sharing one contract (:class:`sidrec_core.models.base.Recommender`)."""
