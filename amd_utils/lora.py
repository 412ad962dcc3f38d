"""One frozen base network carrying two LoRA adapters: ``student`` (G_theta) and ``fake`` (psi).

The real teacher is the same network with adapters disabled, so a trainer holds one copy of the weights
instead of DMD2's three. peft pitfalls this module absorbs: peft's adapter switches rewrite ``requires_grad``
(we switch without them: the optimizers and DDP own both adapters for the whole run), and parameter lists
come from the adapter names, never from a ``requires_grad`` filter.
"""

import warnings

import torch

# peft's top level, not peft.functional (0.18+): these names are there from before peft 0.15, the lower bound.
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

STUDENT, FAKE = "student", "fake"
ADAPTERS = (STUDENT, FAKE)


def add_student_and_fake_adapters(model, target_modules, rank, alpha=None, fake_rank=None, student_model=None):
    """Freeze ``model`` and inject the two adapters (B = 0, so both start as the teacher, as DMD2's fake
    teacher and student are initialized from it), their weights in float32; the fake's rank is ``fake_rank``
    (default ``rank``), both scaled by peft's ``alpha / rank``. The student goes on ``student_model`` instead when
    one is given (a student with a base of its own). Returns ``{adapter_name: [parameters]}``."""
    models = {STUDENT: student_model or model, FAKE: model}
    for name, r in ((STUDENT, rank), (FAKE, fake_rank or rank)):
        models[name].requires_grad_(False)
        config = LoraConfig(r=r, lora_alpha=alpha or rank, target_modules=list(target_modules), init_lora_weights=True)
        with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the design
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, models[name], adapter_name=name)
    params = {
        name: [p for n, p in models[name].named_parameters() if "lora_" in n and f".{name}." in n] for name in ADAPTERS
    }
    for p in params[STUDENT] + params[FAKE]:
        p.requires_grad_(True)  # injecting the second adapter froze the first
        p.data = p.data.float()  # trained in float32 whatever the base's dtype (mixed precision)
    return params


def use_adapter(model, name):
    """Route the forward pass through adapter ``name`` (``"student"`` or ``"fake"``), or through the frozen
    base alone when ``name`` is None: that is the real teacher.

    Sets the two flags that peft's ``enable_adapters`` / ``set_adapter`` set, without their rewriting of
    ``requires_grad`` on every LoRA weight: that took 20 ms a call at SiT-XL/2 size on an H200 (a trainer
    switches about 5 times a step), and both adapters stay trainable for the whole run anyway."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module._disable_adapters = name is None
            if name is not None:
                module._active_adapter = [name]


def unsharded(tensor):
    """The whole of ``tensor``: gathered from every process when FSDP has sharded it (a DTensor: a collective that
    every process must call in the same order); ``tensor`` itself otherwise."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # only a DTensor has full_tensor()


def sharded_like(tensor, param):
    """The whole ``tensor`` (e.g. read from a checkpoint) cut as ``param`` is: this process's shard when FSDP has
    sharded ``param`` (a collective, as in :func:`unsharded`), ``tensor`` itself otherwise."""
    if not hasattr(param, "placements"):
        return tensor
    from torch.distributed.tensor import distribute_tensor  # only under FSDP2, which needs torch >= 2.6

    return distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements)


def lora_state_dict(model, name):
    """The weights of one adapter, keys without the adapter name (peft's saved format), whole and on the CPU.
    Under FSDP this gathers the shards: call it on every process."""
    state = get_peft_model_state_dict(model, adapter_name=name)
    return {k: unsharded(v.detach()).cpu().contiguous() for k, v in state.items()}


def lora_shapes(model, name):
    """``{key: shape}`` of :func:`lora_state_dict` without gathering anything."""
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


def adapter_parameters(model, name):
    """Adapter ``name``'s parameters of ``model`` (its shards under FSDP), under the keys of :func:`lora_state_dict`."""
    return {n.replace(f".{name}.", "."): p for n, p in model.named_parameters() if f".{name}." in n}


def load_lora_state_dict(model, name, state_dict):
    """Load one adapter's weights saved by :func:`lora_state_dict` (whole tensors; cut to this process's shards
    under FSDP)."""
    params = adapter_parameters(model, name)
    state_dict = {k: sharded_like(v, params[k]) if k in params else v for k, v in state_dict.items()}
    result = set_peft_model_state_dict(model, state_dict, adapter_name=name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"the {name} adapter checkpoint has keys this model lacks: {result.unexpected_keys[:3]} ...")


@torch.no_grad()
def merged_base_state_dict(model, name):
    """The base weights with adapter ``name`` merged in, under the base model's own keys: what a stock
    ``from_pretrained`` of the plain architecture loads. The model itself is left unmerged."""
    merged = {}
    for module_name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and name in module.lora_A:
            merged[module_name + ".weight"] = module.get_base_layer().weight + module.get_delta_weight(name)
    state = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value).detach().cpu().contiguous()
    return state
