"""Drift detectors behind one interface, with two interchangeable backends.

Every detector follows Alibi Detect's split: it is fitted on reference data when it is made,
and ``predict(x)`` answers::

    {"data": {"is_drift": 0 | 1, "p_val": float | list, "distance": float | list,
              "threshold": float, ...},
     "meta": {"backend": ..., "kind": ..., ...}}

so no caller branches on the backend. Two kinds of test:

* ``mmd``: a two-sample test on multivariate data (the model's embeddings): the maximum mean
  discrepancy with a Gaussian kernel and a permutation test.
* ``ks``: one Kolmogorov-Smirnov test per feature (the input statistics) with a
  multiple-testing correction (Bonferroni or Benjamini-Hochberg false discovery rate); it
  also names the features that moved.

Backends (one setting, ``backend=`` or ``MLOPS_DRIFT_BACKEND``):

* ``alibi`` (default, as the project's design names it): Alibi Detect's ``MMDDrift``
  (``backend='pytorch'``) and ``KSDrift``, persisted with ``save_detector``. **Alibi Detect
  0.13 is licensed under the Business Source License 1.1, which does not allow production
  use without a commercial licence from Seldon.**
* ``torch``: this project's own implementation (Apache-2.0), written from the published
  methods, not from Alibi Detect's code: the unbiased MMD² estimate and the kernel two-sample
  test of Gretton et al., *A Kernel Two-Sample Test*, JMLR 13 (2012), with the median
  heuristic for the kernel width and a permutation null distribution whose p-value is
  (1 + #{permuted >= observed}) / (1 + permutations) (Phipson & Smyth, 2010); the
  Kolmogorov-Smirnov test from SciPy (BSD) with Bonferroni or Benjamini & Hochberg (1995).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from components.common.errors import UserError

logger = logging.getLogger(__name__)

BACKENDS = ("alibi", "torch")
KINDS = ("mmd", "ks")
CORRECTIONS = ("bonferroni", "fdr")
CONFIG_FILE = "mlops_detector.json"
LICENCE_NOTE = ("Alibi Detect 0.13 is licensed under the Business Source License 1.1 "
                "(no production use without a licence from Seldon); backend='torch' is "
                "this project's Apache-2.0 implementation.")


class DriftError(UserError, ValueError):
    """Data or settings a detector cannot work with; the message says what to fix."""


def default_backend() -> str:
    """The backend chosen by ``MLOPS_DRIFT_BACKEND`` (``alibi`` when unset)."""
    return check_backend(os.environ.get("MLOPS_DRIFT_BACKEND", "alibi") or "alibi")


def torch_threads() -> int:
    """Torch threads of an MMD test: ``MLOPS_TORCH_THREADS`` when set, else one.

    A permutation test is a hundred small tensor operations (Alibi Detect's runs them one
    permutation at a time); with one thread per core, each waits for every thread of the
    pool, which on a machine whose cores are busy (a monitoring pod of 1-2 CPUs on a shared
    node, CI's two cores) costs seconds per window. The predictor caps ONNX Runtime the same
    way (no spinning threads beside the HTTP server).
    """
    value = os.environ.get("MLOPS_TORCH_THREADS", "")
    try:
        threads = int(value) if value else 1
    except ValueError:
        raise DriftError(f"Invalid MLOPS_TORCH_THREADS={value!r}: expect a number of threads "
                         "(at least 1).") from None
    if threads < 1:
        raise DriftError(f"Invalid MLOPS_TORCH_THREADS={value!r}: expect at least 1.")
    return threads


@contextmanager
def capped_torch_threads():
    """Runs the block on :func:`torch_threads` torch threads, then restores the setting."""
    import torch

    before, threads = torch.get_num_threads(), torch_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise DriftError(f"Unknown drift backend: {backend!r}. Expect one of {BACKENDS} "
                         "(alibi: Alibi Detect, BSL 1.1; torch: this project's, Apache-2.0).")
    return backend


def _as_2d(x, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or len(arr) < 2:
        raise DriftError(f"{what}: expect a 2-D array of at least 2 rows, got shape "
                         f"{arr.shape}.")
    if not np.isfinite(arr).all():
        raise DriftError(f"{what}: contains NaN or infinite values; drop or repair those rows.")
    return arr


class DriftDetector(ABC):
    """A detector fitted on reference data; see the module docstring for ``predict``."""

    backend: str
    kind: str

    def __init__(self, x_ref, *, p_val: float = 0.05, names: list[str] | None = None):
        if not 0 < p_val < 1:
            raise DriftError(f"Invalid p_val: {p_val}. Expect a significance level in (0, 1).")
        self.x_ref = _as_2d(x_ref, "Reference data")
        self.p_val = float(p_val)
        self.names = list(names) if names else [f"f{i}" for i in range(self.x_ref.shape[1])]
        if len(self.names) != self.x_ref.shape[1]:
            raise DriftError(f"{len(self.names)} feature names for {self.x_ref.shape[1]} "
                             "features; give one name per column.")

    def _check_x(self, x) -> np.ndarray:
        arr = _as_2d(x, "Window data")
        if arr.shape[1] != self.x_ref.shape[1]:
            raise DriftError(f"Window data has {arr.shape[1]} features, the reference "
                             f"{self.x_ref.shape[1]}: both must come from the same model.")
        return arr

    @abstractmethod
    def predict(self, x) -> dict:
        """Tests ``x`` against the reference."""

    def _config(self) -> dict:
        return {"backend": self.backend, "kind": self.kind, "p_val": self.p_val,
                "names": self.names}

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Persists the fitted detector in a folder ``load_detector`` reads."""


# --------------------------------------------------------------------------------------------
# Backend "torch": this project's own tests
# --------------------------------------------------------------------------------------------


def _pairwise_sq_dists(a, b):
    import torch

    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return torch.clamp(d, min=0.0)


def median_heuristic(x: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """Kernel width: the median pairwise Euclidean distance (Gretton et al. 2012, sec. 8)."""
    import torch

    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[rng.choice(len(x), max_points, replace=False)]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    d = _pairwise_sq_dists(t, t)
    iu = torch.triu_indices(len(t), len(t), offset=1)
    med = float(torch.sqrt(d[iu[0], iu[1]]).median())
    return med if med > 0 else 1.0


def mmd2_permutation_test(x_ref: np.ndarray, x: np.ndarray, sigma: float,
                          n_permutations: int = 100, seed: int = 0) -> tuple[float, np.ndarray]:
    """Unbiased MMD² between two samples and its permutation null distribution.

    The kernel matrix of the pooled sample is computed once; each permutation relabels the
    pooled points and re-evaluates the unbiased estimate (Gretton et al. 2012, eq. 3) from
    the same matrix, all permutations in one batched product.

    Returns:
        ``(observed MMD², permuted MMD² values)``.
    """
    import torch

    n, m = len(x_ref), len(x)
    z = torch.from_numpy(np.concatenate([x_ref, x]).astype(np.float64))
    k = torch.exp(-_pairwise_sq_dists(z, z) / (2.0 * sigma ** 2))
    k.fill_diagonal_(0.0)  # the unbiased estimate leaves out i == j
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.arange(n + m)] + [torch.randperm(n + m, generator=gen)
                                     for _ in range(n_permutations)]
    a = torch.zeros(len(perms), n + m, dtype=torch.float64)
    for row, p in enumerate(perms):
        a[row, p[:n]] = 1.0  # indicator of the "reference" group under this labelling
    b = 1.0 - a
    ka = a @ k  # [P, N]
    kb = b @ k
    s_xx = (ka * a).sum(1)
    s_yy = (kb * b).sum(1)
    s_xy = (ka * b).sum(1)
    mmd2 = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    values = mmd2.numpy()
    return float(values[0]), values[1:]


def bh_reject(p_values: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Benjamini-Hochberg: which hypotheses are rejected at FDR ``alpha``, and the cut-off."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    k = len(p)
    below = p[order] < alpha * np.arange(1, k + 1) / k
    if not below.any():
        return np.zeros(k, bool), alpha / k
    last = int(np.nonzero(below)[0].max())
    cutoff = alpha * (last + 1) / k
    return p < cutoff, cutoff


class TorchMMD(DriftDetector):
    backend, kind = "torch", "mmd"

    def __init__(self, x_ref, *, p_val: float = 0.05, n_permutations: int = 100,
                 sigma: float | None = None, seed: int = 0, names=None):
        super().__init__(x_ref, p_val=p_val, names=names)
        if n_permutations < 10:
            raise DriftError(f"Invalid n_permutations: {n_permutations}. Expect at least 10 "
                             f"(at least {int(np.ceil(1 / p_val))} to ever reach p < {p_val}).")
        self.n_permutations = int(n_permutations)
        self.seed = int(seed)
        with capped_torch_threads():
            self.sigma = float(sigma) if sigma else median_heuristic(self.x_ref, seed=seed)

    def predict(self, x) -> dict:
        x = self._check_x(x)
        with capped_torch_threads():
            observed, null = mmd2_permutation_test(self.x_ref, x, self.sigma,
                                                   self.n_permutations, self.seed)
        p = (1.0 + float((null >= observed).sum())) / (1.0 + len(null))
        return {"data": {"is_drift": int(p < self.p_val), "p_val": p, "distance": observed,
                         "threshold": self.p_val,
                         "distance_threshold": float(np.quantile(null, 1 - self.p_val))},
                "meta": {"backend": self.backend, "kind": self.kind, "name": "TorchMMD",
                         "sigma": self.sigma, "n_permutations": self.n_permutations,
                         "n_ref": len(self.x_ref), "n": len(x)}}

    def _config(self) -> dict:
        return {**super()._config(), "n_permutations": self.n_permutations, "sigma": self.sigma,
                "seed": self.seed}

    def save(self, path) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "x_ref.npy", self.x_ref)
        (out / CONFIG_FILE).write_text(json.dumps(self._config(), indent=2))


class TorchKS(DriftDetector):
    backend, kind = "torch", "ks"

    def __init__(self, x_ref, *, p_val: float = 0.05, correction: str = "bonferroni",
                 names=None):
        super().__init__(x_ref, p_val=p_val, names=names)
        if correction not in CORRECTIONS:
            raise DriftError(f"Unknown correction: {correction!r}. Expect one of {CORRECTIONS}.")
        self.correction = correction

    def predict(self, x) -> dict:
        from scipy.stats import ks_2samp

        x = self._check_x(x)
        stats, pvals = [], []
        for j in range(x.shape[1]):
            res = ks_2samp(self.x_ref[:, j], x[:, j], alternative="two-sided", method="auto")
            stats.append(float(res.statistic))
            pvals.append(float(res.pvalue))
        p = np.array(pvals)
        if self.correction == "bonferroni":
            threshold = self.p_val / len(p)
            moved = p < threshold
        else:
            moved, threshold = bh_reject(p, self.p_val)
        return _ks_answer(self, p, np.array(stats), moved, threshold, len(x))

    def _config(self) -> dict:
        return {**super()._config(), "correction": self.correction}

    def save(self, path) -> None:
        TorchMMD.save(self, path)


def _ks_answer(det, p, dist, moved, threshold, n) -> dict:
    return {"data": {"is_drift": int(bool(np.any(moved))), "p_val": [float(v) for v in p],
                     "distance": [float(v) for v in dist], "threshold": float(threshold),
                     "drifted": [name for name, m in zip(det.names, moved, strict=True) if m]},
            "meta": {"backend": det.backend, "kind": det.kind, "name": type(det).__name__,
                     "correction": det.correction, "names": det.names,
                     "n_ref": len(det.x_ref), "n": n}}


# --------------------------------------------------------------------------------------------
# Backend "alibi": Alibi Detect (BSL 1.1)
# --------------------------------------------------------------------------------------------


def _alibi():
    try:
        with warnings.catch_warnings():
            # Alibi Detect 0.13 decorates its distances with torch.jit.script, which torch 2.9
            # deprecates: a FutureWarning on every `mlops monitor run`, about code not ours.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* deprecated",
                                    category=FutureWarning)
            import alibi_detect.cd as cd
            import alibi_detect.saving as saving
    except ImportError as exc:
        raise ImportError("The 'alibi' drift backend needs Alibi Detect: pip install "
                          "'alibi-detect[torch]==0.13.0' (BSL 1.1), or choose "
                          "backend='torch'.") from exc
    return cd, saving


class AlibiMMD(DriftDetector):
    backend, kind = "alibi", "mmd"

    def __init__(self, x_ref, *, p_val: float = 0.05, n_permutations: int = 100, names=None,
                 _detector=None):
        super().__init__(x_ref, p_val=p_val, names=names)
        self.n_permutations = int(n_permutations)
        cd, _ = _alibi()
        with capped_torch_threads():
            self._cd = _detector or cd.MMDDrift(self.x_ref, backend="pytorch",
                                                p_val=self.p_val,
                                                n_permutations=self.n_permutations,
                                                device="cpu")

    def predict(self, x) -> dict:
        x = self._check_x(x)
        with capped_torch_threads():
            out = self._cd.predict(x)
        d = out["data"]
        return {"data": {"is_drift": int(d["is_drift"]), "p_val": float(d["p_val"]),
                         "distance": float(d["distance"]), "threshold": float(d["threshold"]),
                         "distance_threshold": float(d["distance_threshold"])},
                "meta": {"backend": self.backend, "kind": self.kind,
                         "name": out["meta"].get("name"), "version": out["meta"].get("version"),
                         "n_permutations": self.n_permutations, "n_ref": len(self.x_ref),
                         "n": len(x), "licence": "BSL-1.1"}}

    def _config(self) -> dict:
        return {**super()._config(), "n_permutations": self.n_permutations}

    def save(self, path) -> None:
        _, saving = _alibi()
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        saving.save_detector(self._cd, out / "alibi")
        np.save(out / "x_ref.npy", self.x_ref)
        (out / CONFIG_FILE).write_text(json.dumps(self._config(), indent=2))


class AlibiKS(DriftDetector):
    backend, kind = "alibi", "ks"

    def __init__(self, x_ref, *, p_val: float = 0.05, correction: str = "bonferroni",
                 names=None, _detector=None):
        super().__init__(x_ref, p_val=p_val, names=names)
        if correction not in CORRECTIONS:
            raise DriftError(f"Unknown correction: {correction!r}. Expect one of {CORRECTIONS}.")
        self.correction = correction
        cd, _ = _alibi()
        self._cd = _detector or cd.KSDrift(self.x_ref, p_val=self.p_val, correction=correction)

    def predict(self, x) -> dict:
        x = self._check_x(x)
        d = self._cd.predict(x, drift_type="batch", return_p_val=True,
                             return_distance=True)["data"]
        p = np.asarray(d["p_val"], dtype=float).reshape(-1)
        # The corrected per-feature cut-off; with FDR and nothing significant, Alibi Detect
        # returns every candidate cut-off, of which the smallest applies to the first rank.
        threshold = float(np.min(d["threshold"]))
        moved = p < threshold
        return _ks_answer(self, p, np.asarray(d["distance"], dtype=float), moved, threshold,
                          len(x))

    def _config(self) -> dict:
        return {**DriftDetector._config(self), "correction": self.correction}

    def save(self, path) -> None:
        AlibiMMD.save(self, path)


# --------------------------------------------------------------------------------------------
# Making and loading detectors
# --------------------------------------------------------------------------------------------

_CLASSES = {("alibi", "mmd"): AlibiMMD, ("alibi", "ks"): AlibiKS,
            ("torch", "mmd"): TorchMMD, ("torch", "ks"): TorchKS}


def make_detector(kind: str, x_ref, *, backend: str | None = None, p_val: float = 0.05,
                  **options) -> DriftDetector:
    """A detector of ``kind`` (``mmd`` or ``ks``) fitted on ``x_ref``.

    Args:
        kind: ``mmd`` for embeddings, ``ks`` for per-feature statistics.
        x_ref: Reference data, ``[n, features]``.
        backend: ``alibi`` or ``torch``; None reads ``MLOPS_DRIFT_BACKEND`` (default alibi).
        p_val: Significance level of the test (the family-wise level for ``ks``).
        **options: ``n_permutations`` (mmd), ``correction`` (ks), ``names``, ``seed``
            (torch mmd).
    """
    backend = check_backend(backend) if backend else default_backend()
    if kind not in KINDS:
        raise DriftError(f"Unknown detector kind: {kind!r}. Expect one of {KINDS}.")
    if backend == "alibi":
        options.pop("seed", None)
    return _CLASSES[(backend, kind)](x_ref, p_val=p_val, **options)


def saved_settings(path: str | os.PathLike) -> dict:
    """The settings of a detector saved with ``DriftDetector.save`` (``backend``, ``kind``,
    ``p_val``, …), read without loading it (nor its backend's library)."""
    folder = Path(path)
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except FileNotFoundError as exc:
        raise DriftError(f"{folder} holds no saved detector ({CONFIG_FILE} is missing).") from exc


def load_detector(path: str | os.PathLike) -> DriftDetector:
    """Loads a detector saved with ``DriftDetector.save`` (either backend)."""
    folder = Path(path)
    config = saved_settings(folder)
    backend, kind = config.pop("backend"), config.pop("kind")
    x_ref = np.load(folder / "x_ref.npy")
    if backend == "alibi":
        _, saving = _alibi()
        config["_detector"] = saving.load_detector(folder / "alibi")
    return _CLASSES[(check_backend(backend), kind)](x_ref, **config)
