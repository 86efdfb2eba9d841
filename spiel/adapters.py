"""Load a base model from a local folder and apply saved adapters (SpIEL or peft), composing several.

Composition follows the paper (§5, Tülu v2 ⊕ GPT4-Alpaca): SpIEL deltas are summed; peft LoRA adapters are
combined with ``add_weighted_adapter(combination_type="cat")`` (the sum of their ΔW), (IA)3 vectors with
peft's weighted combination, and SHiRA or Super-Tuning adapters by activating them together (the sum of their
sparse ΔW). Adapters are merged into the base before evaluation, except on a 4-bit base,
where they stay applied (App. B).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .identity import check_base_identity
from .tuner import SpielModel

SPIEL = "SPIEL"
WEIGHTED = {"LORA", "IA3"}
"""peft types composed into one new adapter by ``add_weighted_adapter``; peft's sparse ones have none, and
compose as SpIEL's deltas do, active together (the sum of their ΔW)."""


class ModelNotFound(RuntimeError):
    """A base model that is not available locally; the message says how to make it available."""


def adapter_type(directory: str | Path) -> str:
    """The ``peft_type`` recorded in an adapter folder's ``adapter_config.json``, after checking that the folder's
    files are whole (a truncated copy is an error naming the file, not a traceback from the loader)."""
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / "adapter_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no adapter_config.json (not a saved adapter)")
    try:
        kind = json.loads(path.read_text()).get("peft_type", "")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f"{path}: not an adapter configuration (JSON object)") from None
    weights = sorted(Path(directory).glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{directory}: no adapter weights (*.safetensors)")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as error:
            raise ValueError(f"{file}: not a whole safetensors file ({error}); copy or train it again") from None
    return kind


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> str:
    """``auto`` → CUDA when visible, else the CPU; ``cuda`` without a visible GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"device {name!r}: choose from {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda: no CUDA device is visible (use auto or cpu)")
    return name


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_folder(model_dir: str | Path) -> Path:
    """``model_dir`` if it holds a whole Hugging Face model (config, weights, tokenizer); else what is missing."""
    folder = Path(model_dir)
    if not (folder / "config.json").exists():
        raise ModelNotFound(f"model {model_dir!r} is not a local Hugging Face folder (no config.json). Download it "
                            f"first (e.g. `hf download {model_dir} --local-dir models/NAME`) and point the config "
                            f"at that folder; runs are offline.")
    for kind, patterns in (("weights", WEIGHT_FILES), ("tokenizer", TOKENIZER_FILES)):
        if not any(next(folder.glob(p), None) for p in patterns):
            raise ModelNotFound(f"model {folder}: no {kind} ({', '.join(patterns)}); the download or copy is "
                                f"incomplete")
    return folder


def load_base(model_dir: str | Path, dtype: torch.dtype = torch.float32, load_in_4bit: bool = False,
              device: str = "auto"):
    """(model, tokenizer) from a local Hugging Face folder, on ``device`` (see :func:`resolve_device`); never
    downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = check_model_folder(model_dir)
    device = resolve_device(device)
    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    if device != "cpu":
        kwargs["device_map"] = {"": device}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if load_in_4bit and device == "cpu":
        _release_checkpoint_mapping(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


@torch.no_grad()
def _release_checkpoint_mapping(model: nn.Module) -> None:
    """Copy a 4-bit CPU model's unquantized tensors (embeddings, norms) out of the checkpoint file.

    They are loaded as views of the safetensors file's copy-on-write mapping, which keeps the whole file — every
    full-precision weight that was quantized — mapped and counted as the process's data (~3× the 4-bit model for
    SmolLM2-135M). Copies let the mapping go.
    """
    seen: set[int] = set()
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is None or id(tensor) in seen or not tensor.dtype.is_floating_point:
                continue
            seen.add(id(tensor))
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.clone()
            else:
                setattr(module, name, tensor.clone())


def apply_adapters(model: nn.Module, adapters: list[str | Path], merge: bool = True) -> nn.Module:
    """``model`` with the adapters applied (composed when several); merged into the weights if ``merge``. An adapter
    trained on another base model is refused (``identity.check_base_identity``)."""
    if not adapters:
        return model
    kinds = {adapter_type(a) for a in adapters}
    for folder in adapters:
        check_base_identity(model, folder)
    if len(kinds) > 1:
        raise ValueError(f"cannot compose adapters of different kinds: {sorted(kinds)}")
    names = [f"a{i}" for i in range(len(adapters))]
    if kinds == {SPIEL}:
        wrapped = SpielModel.from_pretrained(model, adapters[0], names[0])
        for name, folder in zip(names[1:], adapters[1:], strict=True):
            wrapped.load_adapter(folder, name)
        if len(names) > 1:
            wrapped.compose(names, "composed")
            names = ["composed"]
        wrapped.set_adapter(names[0])
        return wrapped.merge_and_unload() if merge else wrapped
    from peft import PeftModel

    wrapped = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], adapters[1:], strict=True):
        wrapped.load_adapter(str(folder), adapter_name=name)
    if len(names) > 1 and kinds <= WEIGHTED:
        extra = {"combination_type": "cat"} if kinds == {"LORA"} else {}
        wrapped.add_weighted_adapter(names, [1.0] * len(names), "composed", **extra)
        names = ["composed"]
    # several sparse adapters (SHiRA, Super-Tuning) active together: their ΔW add up
    wrapped.base_model.set_adapter(names, inference_mode=True)
    return wrapped.merge_and_unload(adapter_names=names) if merge else wrapped
