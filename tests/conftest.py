"""Shared fixtures: a tiny random-initialised Llama (mechanics only, never for reported numbers)."""

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (2, 12), generator=generator)


CHAT_CORPUS = ["<|user|>\nAdd 2 and 3.\n<|assistant|>\n5</s>\n", "Now double it. The answer is 10."] * 30
"""Text the tiny tokenizer of ``training_setup`` is trained on."""


@pytest.fixture(scope="session")
def training_setup(tmp_path_factory):
    """A folder with a tiny saved Llama (``model/``) and 24 two-turn conversations (``train.jsonl``)."""
    from spiel.models import tiny_llama as save_tiny_llama

    root = tmp_path_factory.mktemp("train")
    save_tiny_llama(root / "model", CHAT_CORPUS, hidden=32)
    conversations = [[{"role": "user", "content": f"Add {i} and {i + 1}."},
                      {"role": "assistant", "content": f"The answer is {2 * i + 1}."}] for i in range(24)]
    (root / "train.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return root


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """The micro config's whole DAG (rule all) run locally once per test session; its workflow copy."""
    from workflow_copy import snakemake, workdir

    folder = workdir(tmp_path_factory.mktemp("micro"))
    done = snakemake(folder, "--configfile", ".test/config.yaml")
    assert done.returncode == 0, done.stderr[-5000:]
    return folder
