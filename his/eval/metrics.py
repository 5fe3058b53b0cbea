"""Distances and scores on feature arrays (float, one row per image); no networks here.

FID and KID follow Heusel et al. (2017) and Binkowski et al. (2018, "Demystifying MMD GANs"): the Fréchet
distance between Gaussians fitted to two feature sets, and the unbiased squared MMD with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.stats
import torch

from his.probe import fit_linear_probe


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """FID between feature sets x (n, d) and y (m, d); n, m >= 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    # With fewer samples than dimensions the covariances are singular and sqrtm of their product is
    # ill-conditioned; both get the same ridge, far below the features' scale (the distance is then the exact
    # one between the two ridged Gaussians, still 0 for identical sets).
    ridge = 1e-6 * max(np.trace(cov_x), np.trace(cov_y), 1e-12) / len(mu_x) * np.eye(len(mu_x))
    cov_x, cov_y = cov_x + ridge, cov_y + ridge
    # The product of two PSD matrices has real non-negative eigenvalues, so an imaginary part is round-off.
    covmean = np.real(scipy.linalg.sqrtm(cov_x @ cov_y))
    distance = np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(covmean)
    return float(max(distance, 0.0))


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float(
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2 * k_xy.mean()
    )


def kernel_distance(
    x: np.ndarray, y: np.ndarray, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0
) -> float:
    """KID: unbiased polynomial-kernel MMD^2 between feature sets x (n, d) and y (m, d); n, m >= 2.

    When both sets fit in one subset the estimate uses them whole (one exact value); otherwise it is the mean
    over `n_subsets` random subsets of `subset_size` drawn from each set with a fixed seed.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) <= subset_size and len(y) <= subset_size:
        return _polynomial_mmd2_unbiased(x, y)
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(x), len(y))
    estimates = [
        _polynomial_mmd2_unbiased(
            x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)]
        )
        for _ in range(n_subsets)
    ]
    return float(np.mean(estimates))


def _distance_sum(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> float:
    """Sum of all Euclidean distances between rows of a and rows of b, in chunks to bound memory."""
    b_t = torch.from_numpy(np.asarray(b, np.float64))
    total = 0.0
    for start in range(0, len(a), chunk):
        a_t = torch.from_numpy(np.asarray(a[start : start + chunk], np.float64))
        total += torch.cdist(a_t, b_t).sum().item()
    return total


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over all unordered pairs of distinct rows; nan with fewer than two rows."""
    n = len(features)
    if n < 2:
        return float("nan")
    return _distance_sum(features, features) / (n * (n - 1))


def diversity(samples: np.ndarray) -> tuple[float, float]:
    """Spread of generated features samples (S sounds, K samples, d) of one class.

    Returns (mean pairwise distance among the K samples of one sound, averaged over sounds;
    mean distance between samples of different sounds). Either is nan where no such pair exists.
    """
    n_sounds, k, _ = samples.shape
    within_sums = [_distance_sum(s, s) for s in samples]
    within = float(np.mean(within_sums) / (k * (k - 1))) if k >= 2 else float("nan")
    if n_sounds < 2:
        return within, float("nan")
    flat = samples.reshape(n_sounds * k, -1)
    across_pairs = (n_sounds * k) ** 2 - n_sounds * k * k
    across = (_distance_sum(flat, flat) - sum(within_sums)) / across_pairs
    return within, float(across)


def retrieval_recall(
    queries: np.ndarray,
    query_targets: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: tuple[int, ...] = (1, 5),
    exclude_self: bool = False,
) -> dict[str, float]:
    """Rank gallery rows by Euclidean distance to each query; recall@k of its own row and of its class.

    queries (q, d); query_targets (q,): the index of each query's own gallery row; gallery (g, d) with labels
    (g,). With `exclude_self` each query's own row is left out of its ranking (queries that are gallery rows).
    Returns {"own_r1": ..., "class_r1": ..., "own_r5": ..., "class_r5": ...}.
    """
    query_targets = np.asarray(query_targets)
    gallery_labels = np.asarray(gallery_labels)
    distances = torch.cdist(
        torch.from_numpy(np.asarray(queries, np.float64)), torch.from_numpy(np.asarray(gallery, np.float64))
    )
    if exclude_self:
        distances[torch.arange(len(queries)), torch.from_numpy(query_targets)] = float("inf")
    k_max = min(max(ks), gallery.shape[0] - int(exclude_self))
    # a stable sort so ties (identical features) rank by gallery index, the same on every run
    ranked = torch.sort(distances, dim=1, stable=True).indices[:, :k_max].numpy()
    own_hit = ranked == query_targets[:, None]
    class_hit = gallery_labels[ranked] == gallery_labels[query_targets][:, None]
    recall = {}
    for k in ks:
        recall[f"own_r{k}"] = float(own_hit[:, :k].any(1).mean())
        recall[f"class_r{k}"] = float(class_hit[:, :k].any(1).mean())
    return recall


def nearest_rows(queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """For each query row, the indices of its k nearest gallery rows by Euclidean distance, nearest first:
    int (q, k). Ties rank by gallery index (a stable sort), so the answer is the same on every run."""
    gallery_t = torch.from_numpy(np.asarray(gallery, np.float64))
    k = min(k, len(gallery_t))
    found = []
    for start in range(0, len(queries), chunk):
        distances = torch.cdist(torch.from_numpy(np.asarray(queries[start : start + chunk], np.float64)), gallery_t)
        found.append(torch.sort(distances, dim=1, stable=True).indices[:, :k].numpy())
    return np.concatenate(found) if found else np.zeros((0, k), np.int64)


def nearest_distance(queries: np.ndarray, gallery: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """For each query row, the Euclidean distance to its nearest gallery row: float (q,)."""
    gallery_t = torch.from_numpy(np.asarray(gallery, np.float32))
    out = [torch.cdist(torch.from_numpy(np.asarray(queries[start : start + chunk], np.float32)), gallery_t).amin(1)
           for start in range(0, len(queries), chunk)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; nan when either side is constant or there are fewer than three pairs."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


def within_class_spearman(truth: np.ndarray, predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the Spearman between truth and predicted among that class's rows (nan classes skipped)."""
    values = [spearman(truth[labels == c], predicted[labels == c]) for c in np.unique(labels)]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def within_class_spearman_interval(truth: np.ndarray, predicted: np.ndarray, labels: np.ndarray,
                                   n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `within_class_spearman`, resampling the rows of each class with
    replacement (stratified, so every resample keeps each class's size). With ~20 clips a class, a Spearman's
    standard error is ~0.2: without the interval two runs' figures cannot be told apart."""
    truth, predicted, labels = np.asarray(truth), np.asarray(predicted), np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    stats = []
    for _ in range(n_resamples):
        rows = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        stats.append(within_class_spearman(truth[rows], predicted[rows], labels[rows]))
    stats = np.asarray(stats)
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def mean_interval(values: np.ndarray, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one per held-out clip), by scipy.stats.bootstrap."""
    values = np.asarray(values, np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return float(values.mean()), float(values.mean())
    ci = scipy.stats.bootstrap((values,), np.mean, confidence_level=level, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                 l2: float = 1e-3, steps: int = 100) -> np.ndarray:
    """The classes a multinomial logistic regression fitted on (train_x, train_y) reads in test_x: what a linear
    reader of the features hears (his.probe)."""
    weight, bias = fit_linear_probe(np.asarray(train_x), np.asarray(train_y), n_classes, l2, steps)
    with torch.no_grad():
        return (torch.as_tensor(np.asarray(test_x), dtype=torch.float64) @ weight + bias).argmax(1).numpy()


def heard_class_ceiling(heard: np.ndarray, labels: np.ndarray, frame_predicted: np.ndarray) -> float:
    """The conditional accuracy of an ideal generator that draws, for each test sound i, a real test frame of the
    class heard_i it hears: the mean over sounds of the share of real test frames of class heard_i that the frame
    classifier reads as labels_i (frame_predicted: its class for each real test frame, labels their classes).
    Below the real-frame ceiling by what the sound does not tell of its class. Sounds heard as a class that has
    no test frames are left out (there is no real frame of it to read)."""
    heard, labels, frame_predicted = (np.asarray(a, np.int64) for a in (heard, labels, frame_predicted))
    n = int(max(heard.max(), labels.max(), frame_predicted.max())) + 1
    confusion = np.full((n, n), np.nan)  # confusion[k, j]: share of real frames of class k read as j
    for k in np.unique(labels):
        confusion[k] = np.bincount(frame_predicted[labels == k], minlength=n) / (labels == k).sum()
    return float(np.nanmean(confusion[heard, labels]))
