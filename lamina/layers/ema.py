"""MEGA's multi-dimensional damped exponential moving average (EMA).

Each of the `D` channels (the hidden size, doubled when bidirectional) expands into `N`
(`ema_projection_size`) damped EMAs, then projects back. With `p = sigmoid(damping_factor)`,
`q = 1 - p * sigmoid(decay_factor)` (both `(D, N)`), `β = ema_expansion_matrix` and
`γ = kernel_projection_matrix / sqrt(N)`, the state and output of channel `d` are

    h_t = q ⊙ h_{t-1} + p β x_t          (N values per channel)
    y_t = Σ_n γ_n h_t,n

which unrolls into a causal convolution with the kernel `k_l = Σ_n γ_n p_n β_n q_n^l`.
A whole sequence is convolved by FFT in O(L log L); incremental decoding runs the recurrence in
O(D N) per token, whatever the position. The layer's output is `silu(y + ω ⊙ x)`.

Bidirectional EMA adds a second kernel run backwards in time (an FFT correlation); it has no
recurrence, so it cannot decode incrementally.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedError


def _split_powers(decay: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Powers of `decay (D, N)` for steps 0 … length-1, factored as q^(B·j + i) = q^(B·j) · q^i with
    B ≈ sqrt(length): `inner (D, N, B)` = q^i and `outer (D, N, J)` = q^(B·j). Computing D·N·(B + J)
    exponentials instead of D·N·length, and contracting through matrix products, keeps the long
    kernels fast and their memory at D × length."""
    block = max(1, math.isqrt(length - 1) + 1) if length > 1 else 1
    blocks = -(-length // block)
    log_decay = torch.log(decay).unsqueeze(-1)
    inner = torch.exp(torch.arange(block, device=decay.device, dtype=decay.dtype) * log_decay)
    outer = torch.exp(torch.arange(blocks, device=decay.device, dtype=decay.dtype) * block * log_decay)
    return inner, outer, block


def _power_sums(weight: torch.Tensor, decay: torch.Tensor, length: int) -> torch.Tensor:
    """`Σ_n weight[…, d, n] · decay[d, n]^l` for l < length: `weight (…, D, N)` → `(…, D, length)`."""
    inner, outer, block = _split_powers(decay, length)
    scaled = (weight.unsqueeze(-1) * outer).transpose(-1, -2)  # (…, D, J, N)
    return torch.matmul(scaled, inner).flatten(-2)[..., :length]


def _power_moments(inputs: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """`Σ_l inputs[…, d, l] · decay[d, n]^l`: `inputs (…, D, L)` → `(…, D, N)`."""
    length = inputs.shape[-1]
    inner, outer, block = _split_powers(decay, length)
    padded = F.pad(inputs, (0, outer.shape[-1] * block - length))
    per_block = torch.matmul(padded.unflatten(-1, (outer.shape[-1], block)), inner.transpose(-1, -2))  # (…, D, J, N)
    return (per_block * outer.transpose(-1, -2)).sum(-2)


class MultiDimensionDampedEMA(nn.Module):
    """The EMA sub-layer of a MEGA block on `(batch, seq, hidden)` inputs (see the module docstring).

    Parameter names and shapes are those of MEGA checkpoints: `damping_factor`, `decay_factor`,
    `ema_expansion_matrix` `(D, N, 1)`, `kernel_projection_matrix` `(D, N)`, `residual_weight` `(hidden,)`.
    """

    def __init__(self, hidden_size: int, ndim: int, bidirectional: bool, truncation: int | None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.ndim = ndim
        self.bidirectional = bidirectional
        self.truncation = truncation
        self.scale = math.sqrt(1.0 / ndim)
        kernel_dim = 2 * hidden_size if bidirectional else hidden_size
        self.damping_factor = nn.Parameter(torch.empty(kernel_dim, ndim, 1))
        self.decay_factor = nn.Parameter(torch.empty(kernel_dim, ndim, 1))
        self.ema_expansion_matrix = nn.Parameter(torch.empty(kernel_dim, ndim, 1))
        self.kernel_projection_matrix = nn.Parameter(torch.empty(kernel_dim, ndim))
        self.residual_weight = nn.Parameter(torch.empty(hidden_size))

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fp32 `(D, N)` input weights `p β`, decay `q` and output weights `γ / sqrt(N)`."""
        damping = torch.sigmoid(self.damping_factor.float()).squeeze(-1)
        decay = torch.sigmoid(self.decay_factor.float()).squeeze(-1)
        input_weight = damping * self.ema_expansion_matrix.float().squeeze(-1)
        output_weight = self.kernel_projection_matrix.float() * self.scale
        return input_weight, 1.0 - damping * decay, output_weight

    def kernel(self, length: int) -> torch.Tensor:
        """The convolution kernel `(D, length)` in fp32."""
        input_weight, decay, output_weight = self.coefficients()
        return _power_sums(input_weight * output_weight, decay, length)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`hidden_states (batch, seq, hidden)`, `padding_mask (batch, seq)` (True: real token; padding
        enters the EMA as zeros), `state (batch, hidden, N)` from earlier tokens.

        Returns the gated output `(batch, seq, hidden)` and, when `return_state` or a `state` is
        given, the state after the last token (fp32).
        """
        residual = hidden_states * self.residual_weight
        inputs = hidden_states
        if padding_mask is not None:
            inputs = inputs * padding_mask.unsqueeze(-1).to(inputs.dtype)
        inputs = inputs.transpose(1, 2).float()
        if state is not None or return_state:
            if self.bidirectional:
                raise UnsupportedError(
                    "a bidirectional EMA (config.bidirectional=True) has no recurrent state: "
                    "incremental decoding needs bidirectional=False"
                )
            ema, state = self._recurrence(inputs, state)
        else:
            length = inputs.shape[-1]
            ema = self._convolve(inputs, length if self.truncation is None else min(self.truncation, length))
        return F.silu(ema.to(hidden_states.dtype).transpose(1, 2) + residual), state

    def _convolve(self, inputs: torch.Tensor, taps: int) -> torch.Tensor:
        """EMA of the whole sequence `(batch, D, L)` by FFT, with a kernel of `taps` steps."""
        length = inputs.shape[-1]
        kernel = self.kernel(taps)
        fft_size = 2 * length  # room for the linear (not circular) convolution
        inputs_f = torch.fft.rfft(inputs, n=fft_size)
        if self.bidirectional:
            forward_kernel, backward_kernel = kernel.split(self.hidden_size, dim=0)
            # backward in time = correlation with the second kernel = conjugate in frequency
            kernel_f = torch.fft.rfft(forward_kernel, n=fft_size) + torch.fft.rfft(backward_kernel, n=fft_size).conj()
        else:
            kernel_f = torch.fft.rfft(kernel, n=fft_size)
        return torch.fft.irfft(inputs_f * kernel_f, n=fft_size)[..., :length]

    def _recurrence(self, inputs: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal EMA of `inputs (batch, D, L)` continuing from `state`: outputs and the final state.

        A state summarises the whole past, so the kernel is never truncated here (as in the reference).
        """
        input_weight, decay, output_weight = self.coefficients()
        length = inputs.shape[-1]
        if length == 1:
            new_state = input_weight * inputs  # (batch, D, 1) * (D, N)
            if state is not None:
                new_state = new_state + decay * state
            return torch.einsum("bdn,dn->bd", new_state, output_weight).unsqueeze(-1), new_state
        ema = self._convolve(inputs, length)
        # h_L = Σ_l q^(L-1-l) p β x_l  (+ q^L h_0)
        new_state = input_weight * _power_moments(inputs.flip(-1), decay)
        if state is not None:
            # the past state decays through the new tokens: y_l += Σ_n γ_n q_n^(l+1) h_0,n
            ema = ema + _power_sums(state * output_weight * decay, decay, length)
            new_state = new_state + torch.pow(decay, length) * state
        return ema, new_state
