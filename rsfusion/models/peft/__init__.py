"""Parameter-efficient parts trained on a frozen backbone: cross-modal prompts and adapters."""

from rsfusion.models.peft.adapters import BottleneckAdapter
from rsfusion.models.peft.prompts import CrossModalPrompt

__all__ = ["BottleneckAdapter", "CrossModalPrompt"]
