"""pyllm.generation: what happens between one step's logits and the text a caller sees: request
options, OpenAI-style penalties and logit bias, log-probabilities, stop strings."""
from .options import GenerationOptions

__all__ = ["GenerationOptions"]
