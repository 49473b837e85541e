"""A TopK sparse autoencoder (Gao et al. 2024) trained on a layer's stored rows, streamed a few shards at a time.

Rows are read shard by shard (never all at once), shuffled within a buffer of ``buffer_shards`` shards, seeded. The
input is first divided by a scalar ``scale``, the root mean squared row norm over all rows, so the scaled rows have
unit mean squared norm and one learning rate suits any layer. Features that fired on none of the last rows seen
(``dead_after`` of them) are pulled back by the auxiliary loss of Gao et al.: the dead features' own top-k
reconstruct the main reconstruction's residual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from atlas.dictionary.weights import DictionaryWeights

ShardReader = Callable[[Sequence[int]], Iterator[np.ndarray]]  # the given shards' rows, float32 [n, C], in that order
AUX_WEIGHT = 1.0 / 32.0  # Gao et al.'s weight of the auxiliary loss
CURVE_POINTS = 64  # points of the training curve kept


def default_k(channels: int) -> int:
    """channels / 8 (at least 1): the sparsity the issue's targets are stated at."""
    return max(1, channels // 8)


def default_features(channels: int, rows: int, k: int) -> int:
    """8 x channels, capped so a feature fires on 32 rows on average (rows x k / 32), and never below channels."""
    return max(channels, min(8 * channels, rows * k // 32))


@dataclass
class TrainingCurve:
    """Every few steps: the batch's fraction of variance unexplained and the features dead at that step."""

    steps: list[int] = field(default_factory=list)
    unexplained: list[float] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {"step": self.steps, "unexplained_variance": self.unexplained, "dead_features": self.dead, "seconds": self.seconds}


@dataclass(frozen=True)
class RowMoments:
    count: int
    mean: np.ndarray  # float64 [C]
    mean_squared_norm: float


def row_moments(read: ShardReader, n_shards: int, channels: int) -> RowMoments:
    """One streamed pass: the rows' count, mean and mean squared norm (the scale and the decoder bias's start)."""
    count, total, squared = 0, np.zeros(channels, np.float64), 0.0
    for rows in read(range(n_shards)):
        rows64 = rows.astype(np.float64)
        count += len(rows)
        total += rows64.sum(axis=0)
        squared += float(np.einsum("ij,ij->", rows64, rows64))
    if count == 0:
        raise ValueError("no rows to train a dictionary on")
    return RowMoments(count, total / count, squared / count)


def shuffled_batches(read: ShardReader, n_shards: int, batch_size: int, buffer_shards: int, seed: int) -> Iterator[np.ndarray]:
    """Batches forever: each pass visits the shards in a new seeded order, and rows are shuffled within a buffer of
    ``buffer_shards`` shards; rows left over at a buffer's end start the next one."""
    rng = np.random.default_rng(seed)
    left = np.zeros((0, 0), np.float32)
    while True:
        order = rng.permutation(n_shards).tolist()
        for start in range(0, n_shards, buffer_shards):
            parts = list(read(order[start : start + buffer_shards]))
            if left.size:
                parts.insert(0, left)
            if not parts:
                continue
            buffer = np.concatenate(parts)
            buffer = buffer[rng.permutation(len(buffer))]
            whole = len(buffer) - len(buffer) % batch_size if len(buffer) >= batch_size else 0
            for begin in range(0, whole, batch_size):
                yield buffer[begin : begin + batch_size]
            left = buffer[whole:]
            if whole == 0 and len(left) and n_shards <= buffer_shards:
                yield left  # fewer rows than one batch in the whole store: every batch is all of them
                left = np.zeros((0, 0), np.float32)


class TopKAutoencoder(torch.nn.Module):
    """The documented forward on scaled rows; decoder rows kept at unit norm after each step."""

    def __init__(self, channels: int, features: int, k: int, mean: np.ndarray, generator: torch.Generator) -> None:
        super().__init__()
        decoder = torch.randn(features, channels, generator=generator)
        decoder /= decoder.norm(dim=1, keepdim=True)
        self.decoder = torch.nn.Parameter(decoder)
        self.encoder = torch.nn.Parameter(decoder.T.clone())  # tied start, as in Gao et al.
        self.encoder_bias = torch.nn.Parameter(torch.zeros(features))
        self.decoder_bias = torch.nn.Parameter(torch.as_tensor(mean, dtype=torch.float32).clone())
        self.k = k

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.decoder_bias) @ self.encoder + self.encoder_bias)

    def sparse(self, pre: torch.Tensor, k: int) -> torch.Tensor:
        values, indices = pre.topk(k, dim=1)
        return torch.zeros_like(pre).scatter(1, indices, values)

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.decoder.div_(self.decoder.norm(dim=1, keepdim=True).clamp_min(1e-12))


def train_dictionary(
    read: ShardReader,
    n_shards: int,
    channels: int,
    features: int,
    k: int,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    device: str = "cpu",
    buffer_shards: int = 4,
) -> tuple[DictionaryWeights, TrainingCurve]:
    """Train on the rows ``read`` streams; the weights in the store's units (``scale`` beside them) and the curve."""
    moments = row_moments(read, n_shards, channels)
    scale = math.sqrt(moments.mean_squared_norm) or 1.0
    generator = torch.Generator().manual_seed(seed)
    model = TopKAutoencoder(channels, features, min(k, features), moments.mean / scale, generator).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    since_fired = torch.zeros(features, dtype=torch.long, device=device)  # rows seen since each feature last fired
    dead_after = max(4 * batch_size, min(moments.count, 1_000_000))
    aux_k = max(1, channels // 2)
    curve, every = TrainingCurve(), max(1, steps // CURVE_POINTS)
    started = time.perf_counter()
    batches = shuffled_batches(read, n_shards, batch_size, buffer_shards, seed)
    for step in range(1, steps + 1):
        x = torch.from_numpy(next(batches)).to(device).float() / scale
        pre = model.pre_activations(x)
        z = model.sparse(pre, model.k)
        x_hat = z @ model.decoder + model.decoder_bias
        residual = x - x_hat
        variance = (x - x.mean(dim=0)).pow(2).sum(dim=1).mean().clamp_min(1e-12)
        loss = residual.pow(2).sum(dim=1).mean() / variance
        with torch.no_grad():
            since_fired += len(x)
            since_fired[(z > 0).any(dim=0)] = 0
            dead = since_fired >= dead_after
        if dead.any():
            dead_pre = pre * dead  # only dead features may take part in the auxiliary reconstruction
            aux_hat = model.sparse(dead_pre, min(aux_k, int(dead.sum()))) @ model.decoder
            target = residual.detach()
            aux_variance = (target - target.mean(dim=0)).pow(2).sum(dim=1).mean().clamp_min(1e-12)
            loss = loss + AUX_WEIGHT * (aux_hat - target).pow(2).sum(dim=1).mean() / aux_variance
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        model.normalise_decoder()
        if step % every == 0 or step == steps:
            unexplained = float(residual.detach().pow(2).sum(dim=1).mean() / variance)
            curve.steps.append(step)
            curve.unexplained.append(round(unexplained, 5))
            curve.dead.append(int(dead.sum()))
    curve.seconds = round(time.perf_counter() - started, 3)
    weights = DictionaryWeights(
        encoder=model.encoder.detach().cpu().numpy().astype(np.float32),
        encoder_bias=model.encoder_bias.detach().cpu().numpy().astype(np.float32),
        decoder=model.decoder.detach().cpu().numpy().astype(np.float32),
        decoder_bias=model.decoder_bias.detach().cpu().numpy().astype(np.float32),
        k=model.k,
        scale=float(scale),
    )
    return weights, curve
