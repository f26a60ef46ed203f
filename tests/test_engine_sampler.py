"""engine.sampler: step lists, per-chunk noise, the bidirectional schedule (against diffusers' scheduler)."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from engine.sampler import DEFAULT_STEPS, chunk_noise, flow_match_sigmas, validate_steps


@pytest.mark.parametrize("num_steps,shift", [(60, 9.8), (4, 8.0), (1, 1.0), (25, 3.0)])
def test_flow_match_sigmas_equal_diffusers(num_steps, shift):
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(num_steps)
    assert torch.equal(flow_match_sigmas(num_steps, shift), ref.sigmas)


def test_default_steps_are_the_shift8_warp_of_a_uniform_grid():
    warped = [round(1000 * 8 * s / (1 + 7 * s)) for s in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert list(DEFAULT_STEPS) == warped == [1000, 960, 889, 727, 0]


@pytest.mark.parametrize("bad", [[1000, 960], [960, 1000, 0], [1001, 0], [1000, 500.5, 0], [0], "abc"])
def test_validate_steps_rejects(bad):
    with pytest.raises((ValueError, TypeError), match="steps"):
        validate_steps(bad)


def test_chunk_noise_is_a_function_of_seed_and_chunk():
    a = chunk_noise(3, 7, (2, 4))
    assert torch.equal(a, chunk_noise(3, 7, (2, 4)))
    torch.randn(10)  # the global generator plays no part
    assert torch.equal(a, chunk_noise(3, 7, (2, 4)))
    assert not torch.equal(a, chunk_noise(3, 8, (2, 4)))
    assert not torch.equal(a, chunk_noise(4, 7, (2, 4)))
    assert a.dtype == torch.float32
