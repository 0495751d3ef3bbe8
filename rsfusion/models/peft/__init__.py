"""Parameter-efficient parts trained on a frozen backbone: cross-modal prompts, adapters, LoRA."""

from rsfusion.models.peft.adapters import BottleneckAdapter
from rsfusion.models.peft.lora import LoRALinear, fold_lora, inject_lora, lora_scope, unfold_lora
from rsfusion.models.peft.prompts import CrossModalPrompt

__all__ = [
    "BottleneckAdapter",
    "CrossModalPrompt",
    "LoRALinear",
    "fold_lora",
    "inject_lora",
    "lora_scope",
    "unfold_lora",
]
