"""The CUDA paths: bf16 autocast, fused AdamW, CUDA-graph decoding and NCCL across processes.

Every test here is marked ``gpu``: skipped where PyTorch sees no CUDA device (CI's machines), run wherever
one is (``python -m pytest -m gpu`` on a GPU machine; ``benchmarks/device.sh`` for the lent one). The
same behaviours are tested on the CPU elsewhere; these check that the GPU-only branches agree with them.
"""

from dataclasses import replace

import pytest
import torch

from polymodal.generation import SamplingConfig, generate
from polymodal.train import loop
from polymodal.train.loop import Trainer
from polymodal.train.objectives import Align
from test_generation import prompts, run  # noqa: F401 (run: a fixture)
from test_train import assert_same_training, corpus, losses, recipe, train_in_processes  # noqa: F401

pytestmark = pytest.mark.gpu


def test_bf16_autocast_training_follows_fp32(corpus, tmp_path):  # noqa: F811
    stages = (replace(recipe(corpus).stages[0], steps=8),)
    curves = {}
    for precision in ("fp32", "bf16"):
        spec = recipe(corpus, stages=stages, precision=precision)
        trained = Trainer(spec, tmp_path / precision, device="cuda", progress=False).fit()
        assert next(trained.model.parameters()).dtype == torch.float32  # master weights stay fp32 under autocast
        curves[precision] = [loss for _, loss, _ in losses(tmp_path / precision) if loss is not None]
    assert all(torch.isfinite(torch.tensor(curves["bf16"])))
    # bf16 rounds activations to 8 bits of mantissa: the curves agree to a few per cent, not bit for bit
    for fp32, bf16 in zip(curves["fp32"], curves["bf16"], strict=True):
        assert abs(bf16 - fp32) < 0.05 * fp32, curves


def test_fused_adamw_on_the_gpu_takes_the_step_of_the_unfused_one(corpus):  # noqa: F811
    spec = recipe(corpus)
    stage = spec.stages[0]
    torch.manual_seed(0)
    model = loop.build_model(spec, 512).cuda()
    twin = loop.build_model(spec, 512).cuda()
    twin.load_state_dict(model.state_dict())
    objective = Align().cuda()  # with a parameter of its own, the temperature
    fused, _ = loop.build_optimizer(model, objective, stage, torch.device("cuda"))
    plain, _ = loop.build_optimizer(twin, objective, stage, torch.device("cpu"))  # same groups, fused=False
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    fused.step(), plain.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_cuda_graph_decoding_gives_the_eager_tokens(run):  # noqa: F811
    run.model.cuda()
    try:
        greedy = SamplingConfig(temperature=0, max_new_tokens=10)
        eager = generate(run, prompts(), sampling=greedy, check_direction=False)
        graphed = generate(run, prompts(), sampling=greedy, check_direction=False, compile=True)
        again = generate(run, prompts(), sampling=greedy, check_direction=False, compile=True)  # replayed
        assert [g.ids for g in graphed] == [g.ids for g in eager] == [g.ids for g in again]
    finally:
        run.model.cpu()
        run.model.__dict__.pop("_compiled_decode_step", None)
        run.model.__dict__.pop("_decode_cache", None)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL across processes needs 2 GPUs")
def test_two_gpu_processes_over_nccl_give_the_curve_of_one(corpus, tmp_path):  # noqa: F811
    spec = recipe(corpus, precision="fp32", model_overrides={"modality_experts": True}).to_dict()
    train_in_processes(spec, tmp_path / "one", 1, tmp_path)
    train_in_processes(spec, tmp_path / "two", 2, tmp_path)
    assert_same_training(tmp_path / "one", tmp_path / "two")
