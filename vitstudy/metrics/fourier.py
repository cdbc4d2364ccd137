"""Pure tensor math for Park & Kim 2022 (Figs 2a, 2b, 8, 9): Fourier amplitudes, feature-map variance,
band-passed noise. Definitions follow the official code (xxxnell/how-do-vits-work, `fourier_analysis.ipynb`,
`featuremap_variance.ipynb`, `ops/adversarial.py`); see docs/methods.md#fourier.
"""

from __future__ import annotations

import torch

from ..errors import VitstudyError

EPS = 1e-6  # added to |FFT| before the log, as in the official notebook


def half_diagonal(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unshifted FFT indices of `roll(F, (h//2, w//2)).diag()[h//2:]`: the diagonal from DC outward.

    Entry k is frequency index (k, k) for a square map: k = 0 .. h - h//2 - 1 (Nyquist excluded for even h).
    A map with min(h, w) <= h//2 has no such diagonal (the official slice is empty): that is not a spatial grid
    of an image (e.g. windowed or blocked tokens read as (C, H, W); NesT's blocks are un-blocked by its `Layer`),
    refused in one line.
    """
    if min(h, w) <= h // 2:
        raise VitstudyError(
            f"a {h}x{w} feature map has no diagonal from the zero frequency outward (the Fourier "
            f"analysis needs about as many columns as rows): this layer is probably not laid out as one "
            f"spatial grid (windowed or blocked tokens are not); choose other layers"
        )
    i = torch.arange(h // 2, min(h, w))
    return (i - h // 2) % h, (i - w // 2) % w


def log_amplitude(maps: torch.Tensor) -> torch.Tensor:
    """log(|FFT2| + 1e-6) on the half diagonal per image and channel, in float64: shape (B, C, K).

    `maps` is (B, C, H, W). The FFT runs in the maps' own precision (float32 for float32 models, as the
    official code); only the half diagonal is gathered before the cast to float64.
    """
    h, w = maps.shape[-2:]
    rows, cols = half_diagonal(h, w)
    f = torch.fft.fft2(maps if maps.dtype in (torch.float32, torch.float64) else maps.float())
    amp = f[..., rows.to(f.device), cols.to(f.device)].abs()
    return torch.log(amp + EPS).to(torch.float64)


def log_amplitude_sum(maps: torch.Tensor) -> torch.Tensor:
    """Sum over images and channels of log(|FFT2| + 1e-6) on the half diagonal, in float64: shape (K,)."""
    return log_amplitude(maps).sum(dim=(0, 1))


def relative(mean_log_amplitude: torch.Tensor) -> torch.Tensor:
    """Δ log amplitude: the half diagonal minus its zero-frequency value."""
    return mean_log_amplitude - mean_log_amplitude[0]


def paper_frequency(k: int) -> torch.Tensor:
    """The x axis Park & Kim plot: linspace(0, 1, K), labelled 0.0π .. 1.0π."""
    return torch.linspace(0, 1, k, dtype=torch.float64)


def true_frequency(k: int, h: int) -> torch.Tensor:
    """The per-axis frequency of half-diagonal entry k in units of π: 2k/h (k = h/2 - 1 -> (h-2)/h π)."""
    return 2 * torch.arange(k, dtype=torch.float64) / h


def spatial_variance(maps: torch.Tensor, ddof: int = 1) -> torch.Tensor:
    """The variance over spatial positions per image and channel, in float64: shape (B, C)."""
    x = maps.flatten(2).to(torch.float64)
    return x.var(dim=-1, correction=ddof)


def spatial_variance_sum(maps: torch.Tensor, ddof: int = 1) -> torch.Tensor:
    """Sum over images and channels of the variance over spatial positions, in float64 (a scalar).

    Park & Kim: `latent.var(dim=[-1, -2]).mean(dim=[0, 1])` (torch.var, unbiased: ddof=1).
    """
    return spatial_variance(maps, ddof).sum()


def _centred(side: int, n: int) -> torch.Tensor:
    """1-D indicator of a centred run of `side` entries, padded by int((n - side) / 2) as `_center_mask`."""
    side = min(max(side, 0), n)
    ind = torch.zeros(n)
    lo = (n - side) // 2
    ind[lo : lo + side] = 1
    return ind


def band_mask(h: int, w: int, f: float, s: float) -> torch.Tensor:
    """Square annulus in the *shifted* Fourier domain (DC at (h//2, w//2)), as `FreqAttack._fourier_mask`.

    `f` (centre) and `s` (half-width) are in units of π. The outer square has side 2·int((f+s)·n/2), the
    inner 2·int((f−s)·n/2), per axis of length n (the official code uses radians: int((f+s)·n/(2π))·2).
    """

    def side(x: float, n: int) -> int:
        return int(round(x * n / 2, 9)) * 2  # round off float noise before truncating, e.g. 3.9999999 -> 4

    outer = torch.outer(_centred(side(f + s, h), h), _centred(side(f + s, w), w))
    inner = torch.outer(_centred(side(f - s, h), h), _centred(side(f - s, w), w))
    return outer - inner


def band_pass(noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real part of the inverse FFT of the noise spectrum times the shifted-domain mask (phase kept).

    The official mask is one row/column off-centre for even sizes, so taking the real part keeps the
    annulus and its point mirror image at half weight each.
    """
    h, w = noise.shape[-2:]
    unshifted = torch.roll(mask, shifts=(-(h // 2), -(w // 2)), dims=(0, 1)).to(noise.device)
    spectrum = torch.fft.fft2(noise.to(torch.float32) if noise.dtype not in (torch.float32, torch.float64) else noise)
    return torch.fft.ifft2(spectrum * unshifted).real


def sign_noise(shape, eps: float, generator: torch.Generator, device) -> torch.Tensor:
    """δ = ε·sign(N(0, 1)), as `ops/adversarial.Random`."""
    return eps * torch.randn(shape, generator=generator, device=device).sign()
