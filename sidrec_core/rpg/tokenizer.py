"""Long unordered semantic IDs by optimised product quantisation (OPQ; Ge et al., TPAMI 2014), as
RPG tokenises items (Hou et al., KDD 2025; facebookresearch/RPG_KDD2025:
genrec/models/RPG/tokenizer.py, faiss ``OPQ{M},IVF1,PQ{M}x8`` trained on the items of the training
sequences, every item then encoded).

OPQ learns an orthogonal rotation R of the item embeddings x [N, D] so that a product quantiser
over M contiguous sub-vectors of xR loses the least; each item's SID is its M sub-vector codes,
digit m in 0..K-1. The digits are unordered: no digit refines another, so a model can predict all
M at once. ``rotation: none`` is a plain product quantiser over the raw coordinates (the baseline
OPQ improves on).

``pca_dim > 0`` first projects the embeddings on their top ``pca_dim`` principal axes, whitened
(unit variance per axis), as RPG does before OPQ (sklearn ``PCA(n_components=sent_emb_pca,
whiten=True)``: 3072 -> 512 for OpenAI text-embedding-3-large, 768 -> 128 for sentence-t5-base;
genrec/models/RPG/tokenizer.py ``_init_tokenizer``, config.yaml ``sent_emb_pca``). Whitening gives
every kept direction equal weight in the quantisation error, so the low-variance directions get
codes too.

Duplicate SIDs (two items with the same M codes) are counted before resolution; with
``resolve_duplicates`` each later member of a group (by item id) moves the one digit whose
next-nearest code costs it the least squared error, repeated until every SID is unique (see
:func:`resolve_duplicates`). With M = 32 x 8 bits duplicates only come from (near-)identical
embeddings.

faiss runs its scalar kernels (:func:`sidrec_core.sid.kmeans.pin_simd`) and seeded k-means, so a
table is a function of (embeddings, config, seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from sidrec_core.io import reading, save_npy, save_npz, write_json
from sidrec_core.sid.collisions import group_ids
from sidrec_core.sid.kmeans import check_vectors, pin_simd
from sidrec_core.sid.quality import collision_rate, gini, max_bucket, perplexity, utilization

ROTATIONS = ("opq", "none")
TRAIN_ON = ("train_items", "all")
TOKENIZER_FILE = "opq.npz"


@dataclasses.dataclass(frozen=True)
class OPQConfig:
    """``rpg.sid`` section: the RPG tokenizer (``build_rpg_sids``)."""

    num_codebooks: int = 32  # M digits per item; the paper's Beauty value (README command)
    codebook_size: int = 256  # K codes per digit, a power of 2 (faiss' PQ{M}x{log2 K})
    rotation: Literal["opq", "none"] = "opq"
    opq_iters: int = 50  # faiss OPQMatrix.niter (its default)
    pq_iters: int = 25  # k-means iterations of the final product quantiser (faiss default 25)
    # fit on the items of the training sequences only, as RPG does (valid/test-only items are
    # encoded, never fitted on), or on every item
    train_on: Literal["train_items", "all"] = "train_items"
    resolve_duplicates: bool = True
    # whitened PCA to this many dimensions before OPQ, as RPG (0 = off: the raw embeddings);
    # fitted on the ``train_on`` rows, where RPG fits it on every item's text
    pca_dim: int = 0
    embeddings: str = "data/embeddings.npy"
    output_dir: str = "data/sids_rpg"

    def __post_init__(self) -> None:
        if self.rotation not in ROTATIONS:
            raise ValueError(f"sid.rotation: unknown {self.rotation!r}; valid: {ROTATIONS}")
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"sid.train_on: unknown {self.train_on!r}; valid: {TRAIN_ON}")
        if self.num_codebooks < 1:
            raise ValueError(f"sid.num_codebooks must be >= 1, got {self.num_codebooks}")
        bits = math.log2(self.codebook_size) if self.codebook_size > 0 else 0.5
        if not (bits.is_integer() and 1 <= bits <= 8):
            raise ValueError(
                f"sid.codebook_size must be a power of 2 in [2, 256], got {self.codebook_size}"
            )
        for name in ("opq_iters", "pq_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"sid.{name} must be >= 1, got {getattr(self, name)}")
        if self.pca_dim < 0 or self.pca_dim % self.num_codebooks:
            raise ValueError(
                f"sid.pca_dim must be 0 or a positive multiple of sid.num_codebooks "
                f"({self.num_codebooks}), got {self.pca_dim}"
            )

    @property
    def nbits(self) -> int:
        return int(math.log2(self.codebook_size))


def unpack_codes(packed: np.ndarray, num_codebooks: int, nbits: int) -> np.ndarray:
    """faiss PQ codes (uint8 [N, code_size], each code ``nbits`` wide, least significant bit
    first, as faiss' BitstringWriter packs them) -> int64 [N, M]."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, : num_codebooks * nbits]
    weights = (1 << np.arange(nbits, dtype=np.int64))[None, None]
    return (bits.reshape(len(packed), num_codebooks, nbits).astype(np.int64) * weights).sum(-1)


class OPQTokenizer:
    """``fit(x)``, ``encode(x) -> codes [N, M]``, ``decode(codes) -> x̂ [N, D_in]`` (in the
    input space), ``save``/``load``. State: the whitening (``mean`` [D_in], ``projection``
    [D_in, D], ``unprojection`` [D, D_in]; None without ``pca_dim``, D = D_in), the rotation
    R [D, D] (identity for ``rotation: none``) and the centroids [M, K, D / M] of the rotated
    sub-spaces."""

    def __init__(self, cfg: OPQConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None
        self.unprojection: np.ndarray | None = None
        self.rotation: np.ndarray | None = None  # [D, D]: x_rot = x @ rotation.T
        self.centroids: np.ndarray | None = None  # [M, K, D / M]

    def _fit_whitening(self, x: np.ndarray) -> None:
        """Top ``pca_dim`` principal axes of ``x`` [N, D_in], each scaled to unit variance."""
        dim = self.cfg.pca_dim
        if dim > min(x.shape):
            raise ValueError(
                f"rpg.sid.pca_dim={dim} exceeds the embeddings' rank bound {min(x.shape)} "
                f"({x.shape[0]} items x {x.shape[1]} dimensions)"
            )
        x64 = np.asarray(x, dtype=np.float64)
        mean = x64.mean(0)
        _, sing, vt = np.linalg.svd(x64 - mean, full_matrices=False)
        std = np.maximum(sing[:dim] / math.sqrt(max(len(x) - 1, 1)), 1e-12)
        axes = vt[:dim].T  # [D_in, D]
        self.mean = mean.astype(np.float32)
        self.projection = np.ascontiguousarray(axes / std, dtype=np.float32)
        self.unprojection = np.ascontiguousarray((axes * std).T, dtype=np.float32)

    def project(self, x: np.ndarray) -> np.ndarray:
        """x [N, D_in] -> the whitened principal components [N, D] (x itself without
        ``pca_dim``)."""
        x = np.asarray(x, dtype=np.float32)
        if self.projection is None:
            return x
        assert self.mean is not None
        return np.ascontiguousarray((x - self.mean) @ self.projection, dtype=np.float32)

    def _check_dim(self, dim: int) -> None:
        if dim % self.cfg.num_codebooks:
            raise ValueError(
                f"rpg.sid.num_codebooks={self.cfg.num_codebooks} must divide the embedding "
                f"dimension {dim}"
            )

    def fit(self, x: np.ndarray) -> OPQTokenizer:
        """Learn R and the centroids from ``x`` [N, D]."""
        cfg = self.cfg
        x = check_vectors(x, cfg.codebook_size)
        if cfg.pca_dim:
            self._fit_whitening(x)
            x = self.project(x)
        self._check_dim(x.shape[1])
        pin_simd()
        dim, seed = x.shape[1], int(self.seed) % (2**31)
        if cfg.rotation == "opq":
            if len(x) < dim:  # faiss aborts the process on this (an assertion in C++)
                raise ValueError(
                    f"rpg.sid.rotation=opq needs at least as many training items as dimensions, "
                    f"got {len(x)} items x {dim} dimensions (lower rpg.sid.pca_dim or use "
                    "rotation none)"
                )
            opq = faiss.OPQMatrix(dim, cfg.num_codebooks)
            opq.niter = cfg.opq_iters
            # the PQ inside OPQ's alternation: our width and seed (faiss' own would be 8 bits,
            # seed 1234); the rotation's random start is faiss' fixed seed
            inner = faiss.ProductQuantizer(dim, cfg.num_codebooks, cfg.nbits)
            inner.cp.seed = seed
            opq.pq = inner
            opq.max_train_points = max(opq.max_train_points, len(x))  # never subsample
            opq.train(x)
            rotation = faiss.vector_to_array(opq.A).reshape(dim, dim)
        else:
            rotation = np.eye(dim, dtype=np.float32)
        xr = np.ascontiguousarray(x @ rotation.T, dtype=np.float32)
        pq = faiss.ProductQuantizer(dim, cfg.num_codebooks, cfg.nbits)
        pq.cp.seed, pq.cp.niter = seed, cfg.pq_iters
        pq.cp.max_points_per_centroid = max(256, -(-len(x) // cfg.codebook_size))
        pq.train(xr)
        self.rotation = np.ascontiguousarray(rotation, dtype=np.float32)
        self.centroids = faiss.vector_to_array(pq.centroids).reshape(
            cfg.num_codebooks, cfg.codebook_size, dim // cfg.num_codebooks
        )
        return self

    def _pq(self) -> faiss.ProductQuantizer:
        if self.centroids is None or self.rotation is None:
            raise RuntimeError("OPQTokenizer: call fit() or load() first")
        pin_simd()
        pq = faiss.ProductQuantizer(self.rotation.shape[0], self.cfg.num_codebooks, self.cfg.nbits)
        faiss.copy_array_to_vector(self.centroids.ravel(), pq.centroids)
        return pq

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """x [N, D_in] -> project(x) R^T [N, D] (the space the centroids live in)."""
        assert self.rotation is not None
        return np.ascontiguousarray(self.project(x) @ self.rotation.T)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Nearest code per sub-space: x [N, D_in] -> int64 [N, M]."""
        x = np.asarray(x)
        if self.projection is None:
            self._check_dim(x.shape[1])
        elif x.shape[1] != self.projection.shape[0]:
            raise ValueError(
                f"OPQTokenizer: embeddings have {x.shape[1]} dimensions, the whitening was "
                f"fitted on {self.projection.shape[0]}"
            )
        packed = self._pq().compute_codes(self.rotate(x))
        return unpack_codes(packed, self.cfg.num_codebooks, self.cfg.nbits)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes [N, M] -> reconstructions [N, D_in] in the input space."""
        assert self.centroids is not None and self.rotation is not None
        parts = [self.centroids[m, codes[:, m]] for m in range(codes.shape[1])]
        x = np.concatenate(parts, axis=1) @ self.rotation
        if self.unprojection is None:
            return x
        return x @ self.unprojection + self.mean

    def reconstruction_mse(self, x: np.ndarray, codes: np.ndarray) -> float:
        """Mean over items of ||x - decode(codes)||^2."""
        return float(((np.asarray(x, np.float64) - self.decode(codes)) ** 2).sum(1).mean())

    def save(self, directory: str | Path) -> None:
        assert self.centroids is not None and self.rotation is not None
        whitening = {}
        if self.projection is not None:
            whitening = {
                "mean": self.mean,
                "projection": self.projection,
                "unprojection": self.unprojection,
            }
        save_npz(
            Path(directory) / TOKENIZER_FILE,
            rotation=self.rotation,
            centroids=self.centroids,
            **whitening,
        )

    @classmethod
    def load(cls, directory: str | Path, cfg: OPQConfig) -> OPQTokenizer:
        path = Path(directory) / TOKENIZER_FILE
        with reading(path, "re-run build_rpg_sids (dvc repro build_rpg_sids)"):
            state = np.load(path, allow_pickle=False)
            rotation, centroids = state["rotation"], state["centroids"]
            whitening = {k: state[k] for k in ("mean", "projection", "unprojection") if k in state}
        if centroids.shape[:2] != (cfg.num_codebooks, cfg.codebook_size):
            raise ValueError(
                f"{path} holds {centroids.shape[0]} x {centroids.shape[1]} codebooks, rpg.sid "
                f"asks for {cfg.num_codebooks} x {cfg.codebook_size}: re-run build_rpg_sids"
            )
        if bool(whitening) != bool(cfg.pca_dim):
            raise ValueError(
                f"{path} was fitted with{'out' if not whitening else ''} PCA whitening, rpg.sid."
                f"pca_dim is {cfg.pca_dim}: re-run build_rpg_sids"
            )
        tok = cls(cfg)
        tok.rotation, tok.centroids = rotation, centroids
        if whitening:
            tok.mean, tok.projection = whitening["mean"], whitening["projection"]
            tok.unprojection = whitening["unprojection"]
        return tok


def resolve_duplicates(
    codes: np.ndarray, x_rot: np.ndarray, centroids: np.ndarray
) -> tuple[np.ndarray, int]:
    """Make every row of ``codes`` [N, M] unique; -> (codes, digits changed).

    In each group of items sharing a SID the first (lowest row) keeps it; every other member,
    in row order, takes the unused SID nearest to its own: over all (digit m, code c != its
    code), the one change with the smallest increase of ||x_rot[m-th sub-vector] - c||^2, then
    the second smallest, ... until the SID is free. ``x_rot`` [N, D] are the rotated vectors,
    ``centroids`` [M, K, D / M]. Pure and deterministic (stable sorts, ties by digit then code).
    """
    codes = np.array(codes, dtype=np.int64, copy=True)
    inverse, counts = group_ids(codes)
    dup_rows = np.flatnonzero(counts[inverse] > 1)
    if len(dup_rows) == 0:
        return codes, 0
    taken = {tuple(row) for row in codes}
    seen_groups: set[int] = set()
    num_m, num_k, dsub = centroids.shape
    changed = 0
    for row in dup_rows:
        group = int(inverse[row])
        if group not in seen_groups:  # the group's first member keeps its SID
            seen_groups.add(group)
            continue
        sub = x_rot[row].reshape(num_m, 1, dsub)
        dist = ((centroids - sub) ** 2).sum(-1)  # [M, K]
        own = dist[np.arange(num_m), codes[row]]
        cost = (dist - own[:, None]).ravel()
        cost[np.arange(num_m) * num_k + codes[row]] = np.inf
        for flat in np.argsort(cost, kind="stable"):
            if not np.isfinite(cost[flat]):
                raise ValueError(
                    f"rpg.sid: every SID one digit away from row {row}'s is taken; raise "
                    "rpg.sid.num_codebooks or rpg.sid.codebook_size"
                )
            candidate = codes[row].copy()
            candidate[flat // num_k] = flat % num_k
            if tuple(candidate) not in taken:
                taken.add(tuple(candidate))
                codes[row] = candidate
                changed += 1
                break
    return codes, changed


def opq_quality(raw: np.ndarray, final: np.ndarray, codebook_size: int) -> dict[str, object]:
    """Per-digit utilisation (used codes / K) and perplexity (exp of the code-usage entropy; K
    = perfectly even) of the resolved table, duplicates before and after resolution."""
    util = utilization(final, [codebook_size] * final.shape[1])
    perp = perplexity(final)
    return {
        "utilization": util,
        "perplexity": perp,
        "utilization_mean": float(np.mean(util)),
        "utilization_min": float(np.min(util)),
        "perplexity_mean": float(np.mean(perp)),
        "perplexity_min": float(np.min(perp)),
        "collision_rate_before": collision_rate(raw),
        "collision_rate_after": collision_rate(final),
        "duplicate_items_before": int((group_ids(raw)[1] - 1).sum()),
        "max_bucket": max_bucket(raw),
        "gini": gini(group_ids(final)[1]),
    }


def build_opq_table(
    x: np.ndarray, cfg: OPQConfig, seed: int, fit_rows: np.ndarray | None = None
) -> tuple[np.ndarray, OPQTokenizer, dict[str, object]]:
    """Fit on ``x[fit_rows]`` (all rows when None), encode every row, resolve duplicates ->
    (codes int64 [N + 1, M] with row 0 = padding -1, tokenizer, quality + timing figures)."""
    start = time.perf_counter()
    tok = OPQTokenizer(cfg, seed).fit(x if fit_rows is None else x[fit_rows])
    fit_seconds = time.perf_counter() - start
    raw = tok.encode(x)
    final, changed = raw, 0
    if cfg.resolve_duplicates:
        final, changed = resolve_duplicates(raw, tok.rotate(x), tok.centroids)
    metrics = opq_quality(raw, final, cfg.codebook_size)
    metrics.update(
        fit_seconds=fit_seconds,
        fit_items=int(len(x) if fit_rows is None else len(fit_rows)),
        digits_changed=changed,
        recon_mse=tok.reconstruction_mse(x, final),
        recon_mse_raw=tok.reconstruction_mse(x, raw),
    )
    table = np.concatenate([np.full((1, raw.shape[1]), -1, dtype=np.int64), final])
    return table, tok, metrics


def save_table(directory: str | Path, codes: np.ndarray, cfg: OPQConfig) -> None:
    """``codes.npy`` [N + 1, M] (row 0 = -1) and ``meta.json``: the layout
    :meth:`sidrec_core.sid.table.SIDTable.load` reads (no ``sids.json``: 32 tokens an item)."""
    directory = Path(directory)
    save_npy(directory / "codes.npy", codes)
    write_json(
        directory / "meta.json",
        {
            "codebook_sizes": [cfg.codebook_size] * cfg.num_codebooks,
            "num_items": int(len(codes) - 1),
            "num_levels": cfg.num_codebooks,
            "ordered": False,
            "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        },
    )
