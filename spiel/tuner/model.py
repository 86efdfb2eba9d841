"""SpielModel: SpIEL applied to every targeted linear layer of a causal LM, with peft's verbs.

peft 0.21's ``register_peft_method`` only accepts names already in its closed ``PeftType`` enum, so an
external package cannot register a tuner there; this class mirrors peft's interface instead:
``get_spiel_model``, ``save_pretrained`` / ``from_pretrained``, ``load_adapter``, ``set_adapter``,
``merge_and_unload``, ``disable_adapter``, plus ``compose`` (sum of deltas).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import storage
from .budget import entries_per_tensor
from .config import SpielConfig
from .delta import SparseDelta, index_dtype
from .layers import SpielLinear, is_4bit

WEIGHTS_NAME = "adapter_model.safetensors"


class SpielModel(nn.Module):
    """A frozen base model whose targeted linear layers carry named sparse adapters."""

    def __init__(self, model: nn.Module, config: SpielConfig | None = None, adapter_name: str = "default",
                 target_modules: list[str] | None = None) -> None:
        super().__init__()
        self.base_model = model
        self.peft_config: dict[str, SpielConfig] = {}
        self.active_adapters: list[str] = []
        self.ageless: set[str] = set()
        """Adapters loaded from a file without ages (``save_pretrained(ages=False)``): saved without them too."""
        for param in model.parameters():
            param.requires_grad_(False)
        targets = target_modules or (config.target_modules if config else None)
        if not targets:
            raise ValueError("SpielModel needs a config or target_modules")
        self._inject(targets)
        if config is not None:
            self.add_adapter(adapter_name, config)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    # -- structure ----------------------------------------------------------------------------
    def _inject(self, targets: list[str]) -> None:
        found = [(name, module) for name, module in self.base_model.named_modules()
                 if name.rsplit(".", 1)[-1] in targets and (isinstance(module, nn.Linear) or is_4bit(module))]
        if not found:
            raise ValueError(f"no linear layer of the model matches target_modules {targets}")
        for name, module in found:
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            setattr(parent, child, SpielLinear(module))

    def spiel_layers(self) -> dict[str, SpielLinear]:
        return {name: m for name, m in self.base_model.named_modules() if isinstance(m, SpielLinear)}

    def target_shapes(self) -> dict[str, tuple[int, int]]:
        return {name: layer.shape for name, layer in self.spiel_layers().items()}

    def deltas(self, adapter_name: str | None = None) -> dict[str, SparseDelta]:
        """Module name → this adapter's delta (the first active adapter by default)."""
        adapter_name = adapter_name or self.active_adapters[0]
        return {name: layer.spiel_deltas[adapter_name] for name, layer in self.spiel_layers().items()
                if adapter_name in layer.spiel_deltas}

    # -- adapters -----------------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: SpielConfig) -> None:
        """A fresh adapter: per tensor, a uniformly random sorted η with φ = 0 (Alg. 1, lines 2–4)."""
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists")
        layers = self.spiel_layers()
        counts = entries_per_tensor(config, {n: layer.shape for n, layer in layers.items()})
        generators: dict[torch.device, torch.Generator] = {}  # one per device: η is drawn where it lives
        for name, layer in layers.items():
            device = _device_of(layer.base_layer)
            if device not in generators:  # layers spread over several GPUs draw different streams
                generators[device] = torch.Generator(device=device).manual_seed(config.seed + (device.index or 0))
            generator = generators[device]
            layer.spiel_deltas[adapter_name] = SparseDelta.random(
                layer.shape, counts[name], generator, device, _values_dtype(config, layer))
            layer.grad_mode = config.grad_mode
        self.peft_config[adapter_name] = config
        self.set_adapter(adapter_name)

    def set_adapter(self, adapter_names: str | list[str]) -> None:
        """Make these adapters active (several at once compose on the fly); only they are trainable."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        missing = [n for n in names if n not in self.peft_config]
        if missing:
            raise ValueError(f"unknown adapter(s) {missing}; loaded: {sorted(self.peft_config)}")
        for layer in self.spiel_layers().values():
            layer.active_adapters = [n for n in names if n in layer.spiel_deltas]
            for name, delta in layer.spiel_deltas.items():
                delta.values.requires_grad_(name in names)
            if names:
                layer.grad_mode = self.peft_config[names[0]].grad_mode
        self.active_adapters = names

    def delete_adapter(self, adapter_name: str) -> None:
        for layer in self.spiel_layers().values():
            if adapter_name in [n for n, _ in layer.merged]:
                raise ValueError(f"adapter {adapter_name!r} is merged; unmerge it first")
            layer.spiel_deltas.pop(adapter_name, None)
        del self.peft_config[adapter_name]
        self.ageless.discard(adapter_name)
        self.set_adapter([n for n in self.active_adapters if n != adapter_name])

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model alone inside the block (no delta applied)."""
        if any(layer.merged for layer in self.spiel_layers().values()):
            raise ValueError("cannot disable merged adapters; call unmerge_adapter() first")
        previous = list(self.active_adapters)
        for layer in self.spiel_layers().values():
            layer.active_adapters = []
        try:
            yield
        finally:
            self.set_adapter(previous)

    @contextlib.contextmanager
    def adapter_per_row(self, names: list[str | None]):
        """Within the block, batch row i runs with adapter ``names[i]`` (None: the base model), without merging:
        many adapters served in one forward pass (``SpielLinear.mixed_forward``), as peft's ``adapter_names=``
        does for LoRA. Inference only; no adapter may be merged."""
        unknown = sorted({n for n in names if n is not None} - set(self.peft_config))
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; loaded: {sorted(self.peft_config)}")
        layers = self.spiel_layers().values()
        if any(layer.merged for layer in layers):
            raise ValueError("unmerge the adapters first: a mixed batch adds every delta to the base weights")
        device = _device_of(next(iter(layers)).base_layer) if layers else None  # `.to` in the layers: a no-op here
        groups = {name: torch.tensor([i for i, n in enumerate(names) if n == name], device=device)
                  for name in dict.fromkeys(n for n in names if n is not None)}
        try:
            for layer in layers:
                layer.row_groups = (len(names), groups)
            with torch.no_grad():
                yield self
        finally:
            for layer in layers:
                layer.row_groups = None
                layer._csr.clear()

    def compose(self, adapter_names: list[str], new_name: str) -> None:
        """A new adapter equal to the sum of the given ones (union of η, values summed)."""
        for name in adapter_names:
            if name not in self.peft_config:
                raise ValueError(f"unknown adapter {name!r}")
        for layer in self.spiel_layers().values():
            parts = [layer.spiel_deltas[n] for n in adapter_names if n in layer.spiel_deltas]
            if not parts:
                continue
            idx = torch.cat([d.indices.long() for d in parts])
            union, inverse = torch.unique(idx, sorted=True, return_inverse=True)
            values = torch.zeros(union.numel(), dtype=torch.float32, device=idx.device)
            values.index_add_(0, inverse, torch.cat([d.values.detach().float() for d in parts]))
            grown_at = torch.zeros(union.numel(), dtype=torch.int32, device=idx.device)
            grown_at.scatter_reduce_(0, inverse, torch.cat([d.grown_at for d in parts]), reduce="amax")
            layer.spiel_deltas[new_name] = SparseDelta(layer.shape, union, values, grown_at, parts[0].values.dtype)
        total = sum(len(d) for d in self.deltas(new_name).values())
        base = self.peft_config[adapter_names[0]]
        self.peft_config[new_name] = SpielConfig.from_dict(
            {**base.to_dict(), "density": None, "lora_rank": None, "num_deltas": total})
        self.set_adapter(new_name)

    # -- merging ------------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None) -> None:
        for name in adapter_names or self.active_adapters:
            for layer in self.spiel_layers().values():
                if name in layer.spiel_deltas:
                    layer.merge(name)

    def unmerge_adapter(self) -> None:
        for layer in self.spiel_layers().values():
            layer.unmerge()

    def merge_and_unload(self, adapter_names: list[str] | None = None) -> nn.Module:
        """Fold the active adapters into the base weights and return the plain base model."""
        self.merge_adapter(adapter_names)
        return self.unload()

    def unload(self) -> nn.Module:
        """Return the base model with its original linear layers (merged deltas stay merged)."""
        for name, layer in self.spiel_layers().items():
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            setattr(parent, child, layer.base_layer)
        return self.base_model

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, adapter_name: str | None = None, ages: bool = True) -> None:
        """``adapter_config.json`` (with the target shapes) + ``adapter_model.safetensors`` in the compact layout
        (``spiel.tuner.storage``); ``ages=False`` leaves out when each entry was grown (Figure 2's data), which
        serving does not need."""
        adapter_name = adapter_name or self.active_adapters[0]
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        deltas = self.deltas(adapter_name)
        ages = ages and adapter_name not in self.ageless  # never write ages that were not loaded
        tensors = {k: v for name, d in deltas.items()
                   for k, v in storage.encode(name, d.indices, d.values, d.grown_at if ages else None).items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "spiel_format": storage.FORMAT})
        self.peft_config[adapter_name].save(directory, target_shapes={n: list(d.shape) for n, d in deltas.items()})

    def load_adapter(self, directory: str | Path, adapter_name: str = "default") -> None:
        """Load a saved adapter next to the others; raises if it was made for other shapes."""
        config, raw = SpielConfig.load(directory)
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists")
        layers = self.spiel_layers()
        for name, shape in raw.get("target_shapes", {}).items():
            if name not in layers:
                raise ValueError(f"adapter {directory} targets {name}, which this model does not have")
            if tuple(shape) != layers[name].shape:
                raise ValueError(f"adapter {directory} was made for {name} of shape {tuple(shape)}, "
                                 f"but this model's is {layers[name].shape}")
        tensors = load_file(str(Path(directory) / WEIGHTS_NAME))
        ageless = False
        for name in storage.modules(tensors):
            if name not in layers:
                raise ValueError(f"adapter {directory} has tensors for {name}, which this model does not have")
            layer = layers[name]
            device = _device_of(layer.base_layer)
            try:
                indices, values, grown_at = storage.decode(name, tensors, index_dtype(layer.shape[0] * layer.shape[1]))
            except (KeyError, ValueError) as error:
                raise ValueError(f"adapter {directory}: {name}: {error}") from None
            ageless |= grown_at is None
            layer.spiel_deltas[adapter_name] = SparseDelta(
                layer.shape, indices.to(device), values.to(device),
                None if grown_at is None else grown_at.to(device), values.dtype)
        if ageless:
            self.ageless.add(adapter_name)
        self.peft_config[adapter_name] = config
        self.set_adapter(adapter_name)

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path, adapter_name: str = "default") -> SpielModel:
        config, _ = SpielConfig.load(directory)
        wrapped = cls(model, None, target_modules=config.target_modules)
        wrapped.load_adapter(directory, adapter_name)
        return wrapped

    # -- accounting ---------------------------------------------------------------------------
    def num_entries(self, adapter_name: str | None = None) -> int:
        return sum(len(d) for d in self.deltas(adapter_name).values())

    def trainable_state_bytes(self, optimizer: torch.optim.Optimizer | None = None,
                              adapter_name: str | None = None) -> int:
        """Bytes of φ, η, growth steps and (if given) the optimizer state of this adapter."""
        deltas = self.deltas(adapter_name).values()
        total = sum(t.numel() * t.element_size() for d in deltas for t in (d.indices, d.values, d.grown_at))
        if optimizer is not None:
            for d in deltas:
                total += sum(t.numel() * t.element_size() for t in optimizer.state.get(d.values, {}).values()
                             if torch.is_tensor(t))
        return total


def get_spiel_model(model: nn.Module, config: SpielConfig, adapter_name: str = "default") -> SpielModel:
    """Wrap ``model`` with a fresh SpIEL adapter (peft's ``get_peft_model``)."""
    return SpielModel(model, config, adapter_name)


def _device_of(layer: nn.Module) -> torch.device:
    return layer.weight.device


def _values_dtype(config: SpielConfig, layer: SpielLinear) -> torch.dtype:
    if config.values_dtype == "auto":
        return torch.bfloat16 if layer.is_4bit else torch.float32
    return getattr(torch, config.values_dtype)
