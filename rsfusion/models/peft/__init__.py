"""Parameter-efficient parts trained on a frozen backbone: cross-modal prompts, adapters, LoRA."""

from rsfusion.models.peft.adapters import BottleneckAdapter, stream_adapters
from rsfusion.models.peft.lora import LoRALinear, fold_lora, inject_lora, lora_scope, unfold_lora
from rsfusion.models.peft.mcp import MCP, MCPBlock
from rsfusion.models.peft.prompts import CrossModalPrompt, prompt_streams

__all__ = [
    "BottleneckAdapter",
    "CrossModalPrompt",
    "LoRALinear",
    "MCP",
    "MCPBlock",
    "fold_lora",
    "inject_lora",
    "lora_scope",
    "prompt_streams",
    "stream_adapters",
    "unfold_lora",
]
