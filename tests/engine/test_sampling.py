"""The sampler against diffusers' FlowMatchEulerDiscreteScheduler, the reference."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

from engine.sampling import denoise, get_noise, get_schedule, model_time


@pytest.mark.parametrize("steps", [1, 4, 8, 9, 50])
@pytest.mark.parametrize("shift", [3.0, 1.0, 6.0])
def test_schedule_matches_diffusers(steps, shift):
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift,
                                          use_dynamic_shifting=False)
    ref.set_timesteps(sigmas=get_default_z_image_sigmas(steps), mu=0.5)
    ours = torch.tensor(get_schedule(steps, shift), dtype=torch.float32)
    assert torch.equal(ours, ref.sigmas.cpu())
    # the transformer's input t = (1000 - timestep) / 1000, bit-exact
    for sigma, timestep in zip(ours[:-1].tolist(), ref.timesteps):
        assert torch.equal(model_time(sigma), (1000 - timestep) / 1000)


def test_turbo_schedule_values():
    expected = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]
    assert get_schedule(8, 3.0) == pytest.approx(expected, abs=1e-6)


def test_noise_is_seeded_on_cpu_and_shaped():
    a = get_noise(7, 64, 96)
    assert a.shape == (1, 16, 8, 12) and a.dtype == torch.float32
    ref = torch.randn((1, 16, 8, 12), generator=torch.Generator("cpu").manual_seed(7))
    assert torch.equal(a, ref)
    assert not torch.equal(a, get_noise(8, 64, 96))


def test_denoise_is_the_schedulers_euler_step_with_negated_output():
    torch.manual_seed(0)
    x0 = torch.randn(2, 16, 4, 4)
    w = torch.randn(16, 16)

    def model(x, t):  # any function of x and t will do
        return torch.einsum("bchw,cd->bdhw", x, w) * (1 + t[:, None, None, None])

    sigmas = get_schedule(8, 3.0)
    ours = denoise(model, x0.clone(), sigmas)

    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(sigmas=get_default_z_image_sigmas(8), mu=0.5)
    x = x0.clone()
    for t in ref.timesteps:
        out = model(x, ((1000 - t.expand(2)) / 1000))
        x = ref.step(-out, t, x, return_dict=False)[0]
    assert torch.equal(ours, x)


def test_denoise_reports_each_step_and_can_stop():
    seen = []

    class Stop(Exception):
        pass

    def on_step(i, x, x0):
        seen.append(i)
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        denoise(lambda x, t: torch.zeros_like(x), torch.zeros(1, 16, 2, 2),
                get_schedule(8, 3.0), on_step)
    assert seen == [0, 1, 2]
