"""Model training: preprocessing, feature scaling, augmentation, hyperparameter search.

Plain Python over torch/torchvision; no KFP types. A trained model is saved as a folder:

    model.pt      the state dict
    model.json    architecture, classes, input size, normalisation (computed on the training
                  split), hyperparameters, dataset version, training history, validation score
    curve.png     the training curve
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from components.common.errors import UserError
from components.common.images import preprocess_image
from components.common.storage import open_store, sha256_bytes
from components.ingest.shards import split_images
from components.train import distributed

logger = logging.getLogger(__name__)

ARCHITECTURES = ("small_cnn", "mobilenet_v3_small", "resnet18")


class TrainError(UserError, ValueError):
    """Training input that cannot work; the message says what to fix."""


@dataclass(frozen=True)
class HParams:
    """One training configuration.

    Attributes:
        arch: ``small_cnn`` (default, sized for CPU), ``mobilenet_v3_small`` or ``resnet18``.
        lr: AdamW learning rate.
        batch_size: Mini-batch size.
        weight_decay: AdamW weight decay.
        epochs: Maximum epochs.
        patience: Early stopping: epochs without a better validation loss before stopping.
        image_size: Side of the square network input, in pixels.
        seed: Seeds Python, NumPy and torch; CPU runs are bit-for-bit repeatable.
        pretrained: Optional path or URI of a state dict to start from (never downloaded).
    """

    arch: str = "small_cnn"
    lr: float = 2e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    epochs: int = 8
    patience: int = 3
    image_size: int = 64
    seed: int = 0
    pretrained: str = ""

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise TrainError(f"Unknown architecture: {self.arch!r}. Expect one of "
                             f"{ARCHITECTURES}.")
        for name in ("lr", "batch_size", "epochs", "image_size"):
            if getattr(self, name) <= 0:
                raise TrainError(f"Invalid {name}: {getattr(self, name)}. Expect > 0.")
        if self.weight_decay < 0 or self.patience < 1:
            raise TrainError("Invalid weight_decay or patience: expect weight_decay >= 0 and "
                             "patience >= 1.")

    @classmethod
    def from_dict(cls, values: dict) -> HParams:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise TrainError(f"Unknown hyperparameters: {sorted(unknown)}. Expect {sorted(known)}.")
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def validation_split(rows: pd.DataFrame, fraction: float = 0.15) -> tuple[pd.DataFrame,
                                                                          pd.DataFrame]:
    """Carves a validation split out of the training split, by content hash.

    Uses other bits of the sha256 than the train/test split, so it is independent of it,
    stable when images are added, and never touches the test split.
    """
    if not 0 < fraction < 1:
        raise TrainError(f"Invalid validation fraction: {fraction}. Expect 0 < f < 1.")
    pos = np.array([int(s[16:32], 16) / float(1 << 64) for s in rows["sha256"]])
    val = rows[pos < fraction]
    train = rows[pos >= fraction]
    return train.reset_index(drop=True), val.reset_index(drop=True)


def load_images(rows: pd.DataFrame, image_size: int, workers: int = 8) -> np.ndarray:
    """Reads, verifies and preprocesses the images of a manifest into ``N x 3 x S x S`` uint8.

    Each image goes through :func:`components.common.images.preprocess_image`, the function
    the predictor uses, so training and serving see the same pixels. A snapshot image whose
    bytes do not match its content hash (its name) is an error that names the key.
    """
    stores: dict[str, object] = {}

    def one(row: tuple[str, str, str]) -> np.ndarray:
        uri, sha, key = row
        parent, name = uri.rsplit("/", 1)
        store = stores.get(parent)
        if store is None:
            store = stores.setdefault(parent, open_store(parent))
        data = store.get(name)
        expected = sha or name
        if sha256_bytes(data) != expected:
            raise TrainError(f"Image {key!r} ({uri}) does not match its content hash "
                             f"{expected}: the dataset snapshot was overwritten or corrupted. "
                             "Re-ingest the lake (the ingestion names every damaged object).")
        return preprocess_image(data, image_size)

    if rows.empty:
        return np.zeros((0, 3, image_size, image_size), np.uint8)
    shas = rows["sha256"] if "sha256" in rows else [""] * len(rows)
    keys = rows["key"] if "key" in rows else rows["uri"]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(one, zip(rows["uri"], shas, keys, strict=True))))


def load_split_images(rows: pd.DataFrame, image_size: int, dataset_version: str = "",
                      use_shards: bool = True) -> np.ndarray:
    """A split's images at ``image_size``: from the dataset version's training-ready shards.

    Rows from a published dataset snapshot are read from its shards (built once per version
    and size by the first caller, then memory-mapped by every trial, the final training and
    evaluation; no JPEG is decoded again). Other rows, or ``use_shards=False``, are decoded
    one by one. Both give the same pixels (:func:`components.ingest.shards.split_images`, the
    reader evaluation, packaging and the monitoring reference share).
    """
    return split_images(rows, image_size, dataset_version, use_shards)


def normalization(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of training images: the feature scaling.

    Exact integer sums over chunks of images: memory stays a few MiB whatever the split's
    size (a float64 copy of 100,000 images at 64 px would be 10 GB, and its temporaries more).
    """
    n = images.shape[0] * images.shape[2] * images.shape[3]
    if n == 0:
        raise TrainError("No training images to compute the normalisation from.")
    sums = np.zeros(images.shape[1], np.int64)
    squares = np.zeros(images.shape[1], np.int64)
    step = max(1, 2**20 // max(1, images[0].size))  # about a million values at a time
    for start in range(0, images.shape[0], step):
        chunk = images[start:start + step].astype(np.uint32)  # 255 ** 2 fits
        sums += chunk.sum(axis=(0, 2, 3), dtype=np.int64)
        squares += (chunk * chunk).sum(axis=(0, 2, 3), dtype=np.int64)
    mean = sums / n
    var = np.maximum(squares / n - mean * mean, 0.0)
    return ([round(float(v), 6) for v in mean / 255.0],
            [round(max(float(v), 1e-3), 6) for v in np.sqrt(var) / 255.0])


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def build_model(arch: str, num_classes: int):
    """A freshly initialised network; no weights are downloaded."""
    import torch.nn as nn
    import torchvision

    if arch == "small_cnn":
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True), nn.MaxPool2d(2))
        return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                             nn.Linear(64, num_classes))
    if arch == "mobilenet_v3_small":
        return torchvision.models.mobilenet_v3_small(weights=None, num_classes=num_classes)
    if arch == "resnet18":
        return torchvision.models.resnet18(weights=None, num_classes=num_classes)
    raise TrainError(f"Unknown architecture: {arch!r}. Expect one of {ARCHITECTURES}.")


def _load_pretrained(model, ref: str) -> None:
    import torch

    parent, name = ref.rstrip("/").rsplit("/", 1) if "/" in ref else (".", ref)
    try:
        data = open_store(parent).get(name)
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a bad file; say which file
        raise TrainError(f"Cannot read pretrained weights {ref!r}: {exc}. Expect a state dict "
                         "saved with torch.save(model.state_dict()).") from exc
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise TrainError(f"Pretrained weights {ref!r} match no layer of this architecture.")
    model.load_state_dict(usable, strict=False)
    logger.info("Loaded %d/%d tensors from %s", len(usable), len(own), ref)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class FitResult:
    model: object
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    val_loss: float = float("inf")
    val_accuracy: float = 0.0
    images_per_second: float = 0.0
    world: object = None  # the components.train.distributed.Dist it was trained in


def _augment(size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(),
                       v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1),
                                            antialias=True),
                       v2.ColorJitter(brightness=0.25, contrast=0.25)])


def fit(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
        num_classes: int, hp: HParams, mean: list[float], std: list[float],
        progress: Callable[[dict], None] | None = None) -> FitResult:
    """Trains one model with augmentation and early stopping on validation loss.

    One code path for one process and for ``torchrun`` processes
    (:mod:`components.train.distributed`): in a process group the model is wrapped in DDP,
    each rank takes its share of every global batch of ``hp.batch_size`` images
    (:func:`~components.train.distributed.epoch_sampler`), and losses, accuracy and
    throughput are summed over the ranks, so every rank takes the same early-stopping
    decision. On a GPU: mixed precision (autocast + GradScaler), pinned memory, non-blocking
    copies and channels-last; all of them are off on the CPU.
    """
    import torch
    import torch.nn.functional as F

    if len(train_x) == 0 or len(val_x) == 0:
        raise TrainError(f"Empty split: {len(train_x)} training and {len(val_x)} validation "
                         "images. Ingest more images.")
    world = distributed.current()
    if hp.batch_size % world.world_size:
        raise TrainError(f"Invalid batch_size: {hp.batch_size} for {world.world_size} "
                         "processes. Expect a multiple of the number of processes (the batch "
                         "size is the global batch, split evenly over them).")
    local_batch = hp.batch_size // world.world_size
    seed_everything(hp.seed)
    dev = world.device() if world.world_size > 1 else device()
    cuda = dev.type == "cuda"
    model = build_model(hp.arch, num_classes)
    if hp.pretrained:
        _load_pretrained(model, hp.pretrained)
    model.to(dev)
    if cuda:  # convolutions are faster in NHWC on tensor cores; no-op on the CPU
        model.to(memory_format=torch.channels_last)
    net = model
    if world.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    augment = _augment(hp.image_size)
    xt = torch.from_numpy(train_x)
    yt = torch.from_numpy(train_y).long()
    xv_all, yv_all = val_x, val_y
    if world.world_size > 1:  # each rank validates its share; the sums are reduced
        xv_all, yv_all = val_x[world.rank::world.world_size], val_y[world.rank::world.world_size]
    xv = ((torch.from_numpy(np.ascontiguousarray(xv_all)).to(dev).float() / 255.0) - m) / s
    yv = torch.from_numpy(np.ascontiguousarray(yv_all)).long().to(dev)
    if cuda:
        xv = xv.contiguous(memory_format=torch.channels_last)
    sampler = distributed.epoch_sampler(len(xt), hp.seed, world.world_size, world.rank)
    result = FitResult(model=model)
    best_state, stale, seen, busy = None, 0, 0, 0.0
    for epoch in range(1, hp.epochs + 1):
        net.train()
        t0 = time.perf_counter()
        sampler.set_epoch(epoch - 1)
        order = torch.tensor(list(sampler), dtype=torch.long)
        total, n = 0.0, 0
        for start in range(0, len(order), local_batch):
            idx = order[start:start + local_batch]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            batch = torch.stack([augment(xt[i]) for i in idx])
            if cuda:
                batch = batch.pin_memory()
            batch = batch.to(dev, non_blocking=cuda).float() / 255.0
            batch = (batch - m) / s
            if cuda:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, enabled=cuda):
                loss = F.cross_entropy(net(batch), yt[idx].to(dev, non_blocking=cuda))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        busy += time.perf_counter() - t0
        distributed.broadcast_buffers(model)
        model.eval()
        with torch.no_grad(), torch.autocast(dev.type, enabled=cuda):
            logits = torch.cat([model(xv[i:i + 256]) for i in range(0, len(xv), 256)]
                               or [torch.zeros(0, num_classes, device=dev)]).float()
            if world.world_size > 1:
                loss_sum = float(F.cross_entropy(logits, yv, reduction="sum")) if len(yv) else 0.0
                correct = float((logits.argmax(1) == yv).sum())
                total, n, loss_sum, correct, count = distributed.all_sum(
                    [total, n, loss_sum, correct, len(yv)])
                n = int(n)
                val_loss, val_acc = loss_sum / count, correct / count
            else:
                val_loss = float(F.cross_entropy(logits, yv))
                val_acc = float((logits.argmax(1) == yv).float().mean())
        seen += n
        row = {"epoch": epoch, "train_loss": round(total / max(n, 1), 5),
               "val_loss": round(val_loss, 5), "val_accuracy": round(val_acc, 5),
               "seconds": round(time.perf_counter() - t0, 2)}
        result.history.append(row)
        logger.info("epoch %d/%d train_loss %.4f val_loss %.4f val_acc %.4f (%.1fs)", epoch,
                    hp.epochs, row["train_loss"], val_loss, val_acc, row["seconds"])
        if progress and world.is_writer:
            progress(row)
        if val_loss < result.val_loss - 1e-4:
            result.val_loss, result.val_accuracy, result.best_epoch = val_loss, val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            stale = 0
        else:
            stale += 1
            if stale >= hp.patience:
                logger.info("Early stopping after epoch %d (best epoch %d)", epoch,
                            result.best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.images_per_second = seen / busy if busy else 0.0
    result.world = world
    return result


# ---------------------------------------------------------------------------------------------
# Hyperparameter search
# ---------------------------------------------------------------------------------------------

DEFAULT_SPACE = {"lr": [3e-3, 1e-3], "batch_size": [32, 64], "weight_decay": [1e-4, 1e-2],
                 "arch": ["small_cnn"]}


def search_space_trials(space: dict[str, list], mode: str = "grid", n_trials: int = 4,
                        seed: int = 0, base: HParams | None = None) -> list[dict]:
    """The trials of a grid or random search, as hyperparameter dicts.

    Args:
        space: Parameter name -> candidate values (any ``HParams`` field).
        mode: ``grid`` (every combination) or ``random`` (``n_trials`` distinct samples).
        n_trials: Number of random trials.
        seed: Seed of the random sampling.
        base: Values for parameters not in ``space``.
    """
    if mode not in ("grid", "random"):
        raise TrainError(f"Invalid search mode: {mode!r}. Expect 'grid' or 'random'.")
    if not space or any(not v for v in space.values()):
        raise TrainError("Empty search space: give each parameter at least one value.")
    base_dict = asdict(base or HParams())
    names = sorted(space)
    combos = [dict(zip(names, values, strict=False)) for values in itertools.product(*(space[k]
                                                                        for k in names))]
    if mode == "random":
        rng = random.Random(seed)
        combos = rng.sample(combos, min(n_trials, len(combos)))
    trials = []
    for combo in combos:
        hp = HParams.from_dict({**base_dict, **combo})  # validates every value
        trials.append(asdict(hp))
    return trials


# ---------------------------------------------------------------------------------------------
# Saving, loading, the training curve
# ---------------------------------------------------------------------------------------------


def save_model(result: FitResult, hp: HParams, classes: list[str], mean, std,
               dataset_version: str, out_dir: str | os.PathLike) -> dict:
    """Writes the model folder; returns its ``model.json`` content."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.state_dict(), out / "model.pt")
    meta = {"arch": hp.arch, "classes": classes, "image_size": hp.image_size, "mean": mean,
            "std": std, "hparams": asdict(hp), "dataset_version": dataset_version,
            "history": result.history, "best_epoch": result.best_epoch,
            "val_loss": round(result.val_loss, 6), "val_accuracy": round(result.val_accuracy, 6),
            "images_per_second": round(result.images_per_second, 1),
            "distributed": distributed_record(result.world)}
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    plot_curve(result.history, out / "curve.png", result.best_epoch)
    return meta


def load_model(model_dir: str | os.PathLike):
    """Loads a model folder; returns ``(torch module in eval mode, model.json dict)``."""
    import torch

    path = Path(model_dir)
    try:
        meta = json.loads((path / "model.json").read_text())
        model = build_model(meta["arch"], len(meta["classes"]))
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu",
                                         weights_only=True))
    except Exception as exc:  # torch.load raises many types on a bad file; say which folder
        raise TrainError(f"Unreadable model folder {path}: {exc}. Expect model.pt and "
                         "model.json as written by the training step.") from exc
    return model.eval(), meta


def plot_curve(history: list[dict], path: str | os.PathLike, best_epoch: int | None = None
               ) -> None:
    """Loss and validation accuracy per epoch; the kept (best) epoch is marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="validation")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [h["val_accuracy"] for h in history], color="tab:green")
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy")
    if best_epoch:
        for ax in (a, b):
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        b.annotate(f"kept: epoch {best_epoch}", xy=(best_epoch, b.get_ylim()[0]),
                   xytext=(4, 4), textcoords="offset points", fontsize=8, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Steps as the components call them
# ---------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    classes: list[str]
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    mean: list[float]
    std: list[float]
    dataset_version: str


def prepare(rows: pd.DataFrame, dataset_version: str, image_size: int,
            val_fraction: float = 0.15, use_shards: bool = True) -> PreparedData:
    """Training split -> train/validation arrays (from the version's shards, see
    :func:`load_split_images`) and the normalisation statistics."""
    classes = sorted(rows["label"].unique())
    if len(rows) == 0:
        raise TrainError("Empty training split: ingest a data lake with images first.")
    if len(classes) < 2:
        raise TrainError(f"One-class data: the training split only has {classes}. A "
                         "classifier needs at least two classes; add images of the others.")
    train_rows, val_rows = validation_split(rows, val_fraction)
    if val_rows.empty or train_rows.empty:
        raise TrainError(f"Too few images ({len(rows)}) to carve a validation split; "
                         "ingest more images.")
    index = {c: i for i, c in enumerate(classes)}
    train_x = load_split_images(train_rows, image_size, dataset_version, use_shards)
    val_x = load_split_images(val_rows, image_size, dataset_version, use_shards)
    mean, std = normalization(train_x)
    return PreparedData(classes, train_x,
                        train_rows["label"].map(index).to_numpy(np.int64), val_x,
                        val_rows["label"].map(index).to_numpy(np.int64), mean, std,
                        dataset_version)


def distributed_record(world=None) -> dict:
    """How a model was trained, for ``model.json`` and the lineage: nodes, processes, backend."""
    if world is None or world.world_size == 1:
        return {"nodes": 1, "processes": 1, "backend": ""}
    return {"nodes": world.nodes, "processes": world.world_size, "backend": world.backend}


def train(data: PreparedData, hp: HParams, out_dir: str | os.PathLike | None = None,
          progress: Callable[[dict], None] | None = None) -> tuple[FitResult, dict | None]:
    """Trains one configuration; saves the model folder if ``out_dir`` is given.

    Under ``torchrun`` (an initialised process group, :mod:`components.train.distributed`)
    every rank trains and only rank 0 writes the folder; the others return ``None`` for it.
    The CPU threads are shared between the processes of a machine (``MLOPS_TORCH_THREADS``
    sets them per process instead: a pod's CPU limit is not what ``os.cpu_count`` sees).
    """
    import torch

    local = max(1, distributed.current().local_world_size)
    torch.set_num_threads(int(os.environ.get("MLOPS_TORCH_THREADS") or 0)
                          or max(1, (os.cpu_count() or 1) // local))
    result = fit(data.train_x, data.train_y, data.val_x, data.val_y, len(data.classes), hp,
                 data.mean, data.std, progress)
    meta = None
    if out_dir is not None and (result.world is None or result.world.is_writer):
        meta = save_model(result, hp, data.classes, data.mean, data.std, data.dataset_version,
                          out_dir)
    return result, meta
