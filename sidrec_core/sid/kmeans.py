"""faiss k-means helpers shared by every SID tokenizer: input checks, one k-means fit, nearest
code search and the residual k-means pass (RQ-KMeans, as in OneRec, arXiv:2502.18965, and the
k-means initialisation of RQ-VAE codebooks in TIGER, arXiv:2305.05065).

Vectors are float32 [N, D]; codebooks are float32 [K, D] per level.
"""

from __future__ import annotations

import faiss
import numpy as np

# faiss chooses its SIMD kernels (AVX512, AVX2, scalar) by CPU at run time, and they round
# differently. On Beauty's shipped embeddings, RQ-KMeans gives the same SID table at seed 0 under
# all three but three different tables at seeds 1 and 2 (experiments/reproducibility.md). The scalar
# path is the same machine code on every x86-64 CPU, so every faiss call here runs it: a SID table
# is then a function of its inputs on any such CPU. Beauty's fit time did not measurably change.
REPRODUCIBLE_SIMD = faiss.SIMDLevel_NONE


def pin_simd() -> None:
    """Run faiss' scalar kernels (process-wide; only the SID code uses faiss)."""
    faiss.SIMDConfig.set_level(REPRODUCIBLE_SIMD)


def check_vectors(x: np.ndarray, codebook_size: int, name: str = "embeddings") -> np.ndarray:
    """Validate ``x`` [N, D] for quantisation with ``codebook_size`` codes -> float32 copy.

    Errors name the offending parameter: non-finite rows (``embeddings``) and fewer items than
    codes (``sid.codebook_size``), which would leave codes with no possible member.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, D] array, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{name}: {int(bad.any(axis=1).sum())} row(s) contain NaN/inf (first at row {row})"
        )
    if codebook_size < 2:
        raise ValueError(f"sid.codebook_size must be >= 2, got {codebook_size}")
    if x.shape[0] < codebook_size:
        raise ValueError(
            f"sid.codebook_size={codebook_size} exceeds the number of items ({x.shape[0]}): "
            "every code needs at least one item; lower sid.codebook_size"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def set_faiss_threads(num_threads: int) -> None:
    """Limit faiss' OpenMP threads (0 leaves the default)."""
    if num_threads > 0:
        faiss.omp_set_num_threads(num_threads)


def kmeans(
    x: np.ndarray, k: int, *, seed: int, niter: int = 20, spherical: bool = False
) -> np.ndarray:
    """One faiss k-means fit: ``x`` [N, D] -> centroids float32 [K, D] (unit rows if
    ``spherical``).

    ``max_points_per_centroid`` is raised so faiss never silently subsamples (it would drop
    items above 256 per centroid and make the codebook depend on the sample).
    """
    pin_simd()
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=int(seed) % (2**31),
        verbose=False,
        max_points_per_centroid=max(256, -(-x.shape[0] // k)),
        min_points_per_centroid=1,
        spherical=spherical,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by L2: ``x`` [N, D], ``centroids`` [K, D] -> (codes int64 [N],
    squared distances float32 [N])."""
    pin_simd()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64), dist[:, 0]


def all_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared L2 distances ``x`` [N, D] to every centroid [K, D] -> float32 [N, K]."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    d = (x * x).sum(1, keepdims=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero) -> float32 [N, D]."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def member_means(x: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Mean of the rows of ``x`` [N, D] assigned to each code -> float32 [K, D] (0 if empty)."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, x)
    counts = np.bincount(codes, minlength=k)[:, None]
    return (sums / np.maximum(counts, 1)).astype(np.float32)


def residual_kmeans(
    x: np.ndarray,
    num_levels: int,
    codebook_size: int,
    *,
    seed: int,
    niter: int = 20,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual k-means: level m clusters what levels < m left unexplained.

    With ``normalize`` each level clusters the residual *directions* (unit rows, cosine
    k-means as in ViT-VQGAN's l2-normalised codes, Yu et al. 2021) and reconstructs with the
    mean raw residual of each cluster: small and large residuals then spread over the codes
    instead of all small ones sharing the near-zero centroid, which lowers collisions.

    ``x`` [N, D] -> (assignment centroids [M, K, D], reconstruction codebooks [M, K, D],
    codes int64 [N, M]); without ``normalize`` both codebooks are the same.
    """
    residual = np.array(x, dtype=np.float32, copy=True)
    shape = (num_levels, codebook_size, x.shape[1])
    centroids, codebooks = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    codes = np.zeros((x.shape[0], num_levels), dtype=np.int64)
    for level in range(num_levels):
        space = unit_rows(residual) if normalize else residual
        centroids[level] = kmeans(
            space, codebook_size, seed=seed + level, niter=niter, spherical=normalize
        )
        codes[:, level], _ = nearest(space, centroids[level])
        codebooks[level] = (
            member_means(residual, codes[:, level], codebook_size)
            if normalize
            else centroids[level]
        )
        residual -= codebooks[level][codes[:, level]]
    return centroids, codebooks, codes
