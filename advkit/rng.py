"""Per-sample random streams: a batch draws the same per-sample noise as any slice of it.

A single generator for the whole batch hands sample ``i`` numbers that depend on its position
and on how many samples come before it, so a batch and its slices (or a batch split in halves
after an out-of-memory error) would start from different random points. :class:`SampleStreams`
gives every sample its own generator, seeded from

* a base seed (the engine draws it once per ``optimize()`` call from the attack's seeded
  generator, so it depends only on the run's seed and how many times the attack called the
  engine),
* a stream label (which restart, which kind of start), and
* a digest of the sample's own content: its bytes, plus its label and target where given,

so the numbers drawn for a sample depend on nothing else in the batch. Two samples with
identical content (and label and target) in one batch draw identical numbers. Numbers are
drawn on the sample's device with that device's generator, so CPU and CUDA runs differ, as
with any torch generator. The cost is one small generator and one draw per sample at each
random start (never in the step loop).

A :class:`SampleStreams` is also a ``torch.Generator`` (seeded from every sample's key in
order), so code that only knows plain generators (e.g. a third-party constraint's own
``random_start``) still draws reproducibly, batch-wise.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["SampleStreams", "draw", "sample_digests"]

_MASK63 = (1 << 63) - 1


def sample_digests(x: Tensor) -> list[bytes]:
    """A 16-byte BLAKE2b digest of each sample's bytes (dtype and shape included)."""
    rows = x.detach().to("cpu").contiguous()
    header = f"{rows.dtype}:{tuple(rows.shape[1:])}".encode()
    if rows.numel() == 0:
        return [hashlib.blake2b(header, digest_size=16).digest() for _ in range(rows.shape[0])]
    data = rows.reshape(rows.shape[0], -1).view(torch.uint8).numpy()
    return [hashlib.blake2b(header + data[i].tobytes(), digest_size=16).digest() for i in range(data.shape[0])]


class SampleStreams(torch.Generator):
    """One generator per sample of ``x``, keyed by ``(seed, stream, content of the sample)``.

    ``tags`` are further per-sample tensors (first dimension N, e.g. labels and targets) whose
    rows join the sample's content. ``rand``/``randn`` return ``(N, *shape[1:])`` tensors whose
    row ``i`` comes from sample ``i``'s own generator; successive calls continue each sample's
    stream.
    """

    def __new__(cls, x: Tensor, seed: int, stream: str = "", tags: tuple[Tensor | None, ...] = ()):
        return super().__new__(cls, x.device)

    def __init__(self, x: Tensor, seed: int, stream: str = "", tags: tuple[Tensor | None, ...] = ()) -> None:
        prefix = f"{int(seed)}:{stream}:".encode()
        columns = [sample_digests(x)] + [sample_digests(t.reshape(len(t), -1)) for t in tags if t is not None]
        keys = [
            int.from_bytes(hashlib.blake2b(prefix + b"".join(parts), digest_size=8).digest(), "little") & _MASK63
            for parts in zip(*columns)
        ]
        self.n = len(keys)
        self.streams = [torch.Generator(device=x.device).manual_seed(k) for k in keys]
        batch_key = hashlib.blake2b(prefix + b"".join(k.to_bytes(8, "little") for k in keys), digest_size=8).digest()
        self.manual_seed(int.from_bytes(batch_key, "little") & _MASK63)

    def _rows(self, fn, shape: tuple[int, ...], dtype: torch.dtype | None, device) -> Tensor:
        if not shape or shape[0] != self.n:
            raise ValueError(f"per-sample draws need shape (N={self.n}, ...), got {tuple(shape)}")
        if self.n == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        return torch.stack([fn(tuple(shape[1:]), generator=g, dtype=dtype, device=device) for g in self.streams])

    def rand(self, shape, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Uniform [0, 1) numbers, row ``i`` from sample ``i``'s stream."""
        return self._rows(torch.rand, tuple(shape), dtype, device if device is not None else self.device)

    def randn(self, shape, *, dtype: torch.dtype | None = None, device=None) -> Tensor:
        """Standard normal numbers, row ``i`` from sample ``i``'s stream."""
        return self._rows(torch.randn, tuple(shape), dtype, device if device is not None else self.device)


def draw(kind: str, shape, generator: torch.Generator | None, *, dtype: torch.dtype, device) -> Tensor:
    """``torch.rand``/``torch.randn`` of ``shape``, drawn per sample when ``generator`` is a :class:`SampleStreams`."""
    if isinstance(generator, SampleStreams):
        per_sample = generator.rand if kind == "rand" else generator.randn
        return per_sample(shape, dtype=dtype, device=device)
    fn = torch.rand if kind == "rand" else torch.randn
    return fn(tuple(shape), generator=generator, dtype=dtype, device=device)
