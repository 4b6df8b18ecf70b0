"""The geometry every attack shares: the box, the eps-ball, the steepest step and the projection.

Each idea is written once here. An attack is a walk that takes steps of :meth:`Ball.step` and
calls :meth:`Ball.project` after each one; the fast gradient sign method is a single such step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Box:
    """The valid input range ``[low, high]`` (for instance pixels in ``[0, 1]``).

    ``numbers`` holds the same bounds as Python floats (already rounded to the inputs' dtype)
    when the user gave numbers; ``finite`` says whether every bound is finite in that dtype.
    """

    low: Tensor
    high: Tensor
    numbers: tuple[float, float] | None = None
    finite: bool = True

    def clip(self, x: Tensor) -> Tensor:
        if self.numbers is not None:
            # Number bounds take clamp's scalar kernel: on CPU, 0-d tensor bounds broadcast
            # through a path about five times slower.
            return torch.clamp(x, *self.numbers)
        # clamp with tensor bounds is min(max(x, low), high) in one pass.
        return torch.clamp(x, self.low, self.high)


def _working(t: Tensor) -> Tensor:
    """At least float32, so that norms of float16 tensors neither overflow nor underflow."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def sample_rows(t: Tensor) -> Tensor:
    """``t`` with one row per sample, shape ``(batch, features)``; a batch of scalars has one feature."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """One value per sample, shaped to broadcast against ``like``."""
    return values.reshape((-1,) + (1,) * (like.ndim - 1))


def power_of_two_at_or_below(peak: Tensor) -> Tensor:
    """The power of two at or below each (positive, finite) ``peak``, 1 elsewhere.

    Dividing by it is exact: a tensor scaled so that its largest magnitude lies in ``[1, 2)``
    keeps every bit, and its norm, multiplied back, is the norm of the original to the last bit
    wherever that one neither underflows nor overflows.
    """
    # frexp, not exp2(floor(log2(peak))): log2 rounds up near the top of a binade (2**128 for
    # float32's largest number, whose power then overflows to inf).
    _, exponent = torch.frexp(peak)  # peak = m * 2**exponent with m in [0.5, 1)
    power = torch.ldexp(torch.ones_like(peak), exponent - 1)
    return torch.where((peak > 0) & peak.isfinite(), power, torch.ones_like(peak))


def divided_by_peak(t: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` in working precision with each sample divided by the power of two at or below its
    largest ``|entry|`` (exactly), and those powers.

    The squares of a sample of 1e-23 underflow in float32, those of 1e20 overflow, and its norm
    would come out short, zero or infinite; scaled, its largest square lies in ``[1, 4)``. A sample
    of zeros (or one with inf or NaN, whose norm is not a number anyway) is divided by 1.
    """
    w = _working(t)
    scale = power_of_two_at_or_below(_per_sample(sample_rows(w.abs()).amax(dim=1), w))
    return w / scale, scale


def per_sample_l2_norm(t: Tensor) -> Tensor:
    """L2 norm of each sample, in working precision, shaped to broadcast against ``t``; exact
    where the squares of ``t`` would underflow or overflow."""
    unit, peak = divided_by_peak(t)
    return _per_sample(sample_rows(unit).norm(dim=1), t) * peak


class Ball:
    """The set of allowed perturbations around ``x``, intersected with the box.

    Parameters
    ----------
    x : Tensor
        The clean inputs, the ball's centres.
    eps : Tensor
        The radius, a scalar or one per sample (broadcastable against ``x``).
    box : Box or None
        The valid input range, or None for no range.
    """

    def __init__(self, x: Tensor, eps: Tensor, box: Box | None) -> None:
        self.x = x
        self.eps = eps
        self.box = box

    def step(self, direction: Tensor, size: Tensor) -> Tensor:
        """The steepest ascent step of length ``size`` for the gradient ``direction``.

        NaN entries of ``direction`` count as zero: no step along them. The result is a new
        tensor, which the caller may update in place.
        """
        raise NotImplementedError

    def project(self, x_adv: Tensor) -> Tensor:
        """``x_adv`` projected onto the ball (its nearest point there), then clipped to the box.

        For the L-inf ball this is the nearest point of their intersection. For the L2 ball it
        is what PGD has always done (Madry et al., and every peer library), not the nearest
        point of the intersection, which would need a search per sample; both stay in the ball
        and the box.
        """
        raise NotImplementedError

    def fast_gradient_step(self, direction: Tensor) -> Tensor:
        """The step of length eps from the centre along ``direction``, projected: the fast gradient method."""
        return self.project(self.step(direction, self.eps).add_(self.x))

    def random_point(self, generator: torch.Generator | None) -> Tensor:
        """A point drawn uniformly from the ball, then clipped to the box."""
        raise NotImplementedError


def linf_step(direction: Tensor, size: Tensor) -> Tensor:
    """The L-inf steepest step, ``size * sign(direction)``, as a new tensor."""
    # sign(NaN) is 0 in PyTorch (eager and compiled): a NaN entry takes no step.
    return direction.sign().mul_(size)


def linf_projection(x_adv: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``x_adv`` projected onto the L-inf ball and box, folded into the bounds ``[lower, upper]``."""
    # clamp with tensor bounds is min(max(x_adv, lower), upper) in one pass.
    return torch.clamp(x_adv, lower, upper)


class LinfBall(Ball):
    def __init__(self, x: Tensor, eps: Tensor, box: Box | None) -> None:
        super().__init__(x, eps, box)
        self._bounds: tuple[Tensor, Tensor] | None = None

    @property
    def bounds(self) -> tuple[Tensor, Tensor]:
        """Ball and box folded into one pair of bounds, so that one clamp projects onto both.

        Built on first use (not a cached_property, whose lock torch.compile cannot trace): the
        fast gradient step never needs them.
        """
        if self._bounds is None:
            lower, upper = self.x - self.eps, self.x + self.eps
            if self.box is not None:
                # x lies in the box, so x - eps can only cross its lower side and x + eps its upper.
                lower, upper = self.box.clip(lower), self.box.clip(upper)
            self._bounds = lower, upper
        return self._bounds

    def step(self, direction: Tensor, size: Tensor) -> Tensor:
        return linf_step(direction, size)

    def project(self, x_adv: Tensor) -> Tensor:
        return linf_projection(x_adv, *self.bounds)

    def fast_gradient_step(self, direction: Tensor) -> Tensor:
        # x + eps and x - eps round to exactly the ball's own bounds, so only the box can cut
        # this step: the same bits as the projection, without building the bounds.
        moved = self.step(direction, self.eps).add_(self.x)
        return moved if self.box is None else self.box.clip(moved)

    def random_point(self, generator: torch.Generator | None) -> Tensor:
        # Drawn in the working dtype, not the default one: the same seed gives the same start
        # whatever torch.set_default_dtype says, and float64 inputs get float64 noise.
        noise = torch.rand(self.x.shape, generator=generator, device=self.x.device,
                           dtype=torch.promote_types(self.x.dtype, torch.float32))
        noise = (2 * noise - 1).to(self.x.dtype)
        return self.project(self.x + self.eps * noise)


class L2Ball(Ball):
    def step(self, direction: Tensor, size: Tensor) -> Tensor:
        # A confident sample's gradient is tiny (1e-26, say): its norm is taken divided by its peak.
        unit, _ = divided_by_peak(torch.nan_to_num(_working(direction), nan=0.0))
        norm = _per_sample(sample_rows(unit).norm(dim=1), unit)
        scale = torch.where(norm > 0, _working(size) / norm, torch.zeros_like(norm))
        return (unit * scale).to(direction.dtype)

    def project(self, x_adv: Tensor) -> Tensor:
        delta = x_adv - self.x
        norm = per_sample_l2_norm(delta)
        outside = norm > _working(self.eps)
        factor = torch.where(outside, _working(self.eps) / norm, torch.ones_like(norm))
        shrunk = self.x + (_working(delta) * factor).to(delta.dtype)
        # Points already inside keep their exact value instead of being rebuilt as x + delta.
        x_adv = torch.where(outside, shrunk, x_adv)
        # Clipping to the box only moves coordinates towards x, so the ball still holds.
        return x_adv if self.box is None else self.box.clip(x_adv)

    def random_point(self, generator: torch.Generator | None) -> Tensor:
        shape, device = self.x.shape, self.x.device
        dtype = torch.promote_types(self.x.dtype, torch.float32)
        direction = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        norm = per_sample_l2_norm(direction).clamp_min(torch.finfo(dtype).tiny)
        dims = math.prod(shape[1:])
        # Radius eps * U^(1/d) makes the point uniform in the ball's volume.
        radius = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=generator, device=device, dtype=dtype)
        delta = direction / norm * radius.pow(1.0 / max(dims, 1)) * self.eps.to(dtype)
        return self.project(self.x + delta.to(self.x.dtype))


def make_ball(norm: float, x: Tensor, eps: Tensor, box: Box | None) -> Ball:
    if norm == math.inf:
        return LinfBall(x, eps, box)
    return L2Ball(x, eps, box)
