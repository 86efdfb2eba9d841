"""CUDA paths (bf16 base, sampled ∂L/∂φ, NF4 qSpIEL); skipped where no GPU is present."""

import pytest
import torch
from conftest import tiny_llama

from spiel import SpielConfig, get_spiel_model, make_optimizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
def test_bf16_gradients_match_between_modes(grad_mode, batch):
    torch.manual_seed(0)
    model = tiny_llama().to("cuda", torch.bfloat16)
    spiel = get_spiel_model(model, SpielConfig(density=0.05, grad_mode=grad_mode))
    ids = batch.cuda()
    spiel(input_ids=ids, labels=ids).loss.backward()
    layer = spiel.spiel_layers()["model.layers.1.mlp.down_proj"]
    delta = layer.spiel_deltas["default"]
    assert delta.values.dtype == torch.float32 and delta.values.grad is not None
    assert torch.isfinite(delta.values.grad).all()


def test_nf4_training_step(tmp_path, batch):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    tiny_llama().save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map={"": 0})
    spiel = get_spiel_model(model, SpielConfig(density=0.05))
    delta = next(iter(spiel.deltas().values()))
    assert delta.values.dtype == torch.bfloat16
    optimizer = make_optimizer(spiel, 1e-2)
    ids = batch.cuda()
    first = spiel(input_ids=ids, labels=ids).loss
    first.backward()
    optimizer.step()
    assert spiel(input_ids=ids, labels=ids).loss.item() < first.item()


@pytest.fixture(scope="module")
def cuda_setup(tmp_path_factory):
    """A saved tiny Llama 64 wide (NF4 blocks) with chat data, as conftest's ``training_setup``."""
    import json

    from conftest import CHAT_CORPUS

    from spiel.models import tiny_llama as save_tiny_llama

    root = tmp_path_factory.mktemp("cuda")
    save_tiny_llama(root / "model", CHAT_CORPUS, hidden=64)
    rows = [{"messages": [{"role": "user", "content": f"Add {i} and {i + 1}."},
                          {"role": "assistant", "content": f"The answer is {2 * i + 1}."}]} for i in range(16)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(name, dtype="bfloat16", device="cuda", **hp):
    from spiel.methods import HYPERPARAMETERS, method
    from spiel.train import TrainConfig

    small = {"lr": 1e-3, "rank": 2, "update_interval": 2, "estimation_steps": 1, **hp}
    return TrainConfig(batch_size=4, micro_batch_size=2, max_length=64, dtype=dtype, device=device,
                       hp={k: v for k, v in small.items() if k in HYPERPARAMETERS[method(name).kind]})


def test_sampled_grad_phi_in_bf16_equals_the_dense_gather():
    """Issue 16.1 on CUDA: the sampled ∂L/∂φ of bf16 operands (fp32 SDDMM) equals the fp32 dense gradient at η."""
    from spiel.tuner.delta import WeightGrad, uniform_subset

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(256, 96, device="cuda", generator=g).bfloat16()
    gy = torch.randn(256, 64, device="cuda", generator=g).bfloat16()
    idx = uniform_subset(64 * 96, 500, g, "cuda")
    assert idx.is_cuda and bool((idx[1:] > idx[:-1]).all())
    sampled = WeightGrad(x, gy, (64, 96)).at(idx, sampled=True)
    dense = (gy.float().t() @ x.float()).reshape(-1)[idx.long()]
    torch.testing.assert_close(sampled, dense, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["full", "lora", "ia3", "spiel-ag", "spiel-ma"])
@pytest.mark.parametrize("grad_mode", ["dense", "sampled"])
def test_every_method_takes_bf16_steps_on_cuda(cuda_setup, name, grad_mode):
    from spiel.train import optimizer_step, prepare

    if grad_mode == "sampled" and not name.startswith("spiel"):
        pytest.skip("∂L/∂φ modes are SpIEL's")
    run = prepare(cuda_setup / "model", name, cuda_setup / "train.jsonl", _config(name, grad_mode=grad_mode))
    run.trainable.model.train()
    assert run.device.type == "cuda"
    _, micro = run.micro_batches(0, {})
    losses = [optimizer_step(run.trainable, micro)[0] for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_bf16_full_finetuning_uses_paged_adamw_over_fp32_masters(cuda_setup):
    """Issue 16.2 on CUDA: bitsandbytes' paged 32-bit AdamW (where installed) updates fp32 masters."""
    from spiel.train import prepare

    run = prepare(cuda_setup / "model", "full", cuda_setup / "train.jsonl", _config("full"))
    assert all(m.dtype == torch.float32 and m.is_cuda for m in run.trainable.masters.optimized)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        assert isinstance(run.trainable.optimizer, torch.optim.AdamW)
    else:
        assert type(run.trainable.optimizer).__name__ == "PagedAdamW32bit"


@pytest.mark.parametrize("name", ["qlora", "qspiel-ag", "qspiel-ma"])
def test_nf4_methods_train_and_qspiel_infers_with_the_cached_merge(cuda_setup, name):
    pytest.importorskip("bitsandbytes")
    from spiel.train import optimizer_step, prepare

    run = prepare(cuda_setup / "model", name, cuda_setup / "train.jsonl", _config(name))
    model = run.trainable.model.train()
    _, micro = run.micro_batches(0, {})
    losses = [optimizer_step(run.trainable, micro)[0] for _ in range(4)]
    assert losses[-1] < losses[0]
    if name.startswith("qspiel"):
        model.eval()
        ids = micro[0]["input_ids"]
        training_path = model(input_ids=ids).logits.detach()
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, training_path, rtol=2e-2, atol=2e-2)


def test_cpu_is_honoured_on_a_gpu_host(cuda_setup):
    """Issue 16.5: device=cpu trains on the CPU although CUDA is visible."""
    from spiel.train import prepare

    config = _config("spiel-ag", "float32", "cpu")
    run = prepare(cuda_setup / "model", "spiel-ag", cuda_setup / "train.jsonl", config)
    assert run.device.type == "cpu"


def test_cuda_memory_probe_fails_below_and_passes_above_the_requirement(cuda_setup):
    """App. F's mechanism: set_per_process_memory_fraction; 1 MiB cannot hold the model, 8 GiB can."""
    from spiel.memory import ProbeSpec, run_probe

    spec = ProbeSpec(str(cuda_setup / "model"), "spiel-ag", str(cuda_setup / "train.jsonl"), steps=2, device="cuda",
                     settings={"batch_size": 2, "micro_batch_size": 2, "max_length": 32, "dtype": "bfloat16"},
                     hp={"lr": 1e-3, "rank": 2, "update_interval": 1, "estimation_steps": 1}, timeout_s=300)
    starved = run_probe(spec, 1)
    assert not starved.passed and starved.reason == "out of memory", starved
    ample = run_probe(spec, 8192)
    assert ample.passed and 0 < ample.peak_mb < 8192, ample
