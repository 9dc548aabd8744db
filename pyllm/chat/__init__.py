# pyllm.chat: chat-template rendering (messages -> prompt text), matching transformers' apply_chat_template.
"""Chat templates: see :mod:`pyllm.chat.template`."""
from .template import ChatTemplateError, end_of_turn_ids, render_chat_template, select_chat_template

__all__ = ["ChatTemplateError", "render_chat_template", "select_chat_template", "end_of_turn_ids"]
